//! Crash suite writer: places orders, each a business row plus `outbox::publish` in one
//! transaction, and lets a share of them fail in one of three ways. Records every outcome in
//! `crash_ledger`: a committed order's ledger row inside its own transaction, a failed one's
//! after the rollback.
//!
//! Configuration (environment): DATABASE_URL, CRASH_RUN, CRASH_WRITER (number), CRASH_ORDERS,
//! CRASH_KEYS, CRASH_ROLLBACK_PCT, CRASH_SEED, CRASH_RATE (orders/s, empty = unthrottled).
//! Stops early, between two transactions, on SIGTERM.

use std::time::{Duration, Instant};

use diesel::sql_types::{BigInt, Bool, Integer, Text, Uuid as SqlUuid};
use diesel::{QueryableByName, sql_query};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tests::crash::{OrderPlaced, env_or, init_child_tracing, shutdown_on_sigterm};
use uuid::Uuid;

/// How an order's transaction ends.
#[derive(Debug, Clone, Copy)]
enum Ending {
    Commit,
    /// The closure returns an error of its own after publishing: diesel rolls back.
    ExplicitRollback,
    /// A statement after the publish fails (division by zero): the transaction is aborted.
    ErrorAfterPublish,
    /// Another session terminates this one after the publish, before COMMIT is sent.
    Terminated,
}

impl Ending {
    fn label(self) -> &'static str {
        match self {
            Ending::Commit => "commit",
            Ending::ExplicitRollback => "explicit rollback",
            Ending::ErrorAfterPublish => "error after publish",
            Ending::Terminated => "connection terminated",
        }
    }
}

/// Why a transaction did not commit.
#[derive(Debug)]
enum TxError {
    /// The deliberate rollback of [`Ending::ExplicitRollback`].
    Rollback,
    Outbox(outbox::Error),
}

impl From<diesel::result::Error> for TxError {
    fn from(e: diesel::result::Error) -> Self {
        TxError::Outbox(e.into())
    }
}

impl From<outbox::Error> for TxError {
    fn from(e: outbox::Error) -> Self {
        TxError::Outbox(e)
    }
}

#[derive(QueryableByName)]
struct Pid {
    #[diesel(sql_type = Integer)]
    pid: i32,
}

#[derive(QueryableByName)]
struct Terminated {
    #[diesel(sql_type = Bool)]
    done: bool,
}

#[derive(QueryableByName)]
struct Exists {
    #[diesel(sql_type = Bool)]
    exists: bool,
}

struct Writer {
    url: String,
    conn: AsyncPgConnection,
    /// The "other session" that terminates `conn` in the Terminated ending.
    killer: AsyncPgConnection,
    writer: i32,
}

async fn connect(url: &str) -> AsyncPgConnection {
    AsyncPgConnection::establish(url).await.unwrap_or_else(|e| panic!("connect: {e}"))
}

async fn insert_business(tx: &mut AsyncPgConnection, order: &OrderPlaced) -> Result<(), diesel::result::Error> {
    sql_query("INSERT INTO crash_orders (order_id, key, seq) VALUES ($1, $2, $3)")
        .bind::<BigInt, _>(order.order_id)
        .bind::<Text, _>(&order.key)
        .bind::<BigInt, _>(order.seq)
        .execute(tx)
        .await
        .map(drop)
}

async fn insert_ledger(
    conn: &mut AsyncPgConnection,
    writer: i32,
    order: &OrderPlaced,
    id: Uuid,
    outcome: &str,
    how: &str,
) -> Result<(), diesel::result::Error> {
    sql_query(
        "INSERT INTO crash_ledger (order_id, writer, key, seq, message_id, outcome, how) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind::<BigInt, _>(order.order_id)
    .bind::<Integer, _>(writer)
    .bind::<Text, _>(&order.key)
    .bind::<BigInt, _>(order.seq)
    .bind::<SqlUuid, _>(id)
    .bind::<Text, _>(outcome)
    .bind::<Text, _>(how)
    .execute(conn)
    .await
    .map(drop)
}

impl Writer {
    /// Whether the order's business row exists, read by a fresh session: the truth about a
    /// transaction whose COMMIT failed.
    async fn committed(&self, order_id: i64) -> bool {
        let mut conn = connect(&self.url).await;
        sql_query("SELECT EXISTS (SELECT 1 FROM crash_orders WHERE order_id = $1) AS exists")
            .bind::<BigInt, _>(order_id)
            .get_result::<Exists>(&mut conn)
            .await
            .expect("check the business row")
            .exists
    }

    async fn place(&mut self, order: &OrderPlaced, ending: Ending) {
        let writer = self.writer;
        let killer = &mut self.killer;
        // The id `publish` returned, also when the transaction then fails.
        let published = std::sync::Mutex::new(None::<Uuid>);
        let result = self
            .conn
            .transaction::<(), TxError, _>(async |tx| {
                insert_business(tx, order).await?;
                let id = outbox::publish(tx, order).await?;
                *published.lock().expect("id slot") = Some(id);
                match ending {
                    Ending::Commit => insert_ledger(tx, writer, order, id, "committed", "commit").await?,
                    Ending::ExplicitRollback => return Err(TxError::Rollback),
                    Ending::ErrorAfterPublish => {
                        sql_query("SELECT 1 / 0").execute(tx).await?;
                        unreachable!("1 / 0 succeeded");
                    }
                    Ending::Terminated => {
                        // Written as a commit would be; the termination must undo it.
                        insert_ledger(tx, writer, order, id, "committed", "commit").await?;
                        let pid = sql_query("SELECT pg_backend_pid() AS pid").get_result::<Pid>(tx).await?.pid;
                        // Waits (up to 10 s) until the backend has exited: COMMIT is sent to a dead session.
                        let t = sql_query("SELECT pg_terminate_backend($1, 10000) AS done")
                            .bind::<Integer, _>(pid)
                            .get_result::<Terminated>(killer)
                            .await
                            .expect("terminate the writer's session");
                        assert!(t.done, "the writer's session was not terminated");
                    }
                }
                Ok(())
            })
            .await;
        let id = published.into_inner().expect("id slot").expect("publish ran");
        let rolled_back = match (ending, result) {
            (Ending::Commit, Ok(())) => false,
            (Ending::ExplicitRollback, Err(TxError::Rollback)) => true,
            (Ending::ErrorAfterPublish, Err(TxError::Outbox(e))) => {
                assert!(e.to_string().contains("division by zero"), "unexpected error: {e}");
                true
            }
            (Ending::Terminated, Err(TxError::Outbox(e))) => {
                tracing::debug!(order = order.order_id, error = %e, "COMMIT on the terminated session failed");
                assert!(
                    !self.committed(order.order_id).await,
                    "order {} committed although its session was terminated before COMMIT",
                    order.order_id
                );
                self.conn = connect(&self.url).await;
                true
            }
            (Ending::Commit, Err(e)) => {
                // Not expected (nothing else ends writers' sessions): the database says what happened.
                tracing::warn!(order = order.order_id, error = ?e, "COMMIT failed");
                self.conn = connect(&self.url).await;
                !self.committed(order.order_id).await
            }
            (ending, result) => panic!("order {} ({ending:?}) ended with {result:?}", order.order_id),
        };
        if rolled_back {
            insert_ledger(&mut self.conn, writer, order, id, "rolled_back", ending.label())
                .await
                .expect("ledger row of a rolled-back order");
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    init_child_tracing();
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let run: String = env_or("CRASH_RUN", String::new());
    let writer: i32 = env_or("CRASH_WRITER", 0);
    let orders: u64 = env_or("CRASH_ORDERS", 1000);
    let keys: u32 = env_or("CRASH_KEYS", 10);
    let rollback_pct: u32 = env_or("CRASH_ROLLBACK_PCT", 30);
    let rate: f64 = env_or("CRASH_RATE", 0.0);
    let mut rng = StdRng::seed_from_u64(env_or("CRASH_SEED", 0));
    let shutdown = shutdown_on_sigterm();
    let name: String = env_or("CRASH_NAME", format!("crash-writer-{writer}"));
    // The terminating session is told apart by its application_name.
    let killer_url = url.replace(&format!("application_name={name}"), &format!("application_name={name}-killer"));
    let mut w = Writer { conn: connect(&url).await, killer: connect(&killer_url).await, url, writer };
    let mut next_seq = vec![0i64; keys as usize];
    let started = Instant::now();
    let mut counts = [0u64; 4];
    let mut written = 0;
    while written < orders && !shutdown.is_cancelled() {
        if rate > 0.0 {
            let due = started + Duration::from_secs_f64(written as f64 / rate);
            tokio::select! {
                _ = tokio::time::sleep_until(due.into()) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        let k = rng.random_range(0..keys) as usize;
        let order = OrderPlaced {
            key: format!("w{writer}-k{k}"),
            order_id: i64::from(writer) * 100_000_000 + written as i64,
            seq: next_seq[k],
            run: run.clone(),
        };
        next_seq[k] += 1;
        let ending = if rng.random_range(0..100) < rollback_pct {
            [Ending::ExplicitRollback, Ending::ErrorAfterPublish, Ending::Terminated][rng.random_range(0..3)]
        } else {
            Ending::Commit
        };
        w.place(&order, ending).await;
        counts[ending as usize] += 1;
        written += 1;
    }
    tracing::info!(writer, written, ?counts, "writer done");
}
