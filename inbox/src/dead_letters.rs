//! Dead letters after the fact: replaying them (now, through [`Replayer`], or when an operator
//! asks, through the poll a running inbox does) and deleting them after a retention period.
//!
//! A replay runs the handler on the record stored in the dead letter, not on a copy produced to
//! the topic again: the inbox recorded the message id when it dead-lettered the message, so a
//! copy would be skipped as a duplicate, and producing needs a producer the consumer does not
//! have. Each dead letter is replayed in one transaction that claims its row (PostgreSQL:
//! `FOR UPDATE SKIP LOCKED`; SQLite: `BEGIN IMMEDIATE` already excludes other writers), runs the
//! handler and deletes the row, so the effects commit exactly once, however many replays run at
//! once or one after the other. A replay that fails again is rolled back and recorded on the row
//! (new reason and error, one more attempt, request cleared) in a transaction of its own. A
//! replay whose database connection failed (the session was lost: the server restarted, or
//! `pg_terminate_backend`) says nothing about the message: the dead letter is left as it was (a
//! requested replay stays requested, for the next poll) and the replay returns the error, as the
//! consumer retries such a message instead of dead-lettering it.
//!
//! Ordering: the partition moved past the message when it was dead-lettered, so a replayed
//! message runs after every later message of its key. See docs/dead-letters.md.

use std::borrow::Cow;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use crate::ops::ReplaySelection;
use crate::store::{DeadLetterFilter, NewDedup, StoredDeadLetter, store};
use diesel_async::{AsyncPgConnection, TransactionManager};
use futures_util::FutureExt;
use outbox::Database;
use outbox::raw_headers::{escape, sanitize_text};
use rdkafka::Timestamp;
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::Error;
use crate::classify::{Plan, classify};
use crate::context::Context;
use crate::error::config_error;
use crate::message::MessageMeta;
use crate::process::{connection_lost, error_chain, panic_message, rollback_all, server_rejected, transaction_depth};
use crate::shared::Shared;

/// How many dead-letter ids one look-up returns; a replay pages through larger selections.
const PAGE: i64 = 100;

/// Replays dead letters of one inbox's consumer group with its handlers, now. A cheap,
/// cloneable handle from [`Inbox::replayer`](crate::Inbox::replayer); it works whether or not
/// the inbox is running (it needs the database only, not Kafka), and next to running instances
/// of the same group.
///
/// ```no_run
/// # async fn run(inbox: &inbox::Inbox) -> Result<(), inbox::Error> {
/// use inbox::ReplaySelection;
/// // After deploying the handler for version 2 of an event:
/// let report = inbox.replayer().replay(&ReplaySelection::all().with_reason("unsupported_version")).await?;
/// println!("{} handled, {} failed again", report.handled, report.failed);
/// # Ok(()) }
/// ```
pub struct Replayer<C: Database = AsyncPgConnection> {
    shared: Arc<Shared<C>>,
}

impl<C: Database> Clone for Replayer<C> {
    fn clone(&self) -> Self {
        Self { shared: self.shared.clone() }
    }
}

impl<C: Database> std::fmt::Debug for Replayer<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replayer").field("group", &self.shared.options.group).finish_non_exhaustive()
    }
}

/// What a replay did with the dead letters its selection matched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplayReport {
    /// Handled: the handler's effects committed, and the dead letter was deleted in the same
    /// transaction.
    pub handled: u64,
    /// Failed again (handler error, panic, timeout, or still no handler for its type or
    /// version): rolled back; the dead letter now holds the new reason and error and one more
    /// attempt, and no replay request.
    pub failed: u64,
    /// Matched but left alone: another replay (another instance of the group) was replaying it
    /// or had just done so.
    pub skipped: u64,
}

impl ReplayReport {
    fn add(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Handled => self.handled += 1,
            Outcome::Failed => self.failed += 1,
            Outcome::Skipped => self.skipped += 1,
        }
    }
}

impl<C: Database> Replayer<C> {
    pub(crate) fn new(shared: Arc<Shared<C>>) -> Self {
        Self { shared }
    }

    /// Replays the selected dead letters of this inbox's group, one transaction each, in id
    /// order, and returns what happened to them. Dead letters of other groups are never touched
    /// (their handlers are another service's). A selection naming another group is an
    /// [`ErrorKind::Config`](outbox::ErrorKind::Config) error; a database error ends the replay
    /// with that error (the dead letters replayed before it stay replayed). That includes a
    /// connection lost while a handler ran (the server ended the session): the dead letter being
    /// replayed is left as it was, not counted as failed, and a later replay can take it.
    ///
    /// Each replay calls the handler once ([`Context::attempt`] is the dead letter's attempts
    /// plus one) and is bounded by the handler timeout; failures are not retried here.
    pub async fn replay(&self, selection: &ReplaySelection) -> Result<ReplayReport, Error> {
        let group = self.shared.options.group.as_str();
        if let Some(other) = selection.group.as_deref().filter(|g| *g != group) {
            return Err(config_error(format!(
                "inbox: this inbox (group `{group}`) cannot replay dead letters of group `{}`; replay them with \
                 that group's inbox, or request it with inbox::ops::request_replay",
                escape(other.as_bytes())
            )));
        }
        let filter = DeadLetterFilter {
            group: Some(group),
            ids: selection.ids.as_deref(),
            reason: selection.reason.as_deref(),
            requested: false,
        };
        replay_matching(&self.shared, &filter, None).await
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Handled,
    Failed,
    Skipped,
}

/// Why a replay did not handle its message.
struct Failure {
    /// The dead-letter reason: one of the handler's, or the classification's (whose envelope
    /// reasons, e.g. `missing_type`, are built from the header name).
    reason: Cow<'static, str>,
    error: String,
    /// The handler was abandoned mid-call (timeout): its connection is dropped, not reused.
    abandoned: bool,
    /// The database connection failed, not the message: nothing is recorded on the dead letter
    /// and the replay returns this error.
    lost: Option<diesel::result::Error>,
}

impl Failure {
    fn new(reason: impl Into<Cow<'static, str>>, error: impl Into<String>) -> Self {
        Failure { reason: reason.into(), error: error.into(), abandoned: false, lost: None }
    }

    /// The connection failed under the replay (`e`): see [`Failure::lost`].
    fn lost(e: diesel::result::Error) -> Self {
        Failure { lost: Some(e), ..Failure::new("", "") }
    }
}

/// Replays every dead letter `filter` matches, page by page; stops early when `stop` fires.
async fn replay_matching<C: Database>(
    shared: &Shared<C>,
    filter: &DeadLetterFilter<'_>,
    stop: Option<&CancellationToken>,
) -> Result<ReplayReport, Error> {
    let mut report = ReplayReport::default();
    let mut after = i64::MIN;
    loop {
        let ids = {
            let mut conn = shared.pool.get().await?;
            let ids = store(&mut *conn).dead_letter_ids(filter, after, PAGE).await?;
            conn.release();
            ids
        };
        for &id in &ids {
            if stop.is_some_and(CancellationToken::is_cancelled) {
                return Ok(report);
            }
            report.add(shared.wakeup.signal_after(replay_one(shared, id, filter.requested)).await?);
        }
        match ids.last() {
            // Failed rows still match: page on by id, never back over them.
            Some(&last) if ids.len() as i64 == PAGE => after = last,
            _ => return Ok(report),
        }
    }
}

/// Replays dead letter `id` in one transaction (see the module docs).
async fn replay_one<C: Database>(shared: &Shared<C>, id: i64, requested: bool) -> Result<Outcome, Error> {
    let group = shared.options.group.as_str();
    let mut pooled = shared.pool.get().await?;
    let conn: &mut C = &mut pooled;
    conn.begin_write().await?;
    let claimed = match store(&mut *conn).transaction_token().await {
        Ok(token) => {
            store(&mut *conn).claim_dead_letter(group, id, requested).await.map(|row| row.map(|row| (token, row)))
        }
        Err(e) => Err(e),
    };
    let (token, row) = match claimed {
        Ok(Some(claimed)) => claimed,
        Ok(None) => {
            rollback_all(conn).await;
            pooled.release();
            return Ok(Outcome::Skipped);
        }
        Err(e) => {
            rollback_all(conn).await;
            return Err(e.into());
        }
    };
    let failure = match stored_record(&row) {
        Err(f) => f,
        Ok(msg) => match handle(shared, conn, &msg, &row, token).await {
            Ok(()) => return commit(shared, pooled, &row).await,
            Err(f) => f,
        },
    };
    if !failure.abandoned {
        rollback_all(conn).await;
    }
    drop(pooled); // the pool tests it before its next use
    if let Some(e) = failure.lost {
        tracing::warn!(
            group = %shared.options.group,
            dead_letter = row.id,
            error = %e,
            "inbox: the database connection failed during a dead-letter replay; the dead letter is unchanged"
        );
        return Err(e.into());
    }
    record_failure(shared, &row, &failure).await?;
    Ok(Outcome::Failed)
}

/// Classifies the stored record as if it had just arrived and, when it has a handler now, runs
/// it in the open transaction; then records the message id again (a new dedup window, in case
/// it was pruned meanwhile, or renewing its window) and deletes the dead letter.
async fn handle<C: Database>(
    shared: &Shared<C>,
    conn: &mut C,
    msg: &OwnedMessage,
    row: &StoredDeadLetter,
    token: i64,
) -> Result<(), Failure> {
    let mut plan = classify(&shared.registry, &shared.options, msg);
    match &plan {
        Plan::Handle { .. } => {}
        Plan::Record { .. } => {
            return Err(Failure::new(
                "unknown_type",
                "no handler for this event type in this consumer group (it skips unknown types; a replay needs \
                 a handler)",
            ));
        }
        Plan::DeadLetter { reason, error, .. } => return Err(Failure::new(reason.clone(), error.clone())),
    }
    let attempt = u32::try_from(row.attempts).unwrap_or(0).saturating_add(1);
    call_handler(shared, conn, &mut plan, msg, row.id, attempt, token).await?;
    // The handler's transaction checked out as ours and usable: the inbox's own statements
    // failing is the database's doing, not the message's.
    let db = Failure::lost;
    if let Some(message_id) = plan.id() {
        let dedup = NewDedup {
            consumer_group: &shared.options.group,
            message_id,
            topic: &row.topic,
            kafka_partition: row.kafka_partition,
            kafka_offset: row.kafka_offset,
        };
        // Recorded when it was dead-lettered, so usually present: its window restarts now, when
        // the effects commit (else it would be pruned a window after the dead-lettering).
        if store(&mut *conn).insert_dedup(&[dedup]).await.map_err(db)?.is_empty() {
            store(&mut *conn).renew_dedup(&shared.options.group, message_id).await.map_err(db)?;
        }
    }
    store(&mut *conn).delete_dead_letter(row.id).await.map_err(db)?;
    Ok(())
}

async fn commit<C: Database>(
    shared: &Shared<C>,
    mut pooled: outbox::db::Pooled<C>,
    row: &StoredDeadLetter,
) -> Result<Outcome, Error> {
    let conn: &mut C = &mut pooled;
    if let Err(e) = C::TransactionManager::commit_transaction(conn).await {
        rollback_all(conn).await;
        return Err(e.into());
    }
    pooled.release();
    tracing::info!(
        group = %shared.options.group,
        dead_letter = row.id,
        topic = %row.topic,
        partition = row.kafka_partition,
        offset = row.kafka_offset,
        message_id = ?row.message_id,
        "inbox: dead letter replayed"
    );
    Ok(Outcome::Handled)
}

async fn record_failure<C: Database>(shared: &Shared<C>, row: &StoredDeadLetter, f: &Failure) -> Result<(), Error> {
    // Free of NUL and other control characters, whatever the record quoted into it.
    let error = sanitize_text(&f.error);
    let mut conn = shared.pool.get().await?;
    store(&mut *conn).record_replay_failure(row.id, row.attempts, &f.reason, &error).await?;
    conn.release();
    tracing::warn!(
        group = %shared.options.group,
        dead_letter = row.id,
        topic = %row.topic,
        partition = row.kafka_partition,
        offset = row.kafka_offset,
        reason = %f.reason,
        error = %error,
        "inbox: dead letter replay failed; it stays a dead letter"
    );
    Ok(())
}

/// The dead letter as the Kafka record it was: key, payload, headers byte for byte (rows written
/// before migration 3 have only the display form of their headers, which is used instead).
fn stored_record(row: &StoredDeadLetter) -> Result<OwnedMessage, Failure> {
    let malformed = |error: String| Failure::new("malformed_headers", error);
    let headers: Vec<(Vec<u8>, Option<Vec<u8>>)> = match &row.raw_headers {
        Some(bytes) => outbox::raw_headers::decode(bytes)
            .ok_or_else(|| malformed("the stored raw_headers are not in the documented format".into()))?,
        None => match &row.headers {
            serde_json::Value::Object(map) => {
                map.iter().map(|(k, v)| (k.clone().into_bytes(), v.as_str().map(|v| v.as_bytes().to_vec()))).collect()
            }
            _ => return Err(malformed("the stored headers are not a JSON object".into())),
        },
    };
    let mut owned = OwnedHeaders::new_with_capacity(headers.len());
    for (key, value) in &headers {
        // rdkafka takes header keys as text; such a record was dead-lettered for this reason.
        let key = std::str::from_utf8(key).map_err(|_| {
            malformed(format!("header key `{}` is not UTF-8 (the raw headers are kept in raw_headers)", escape(key)))
        })?;
        owned = owned.insert(Header { key, value: value.as_deref() });
    }
    Ok(OwnedMessage::new(
        row.payload.clone(),
        row.key.clone(),
        row.topic.clone(),
        Timestamp::NotAvailable,
        row.kafka_partition,
        row.kafka_offset,
        Some(owned),
    ))
}

/// Runs the handler of `plan` in the open transaction `token` names, bounded by the handler
/// timeout, then checks the transaction is still that one and usable, as the consumer does
/// (`process.rs`).
async fn call_handler<C: Database>(
    shared: &Shared<C>,
    conn: &mut C,
    plan: &mut Plan<C>,
    msg: &OwnedMessage,
    dead_letter: i64,
    attempt: u32,
    token: i64,
) -> Result<(), Failure> {
    let Plan::Handle { envelope, route, decoded } = plan else {
        return Err(Failure::new("handler_failed", "inbox bug: no handler for this message"));
    };
    let event = match decoded.take() {
        Some(event) => event,
        None => route
            .decode(msg.payload().unwrap_or_default())
            .map_err(|e| Failure::new("malformed_payload", format!("payload no longer decodes: {e}")))?,
    };
    let envelope: &outbox::Envelope = envelope;
    let route = &*route;
    let meta = MessageMeta {
        group: &shared.options.group,
        topic: msg.topic(),
        partition: msg.partition(),
        offset: msg.offset(),
        key: msg.key(),
        envelope,
        attempt,
    };
    let span = tracing::info_span!(
        "inbox.replay",
        group = %shared.options.group,
        topic = msg.topic(),
        partition = msg.partition(),
        offset = msg.offset(),
        message_id = %envelope.id,
        event_type = %envelope.event_type,
        dead_letter,
        attempt
    );
    let timeout = shared.options.handler_timeout;
    let result = {
        let mut cx = Context::new(conn, &meta);
        let call = AssertUnwindSafe(route.call(event, &mut cx)).catch_unwind().instrument(span);
        tokio::time::timeout(timeout, call).await
    };
    let Ok(result) = result else {
        return Err(Failure {
            abandoned: true,
            ..Failure::new(
                "handler_timed_out",
                format!("the handler did not finish within {timeout:?} (handler_timeout)"),
            )
        });
    };
    let ended = || {
        Failure::new(
            "handler_ended_transaction",
            "the handler ended the inbox transaction itself; commit and rollback belong to the inbox",
        )
    };
    if transaction_depth(conn) != Some(1) {
        return Err(ended());
    }
    match store(&mut *conn).same_transaction(token).await {
        Ok(true) => {}
        Ok(false) => return Err(ended()),
        // A connection that no longer answers was lost (the server ended the session), whatever
        // the handler returned: as the consumer, which retries such a message (`process.rs`).
        Err(e) if connection_lost(&e) => return Err(Failure::lost(e)),
        // The handler failed: its own error says more than the aborted transaction.
        Err(_) if !matches!(result, Ok(Ok(()))) => {}
        Err(e) if server_rejected(&e) => {
            return Err(Failure::new(
                "handler_aborted_transaction",
                format!(
                    "the handler returned Ok but left the inbox transaction aborted (a failed statement was \
                     ignored): {e}"
                ),
            ));
        }
        Err(e) => return Err(Failure::lost(e)),
    }
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Failure::new("handler_failed", error_chain(&e))),
        Err(panic) => Err(Failure::new("handler_panicked", panic_message(panic.as_ref()))),
    }
}

/// The background task of a running inbox: every `replay_poll_interval` (the first time one
/// interval after the start), replays the dead letters of its group that an operator asked to
/// replay.
pub(crate) async fn run_requested<C: Database>(shared: Arc<Shared<C>>, stop: CancellationToken) {
    let filter = DeadLetterFilter { group: Some(&shared.options.group), requested: true, ..Default::default() };
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(shared.options.replay_poll_interval) => {}
        }
        match replay_matching(&shared, &filter, Some(&stop)).await {
            Ok(report) if report != ReplayReport::default() => tracing::info!(
                group = %shared.options.group,
                handled = report.handled,
                failed = report.failed,
                skipped = report.skipped,
                "inbox: requested dead-letter replays done"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "inbox: requested dead-letter replays failed; trying again later"),
        }
    }
}
