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
//!
//! This module holds the public API ([`Replayer`], [`ReplayReport`]) and the paging over a
//! selection; `replay` replays one dead letter, `record` rebuilds its Kafka record, `failure`
//! is why a replay did not handle it, `requested` is the running inbox's poll.

mod failure;
mod record;
mod replay;
mod requested;

use std::sync::Arc;

use diesel_async::AsyncPgConnection;
use outbox::Database;
use outbox::raw_headers::escape;
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::error::config_error;
use crate::ops::ReplaySelection;
use crate::shared::Shared;
use crate::store::{DeadLetterFilter, store};

pub(crate) use requested::run_requested;

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
            Outcome::Lost(_) => {}
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
    /// with that error (the dead letters replayed before it stay replayed). A connection lost
    /// while a dead letter was replayed (the server ended the session) leaves that dead letter as
    /// it was, not counted as failed: the replay goes on with the others and then returns the
    /// error, and a later replay takes it again. After
    /// [`max_attempts`](crate::InboxConfig::max_attempts) such losses in a row (in this
    /// process) it is recorded as failed instead, so a handler that always ends its session
    /// (e.g. past `idle_in_transaction_session_timeout`) is not replayed forever.
    ///
    /// Each replay calls the handler once ([`Context::attempt`](crate::Context::attempt) is the
    /// dead letter's attempts plus one) and is bounded by the handler timeout; failures are not
    /// retried here.
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

#[derive(Debug)]
enum Outcome {
    Handled,
    Failed,
    Skipped,
    /// The database connection failed under the replay: the dead letter is unchanged.
    Lost(Error),
}

/// Replays every dead letter `filter` matches, page by page; stops early when `stop` fires.
async fn replay_matching<C: Database>(
    shared: &Shared<C>,
    filter: &DeadLetterFilter<'_>,
    stop: Option<&CancellationToken>,
) -> Result<ReplayReport, Error> {
    let mut report = ReplayReport::default();
    // The first lost connection: the dead letters after it are still replayed (a poisoned one
    // must not hold up the rest of the group), then the replay returns it.
    let mut lost: Option<Error> = None;
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
                return lost.map_or(Ok(report), Err);
            }
            match shared.wakeup.signal_after(replay::replay_one(shared, id, filter.requested)).await? {
                Outcome::Lost(e) => {
                    lost.get_or_insert(e);
                }
                outcome => report.add(outcome),
            }
        }
        match ids.last() {
            // Failed rows still match: page on by id, never back over them.
            Some(&last) if ids.len() as i64 == PAGE => after = last,
            _ => return lost.map_or(Ok(report), Err),
        }
    }
}
