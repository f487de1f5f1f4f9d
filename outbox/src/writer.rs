//! Storing events in the caller's transaction.

use chrono::Utc;
use uuid::Uuid;

use crate::db::{Database, NewMessage};
use crate::{Error, ErrorKind, Event, Metadata, Result};

/// Events to store together with one multi-row INSERT; they may be of different types.
///
/// ```no_run
/// # use serde::Serialize; use schemars::JsonSchema;
/// # #[derive(Serialize, JsonSchema, outbox::Event)] #[event(topic = "orders")] struct OrderPlaced { id: u32 }
/// # #[derive(Serialize, JsonSchema, outbox::Event)] #[event(topic = "mail")] struct MailQueued { to: String }
/// # async fn run(tx: &mut diesel_async::AsyncPgConnection) -> outbox::Result<()> {
/// let mut batch = outbox::Batch::new();
/// batch.push(&OrderPlaced { id: 1 })?;
/// batch.push_with(&MailQueued { to: "a@example.com".into() }, outbox::Metadata::new().correlation_id("c-1"))?;
/// let ids = batch.publish(tx).await?; // one INSERT, ids in push order
/// # Ok(()) }
/// ```
#[derive(Debug, Default)]
pub struct Batch {
    rows: Vec<NewMessage>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty batch with room for `n` events.
    pub fn with_capacity(n: usize) -> Self {
        Self { rows: Vec::with_capacity(n) }
    }

    /// Adds an event. Serialises it now, so a serialisation error surfaces here.
    pub fn push<E: Event>(&mut self, event: &E) -> Result<Uuid> {
        self.push_with(event, Metadata::default())
    }

    /// Adds an event with metadata.
    pub fn push_with<E: Event>(&mut self, event: &E, meta: Metadata) -> Result<Uuid> {
        let row = new_message(event, &meta)?;
        let id = row.id;
        self.rows.push(row);
        Ok(id)
    }

    /// Number of events in the batch.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Stores every event of the batch in the transaction open on `conn`, in push order
    /// (PostgreSQL: one INSERT statement for the whole batch). Returns the message ids in push order.
    ///
    /// Fails with [`ErrorKind::NotInTransaction`] and writes nothing when `conn` is not in a
    /// transaction.
    pub async fn publish<C: Database>(self, conn: &mut C) -> Result<Vec<Uuid>> {
        ensure_in_transaction(conn)?;
        let ids = self.rows.iter().map(|r| r.id).collect();
        conn.insert_messages(&self.rows).await?;
        crate::wakeup::published();
        Ok(ids)
    }
}

fn new_message<E: Event>(event: &E, meta: &Metadata) -> Result<NewMessage> {
    meta.validate()?;
    let payload = serde_json::to_vec(event)
        .map_err(|e| Error::with_source(ErrorKind::Serialize, format!("cannot serialise `{}`", E::NAME), e))?;
    let event_version = i32::try_from(E::VERSION)
        .map_err(|_| Error::config(format!("version {} of `{}` is too large", E::VERSION, E::NAME)))?;
    let id = meta.message_id.unwrap_or_else(Uuid::now_v7);
    let mut headers = meta.to_stored_headers();
    // Feature `otel`: the current trace context, unless the caller set one (docs/tracing.md).
    crate::otel::capture(&mut headers, E::TOPIC, id);
    Ok(NewMessage {
        id,
        topic: E::TOPIC,
        key: event.key(),
        event_type: E::NAME,
        event_version,
        payload,
        headers,
        occurred_at: Utc::now(),
    })
}

/// diesel-async tracks the transaction depth of every connection it manages; a depth of zero
/// means any INSERT would autocommit on its own, which is exactly the dual write we exist to prevent.
fn ensure_in_transaction<C: Database>(conn: &mut C) -> Result<()> {
    match crate::db::transaction_depth(conn) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(Error::new(
            ErrorKind::NotInTransaction,
            "outbox::publish must run inside the transaction of the business change \
             (conn.transaction(async |tx| { ...; outbox::publish(tx, &event).await?; ... }))",
        )),
        Err(e) => Err(e.into()),
    }
}

/// Stores `event` in the transaction open on `conn`; the relay publishes it after commit.
///
/// The payload is serialised once, here; the relay sends those exact bytes. Returns the new
/// message id (UUIDv7). Called outside a transaction it fails with
/// [`ErrorKind::NotInTransaction`] and writes nothing.
///
/// ```no_run
/// # use serde::Serialize; use schemars::JsonSchema;
/// # #[derive(Serialize, JsonSchema, outbox::Event)] #[event(topic = "orders")]
/// # struct OrderPlaced { #[event(key)] order_id: uuid::Uuid }
/// use diesel_async::{AsyncConnection, AsyncPgConnection};
/// # async fn run(conn: &mut AsyncPgConnection) -> Result<(), diesel::result::Error> {
/// let order_id = uuid::Uuid::now_v7();
/// conn.transaction(async |tx| {
///     // ... the business change, e.g. diesel::insert_into(orders::table) ...
///     outbox::publish(tx, &OrderPlaced { order_id }).await?;
///     Ok(())
/// })
/// .await
/// # }
/// ```
pub async fn publish<E: Event, C: Database>(conn: &mut C, event: &E) -> Result<Uuid> {
    publish_with(conn, event, Metadata::default()).await
}

/// [`publish`] with correlation / causation ids, trace context or extra headers.
pub async fn publish_with<E: Event, C: Database>(conn: &mut C, event: &E, meta: Metadata) -> Result<Uuid> {
    ensure_in_transaction(conn)?;
    let row = new_message(event, &meta)?;
    conn.insert_messages(std::slice::from_ref(&row)).await?;
    crate::wakeup::published();
    Ok(row.id)
}

/// Stores many events of one type with one multi-row INSERT. Ids are returned in input order.
pub async fn publish_all<'a, E, I, C>(conn: &mut C, events: I) -> Result<Vec<Uuid>>
where
    C: Database,
    E: Event + 'a,
    I: IntoIterator<Item = &'a E>,
{
    let events = events.into_iter();
    let mut batch = Batch::with_capacity(events.size_hint().0);
    for e in events {
        batch.push(e)?;
    }
    batch.publish(conn).await
}

/// Runs `body` in a transaction on `conn`, like diesel-async's `conn.transaction(body)`, and
/// after a successful COMMIT wakes the relays of this process that listen to
/// [`Wakeup::shared`](crate::Wakeup::shared) (every relay not given a handle of its own; see
/// [`Wakeup`](crate::Wakeup) for one handle per database), so events stored by
/// `body` are claimed at once instead of on a short polling burst: the lowest commit → Kafka
/// latency (B4 in docs/performance.md).
///
/// Same contract as `AsyncConnection::transaction`: `body` returning `Err` rolls back; an error
/// of `BEGIN`/`COMMIT` is converted into `E`. Called inside a transaction it opens a savepoint,
/// and the wake-up waits for the outermost COMMIT. On SQLite the transaction starts with
/// `BEGIN IMMEDIATE` (it takes the write lock up front instead of failing to upgrade later).
///
/// ```no_run
/// # use serde::Serialize; use schemars::JsonSchema;
/// # #[derive(Serialize, JsonSchema, outbox::Event)] #[event(topic = "orders")]
/// # struct OrderPlaced { #[event(key)] order_id: uuid::Uuid }
/// # async fn run(conn: &mut diesel_async::AsyncPgConnection) -> outbox::Result<()> {
/// let order_id = uuid::Uuid::now_v7();
/// outbox::transaction(conn, async |tx| {
///     // ... the business change ...
///     outbox::publish(tx, &OrderPlaced { order_id }).await?;
///     Ok::<_, outbox::Error>(())
/// })
/// .await
/// # }
/// ```
pub async fn transaction<C, R, E, F>(conn: &mut C, body: F) -> std::result::Result<R, E>
where
    C: Database,
    F: AsyncFnOnce(&mut C) -> std::result::Result<R, E>,
    E: From<diesel::result::Error>,
{
    transaction_signalling(crate::Wakeup::shared_ref(), conn, body).await
}

// The writer's side of a wake-up line (here rather than in `wakeup.rs`, which the writer uses:
// the line knows nothing of transactions).
impl crate::Wakeup {
    /// [`crate::transaction`] signalling this line: runs `body` in a transaction on `conn` and,
    /// after a successful COMMIT that stored events, wakes the relays listening to this handle.
    pub async fn transaction<C, R, E, F>(&self, conn: &mut C, body: F) -> std::result::Result<R, E>
    where
        C: Database,
        F: AsyncFnOnce(&mut C) -> std::result::Result<R, E>,
        E: From<diesel::result::Error>,
    {
        transaction_signalling(self, conn, body).await
    }
}

/// [`transaction`], signalling `wakeup` after the outermost COMMIT.
pub(crate) async fn transaction_signalling<C, R, E, F>(
    wakeup: &crate::Wakeup,
    conn: &mut C,
    body: F,
) -> std::result::Result<R, E>
where
    C: Database,
    F: AsyncFnOnce(&mut C) -> std::result::Result<R, E>,
    E: From<diesel::result::Error>,
{
    use diesel_async::TransactionManager;
    // diesel-async's own `transaction` bounds its closure with a private trait, so a generic
    // wrapper cannot forward to it; this is its body (begin, run, commit or roll back) with the
    // backend's `begin_write` for the outermost level.
    let outermost = crate::db::transaction_depth(conn)?.is_none();
    let run = async {
        if outermost {
            conn.begin_write().await?;
        } else {
            C::TransactionManager::begin_transaction(conn).await?;
        }
        match body(&mut *conn).await {
            Ok(value) => {
                C::TransactionManager::commit_transaction(conn).await?;
                Ok(value)
            }
            Err(error) => match C::TransactionManager::rollback_transaction(conn).await {
                Ok(()) | Err(diesel::result::Error::BrokenTransactionManager) => Err(error),
                Err(rollback) => Err(rollback.into()),
            },
        }
    };
    if outermost { wakeup.around_commit(run).await } else { run.await }
}
