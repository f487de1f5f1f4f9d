//! The replay of one dead letter, in one transaction: claim its row, run the handler on its
//! stored record, record its message id again and delete it, commit; or roll back and record the
//! failure on the row, or (connection lost) leave the row as it was. See the parent module.

use std::panic::AssertUnwindSafe;

use diesel_async::TransactionManager;
use futures_util::FutureExt;
use outbox::Database;
use outbox::raw_headers::sanitize_text;
use rdkafka::message::{Message, OwnedMessage};
use tracing::Instrument;

use super::Outcome;
use super::failure::Failure;
use super::record::stored_record;
use crate::Error;
use crate::classify::{Plan, classify};
use crate::context::Context;
use crate::message::MessageMeta;
use crate::process::{connection_lost, error_chain, panic_message, rollback_all, server_rejected, transaction_depth};
use crate::shared::Shared;
use crate::store::{NewDedup, StoredDeadLetter, store};

/// Replays dead letter `id` in one transaction (see the module docs).
pub(super) async fn replay_one<C: Database>(shared: &Shared<C>, id: i64, requested: bool) -> Result<Outcome, Error> {
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
    let failure = match failure.lost {
        Some(e) => {
            let in_a_row = shared.replays_lost.count(row.id);
            if in_a_row < shared.options.max_attempts {
                tracing::warn!(
                    group = %shared.options.group,
                    dead_letter = row.id,
                    error = %e,
                    lost_in_a_row = in_a_row,
                    "inbox: the database connection failed during a dead-letter replay; the dead letter is unchanged"
                );
                return Ok(Outcome::Lost(e.into()));
            }
            Failure::new(
                "handler_failed",
                format!("the database connection was lost in {in_a_row} replays in a row, the last time: {e}"),
            )
        }
        None => failure,
    };
    shared.replays_lost.clear(row.id);
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
    let db = Failure::database;
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
    shared.replays_lost.clear(row.id);
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
        Err(e) if connection_lost(&e) => return Err(Failure::database(e)),
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
        Err(e) => return Err(Failure::new("handler_failed", format!("the database connection failed: {e}"))),
    }
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Failure::new("handler_failed", error_chain(&e))),
        Err(panic) => Err(Failure::new("handler_panicked", panic_message(panic.as_ref()))),
    }
}
