//! Handling the messages of one partition in transactions: a whole batch in one, and when
//! anything in it fails, each message in its own, so only the failing message is retried or
//! dead-lettered.
//!
//! Every message's dedup row is inserted right before its own handler runs, and after every
//! handler the inbox checks that the transaction is still the one it opened and still usable
//! (see `same_transaction` in the `store` module). A handler that
//! committed or rolled it back (through diesel or with raw SQL) is charged with
//! `handler_ended_transaction`, one that left it aborted with `handler_aborted_transaction`;
//! in a batch, that message alone is charged and the batch splits, so batch mode and
//! one-message mode end in the same state.
//!
//! Errors fall in two classes. A handler error belongs to its message: it is retried with
//! backoff up to `max_attempts` and then dead-lettered. An infrastructure error (pool, BEGIN,
//! our own statements, COMMIT) says nothing about the message: the same step is retried with
//! backoff for as long as it takes, and never dead-letters anything.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use crate::store::{NewDeadLetter, NewDedup, NewPosition, store};
use diesel_async::TransactionManager;
use futures_util::FutureExt;
use outbox::Database;
use outbox::raw_headers::sanitize_text;
use rdkafka::Offset;
use rdkafka::consumer::Consumer as _;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::topic_partition_list::TopicPartitionList;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::classify::{Plan, classify, dead_letter_headers};
use crate::context::Context;
use crate::flow::Flow;
use crate::message::MessageMeta;
use crate::metrics::{Tally, handler_seconds};
use crate::shared::{Consumer, Shared};

/// One Kafka message and what to do with it.
pub(crate) struct Item<C: Database> {
    msg: OwnedMessage,
    plan: Plan<C>,
}

/// Whether the worker may go on with the next batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Progress {
    Done,
    /// Stopped (shutdown or partition revoked) before the batch was finished; the unfinished
    /// messages are not committed and will be read again by whoever owns the partition next.
    Interrupted,
}

/// A failed handler call.
#[derive(Debug, Clone)]
struct Failure {
    transient: bool,
    reason: &'static str,
    /// The dead-letter reason when a transient failure has used up its attempts.
    exhausted: &'static str,
    error: String,
    /// The handler ended the inbox transaction itself, so its dedup row may be committed
    /// already: write the dead letter even though the id is recorded.
    ended_transaction: bool,
    /// The handler was abandoned mid-call: its connection is dropped, not rolled back and reused.
    abandoned: bool,
}

impl Failure {
    fn new(transient: bool, reason: &'static str, error: impl Into<String>) -> Self {
        Failure {
            transient,
            reason,
            exhausted: "retries_exhausted",
            error: error.into(),
            ended_transaction: false,
            abandoned: false,
        }
    }

    fn ended_transaction(how: &str) -> Self {
        Failure {
            ended_transaction: true,
            ..Failure::new(
                false,
                "handler_ended_transaction",
                format!(
                    "the handler ended the inbox transaction itself ({how}); commit and rollback belong to the \
                     inbox (nested `conn.transaction(..)` calls are savepoints and are fine)"
                ),
            )
        }
    }

    fn aborted_transaction(e: &diesel::result::Error) -> Self {
        Failure {
            exhausted: "handler_aborted_transaction",
            ..Failure::new(
                true,
                "handler_aborted_transaction",
                format!(
                    "the handler returned Ok but left the inbox transaction aborted (a failed statement was \
                     ignored): {e}"
                ),
            )
        }
    }
}

enum StepError {
    Handler(Failure),
    Infra(String),
}

fn infra(e: impl std::fmt::Display) -> StepError {
    StepError::Infra(e.to_string())
}

/// Processes the batches of one partition.
pub(crate) struct Processor<'a, C: Database> {
    pub shared: &'a Shared<C>,
    pub consumer: &'a Consumer,
    pub topic: &'a str,
    pub partition: i32,
    pub stop: &'a CancellationToken,
    pub flow: &'a Flow,
}

impl<C: Database> Processor<'_, C> {
    pub(crate) async fn process(&self, batch: Vec<OwnedMessage>) -> Progress {
        let shared = self.shared;
        let mut items: Vec<Item<C>> = batch
            .into_iter()
            .map(|msg| Item { plan: classify(&shared.registry, &shared.options, &msg), msg })
            .collect();
        let mut failed: Option<(usize, Failure)> = None;
        if items.len() > 1 {
            match self.try_batch(&mut items).await {
                Ok(()) => return Progress::Done,
                Err((index, failure)) => {
                    tracing::debug!(
                        topic = self.topic,
                        partition = self.partition,
                        size = items.len(),
                        "inbox: batch failed; handling its messages one transaction each"
                    );
                    failed = index.zip(failure);
                }
            }
        }
        for (index, item) in items.iter_mut().enumerate() {
            let prior = match &failed {
                Some((i, f)) if *i == index => Some(f.clone()),
                _ => None,
            };
            if self.process_one(item, prior).await == Progress::Interrupted {
                return Progress::Interrupted;
            }
        }
        Progress::Done
    }

    /// The whole batch in one transaction with one multi-row dedup INSERT. On failure returns
    /// which message's handler failed and how, if it was a handler.
    async fn try_batch(&self, items: &mut [Item<C>]) -> Result<(), (Option<usize>, Option<Failure>)> {
        let span =
            tracing::debug_span!("inbox.batch", topic = self.topic, partition = self.partition, size = items.len());
        async {
            let mut pooled = self.shared.pool.get().await.map_err(|e| {
                tracing::warn!(error = %e, "inbox: no database connection");
                (None, None)
            })?;
            let conn: &mut C = &mut pooled;
            conn.begin_write().await.map_err(|_| (None, None))?;
            let token = match store(&mut *conn).transaction_token().await {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(error = %e, "inbox: batch failed on the database");
                    rollback_all(conn).await;
                    return Err((None, None));
                }
            };
            match self.batch_body(conn, items, token).await {
                Ok((tally, next)) => match C::TransactionManager::commit_transaction(conn).await {
                    Ok(()) => {
                        pooled.release();
                        self.committed(next, &tally);
                        Ok(())
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "inbox: batch commit failed");
                        rollback_all(conn).await;
                        Err((None, None))
                    }
                },
                Err((index, e)) => {
                    if !matches!(&e, StepError::Handler(f) if f.abandoned) {
                        rollback_all(conn).await;
                    }
                    Err(match e {
                        StepError::Handler(f) => (Some(index), Some(f)),
                        StepError::Infra(e) => {
                            tracing::warn!(error = %e, "inbox: batch failed on the database");
                            (None, None)
                        }
                    })
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn batch_body(
        &self,
        conn: &mut C,
        items: &mut [Item<C>],
        token: i64,
    ) -> Result<(Tally, i64), (usize, StepError)> {
        let mut tally = Tally::default();
        // The last handler that returned Ok and whose transaction has not been checked yet: the
        // next message's dedup INSERT checks it in the same statement (one round trip per
        // message), and the batch's end checks the last one.
        let mut unchecked: Option<usize> = None;
        for (index, item) in items.iter_mut().enumerate() {
            // Each message's dedup row right before its own handler (and a dead letter right
            // after its dedup row): a handler that ends the transaction can commit only what
            // belongs to messages already processed, never the dedup rows of the messages
            // after it (which would then look like duplicates) nor a dedup row without its
            // dead letter.
            if let Some(id) = item.plan.id() {
                let row = self.dedup_row(id, &item.msg);
                let inserted = store(&mut *conn).insert_dedup_in(token, &[row]).await;
                match self.charge(unchecked, inserted.map(|i| i.ok_or(())), index)? {
                    ids if ids.is_empty() => {
                        unchecked = None;
                        tally.duplicates += 1;
                        continue;
                    }
                    _ => unchecked = None,
                }
            } else if unchecked.is_some() {
                let same = store(&mut *conn).same_transaction(token).await.map(|same| same.then_some(()).ok_or(()));
                self.charge(unchecked, same, index)?;
                unchecked = None;
            }
            match &item.plan {
                Plan::DeadLetter { reason, error, .. } => {
                    let row = self.dead_letter_row(item, reason, error, 0, dead_letter_headers(&item.msg));
                    store(&mut *conn).insert_dead_letters(&[row]).await.map_err(|e| (index, infra(e)))?;
                    tally.dead_lettered.push(reason.clone());
                }
                Plan::Record { .. } => tally.skipped += 1,
                Plan::Handle { .. } => match self.call_handler(conn, item, 1, token, false).await {
                    Ok(event_type) => {
                        tally.handled.push(event_type);
                        unchecked = Some(index);
                    }
                    Err(f) => return Err((index, StepError::Handler(f))),
                },
            }
        }
        if unchecked.is_some() {
            let same = store(&mut *conn).same_transaction(token).await.map(|same| same.then_some(()).ok_or(()));
            self.charge(unchecked, same, items.len())?;
        }
        let Some(last) = items.last() else {
            return Ok((tally, 0));
        };
        let position = self.position(&last.msg);
        store(&mut *conn).store_position(&position).await.map_err(|e| (0, infra(e)))?;
        Ok((tally, position.next_offset))
    }

    /// The outcome of a statement that also checked the transaction after the handler of
    /// message `unchecked` (if any): `Err(())` inside means the transaction is no longer ours,
    /// a rejected statement that it is aborted. Either is that handler's doing; without a
    /// handler to charge, it is an infrastructure error of message `index`.
    fn charge<T>(
        &self,
        unchecked: Option<usize>,
        outcome: diesel::QueryResult<Result<T, ()>>,
        index: usize,
    ) -> Result<T, (usize, StepError)> {
        match (outcome, unchecked) {
            (Ok(Ok(value)), _) => Ok(value),
            (Ok(Err(())), Some(prev)) => {
                Err((prev, StepError::Handler(Failure::ended_transaction("a raw COMMIT or ROLLBACK"))))
            }
            (Err(e), Some(prev)) if server_rejected(&e) => {
                Err((prev, StepError::Handler(Failure::aborted_transaction(&e))))
            }
            (Ok(Err(())), None) => Err((index, infra("the inbox transaction was lost"))),
            (Err(e), _) => Err((index, infra(e))),
        }
    }

    /// One message in its own transactions, retrying handler failures with backoff and
    /// infrastructure failures until they pass.
    async fn process_one(&self, item: &mut Item<C>, prior: Option<Failure>) -> Progress {
        let options = &self.shared.options;
        let mut attempt: u32 = if prior.is_some() { 1 } else { 0 };
        let mut failure = prior;
        let mut retry_delays = self.delays();
        let mut infra_delays = self.delays();
        loop {
            if let Some(f) = &failure {
                if !f.transient || attempt >= options.max_attempts {
                    match self.dead_letter_tx(item, f, attempt).await {
                        Ok(()) => return Progress::Done,
                        Err(e) => {
                            self.retrying(item, &e);
                            tracing::warn!(error = %e, "inbox: cannot write the dead letter; retrying");
                            if !self.pause(infra_delays.next()).await {
                                return Progress::Interrupted;
                            }
                            continue;
                        }
                    }
                }
                tracing::info!(
                    topic = self.topic,
                    partition = self.partition,
                    offset = item.msg.offset(),
                    attempt,
                    error = %f.error,
                    "inbox: handler failed; retrying"
                );
                self.retrying(item, &f.error);
                if !self.pause(retry_delays.next()).await {
                    return Progress::Interrupted;
                }
                failure = None;
            }
            match self.one_tx(item, attempt + 1).await {
                Ok(()) => return Progress::Done,
                Err(StepError::Handler(f)) => {
                    attempt += 1;
                    failure = Some(f);
                }
                Err(StepError::Infra(e)) => {
                    self.retrying(item, &e);
                    tracing::warn!(error = %e, offset = item.msg.offset(), "inbox: database error; retrying");
                    if !self.pause(infra_delays.next()).await {
                        return Progress::Interrupted;
                    }
                }
            }
        }
    }

    async fn one_tx(&self, item: &mut Item<C>, attempt: u32) -> Result<(), StepError> {
        let mut pooled = self.shared.pool.get().await.map_err(infra)?;
        let conn: &mut C = &mut pooled;
        conn.begin_write().await.map_err(infra)?;
        let token = match store(&mut *conn).transaction_token().await {
            Ok(t) => t,
            Err(e) => {
                rollback_all(conn).await;
                return Err(infra(e));
            }
        };
        match self.one_body(conn, item, attempt, token).await {
            Ok(tally) => {
                if let Err(e) = C::TransactionManager::commit_transaction(conn).await {
                    rollback_all(conn).await;
                    return Err(infra(e));
                }
                pooled.release();
                self.committed(item.msg.offset() + 1, &tally);
                Ok(())
            }
            Err(e) => {
                if !matches!(&e, StepError::Handler(f) if f.abandoned) {
                    rollback_all(conn).await;
                }
                Err(e)
            }
        }
    }

    async fn one_body(&self, conn: &mut C, item: &mut Item<C>, attempt: u32, token: i64) -> Result<Tally, StepError> {
        let mut tally = Tally::default();
        if let Some(id) = item.plan.id() {
            let row = self.dedup_row(id, &item.msg);
            if store(&mut *conn).insert_dedup(&[row]).await.map_err(infra)?.is_empty() {
                tally.duplicates = 1;
                store(&mut *conn).store_position(&self.position(&item.msg)).await.map_err(infra)?;
                return Ok(tally);
            }
        }
        match &item.plan {
            Plan::DeadLetter { reason, error, .. } => {
                let row = self.dead_letter_row(item, reason, error, 0, dead_letter_headers(&item.msg));
                store(&mut *conn).insert_dead_letters(&[row]).await.map_err(infra)?;
                tally.dead_lettered.push(reason.clone());
            }
            Plan::Record { .. } => tally.skipped = 1,
            Plan::Handle { .. } => {
                let event_type =
                    self.call_handler(conn, item, attempt, token, true).await.map_err(StepError::Handler)?;
                tally.handled.push(event_type);
            }
        }
        store(&mut *conn).store_position(&self.position(&item.msg)).await.map_err(infra)?;
        Ok(tally)
    }

    /// The dead-letter row of a message whose handler failed for good, in the same transaction
    /// as its dedup row and the position.
    async fn dead_letter_tx(&self, item: &Item<C>, f: &Failure, attempts: u32) -> Result<(), String> {
        let mut pooled = self.shared.pool.get().await.map_err(|e| e.to_string())?;
        let conn: &mut C = &mut pooled;
        conn.begin_write().await.map_err(|e| e.to_string())?;
        let reason = if f.transient { f.exhausted } else { f.reason };
        let body = async {
            let mut tally = Tally::default();
            let new = match item.plan.id() {
                // A handler that ended the transaction itself committed (or not) its own dedup
                // row; the dead letter is written either way.
                Some(id) => {
                    !store(&mut *conn).insert_dedup(&[self.dedup_row(id, &item.msg)]).await?.is_empty()
                        || f.ended_transaction
                }
                None => true,
            };
            if new {
                let attempts = i32::try_from(attempts).unwrap_or(i32::MAX);
                let row = self.dead_letter_row(item, reason, &f.error, attempts, dead_letter_headers(&item.msg));
                store(&mut *conn).insert_dead_letters(&[row]).await?;
                tally.dead_lettered.push(reason.to_owned());
            } else {
                // Another consumer handled it meanwhile (a rebalance): nothing to park.
                tally.duplicates = 1;
            }
            store(&mut *conn).store_position(&self.position(&item.msg)).await?;
            Ok::<_, diesel::result::Error>(tally)
        }
        .await;
        match body {
            Ok(tally) => {
                if let Err(e) = C::TransactionManager::commit_transaction(conn).await {
                    rollback_all(conn).await;
                    return Err(e.to_string());
                }
                pooled.release();
                if tally.duplicates == 0 {
                    tracing::warn!(
                        topic = self.topic,
                        partition = self.partition,
                        offset = item.msg.offset(),
                        reason,
                        attempts,
                        error = %f.error,
                        "inbox: message dead-lettered"
                    );
                }
                self.committed(item.msg.offset() + 1, &tally);
                Ok(())
            }
            Err(e) => {
                rollback_all(conn).await;
                Err(e.to_string())
            }
        }
    }

    /// Calls the message's handler inside the open transaction; returns its event type.
    /// Calls the message's handler inside the open transaction `token` names, bounded by the
    /// handler timeout, then checks the transaction is still that one and usable; returns the
    /// event type.
    async fn call_handler(
        &self,
        conn: &mut C,
        item: &mut Item<C>,
        attempt: u32,
        token: i64,
        verify: bool,
    ) -> Result<&'static str, Failure> {
        let Plan::Handle { envelope, route, decoded } = &mut item.plan else {
            return Err(Failure::new(false, "handler_failed", "inbox bug: no handler for this message"));
        };
        let event = match decoded.take() {
            Some(event) => event,
            // A retry: the first call consumed the decoded event. Same bytes, same result.
            None => route
                .decode(item.msg.payload().unwrap_or_default())
                .map_err(|e| Failure::new(false, "handler_failed", format!("payload no longer decodes: {e}")))?,
        };
        let envelope: &outbox::Envelope = envelope;
        let route = &*route;
        let meta = MessageMeta {
            group: &self.shared.options.group,
            topic: self.topic,
            partition: self.partition,
            offset: item.msg.offset(),
            key: item.msg.key(),
            envelope,
            attempt,
        };
        let span = tracing::info_span!(
            "inbox.handle",
            group = %self.shared.options.group,
            topic = self.topic,
            partition = self.partition,
            offset = item.msg.offset(),
            message_id = %envelope.id,
            event_type = %envelope.event_type,
            attempt,
            otel.name = tracing::field::Empty,
            otel.kind = tracing::field::Empty,
        );
        // Feature `otel`: continue the producer's trace (docs/tracing.md).
        crate::otel::process(&span, &meta);
        let started = Instant::now();
        let timeout = self.shared.options.handler_timeout;
        let result = {
            let mut cx = Context::new(conn, &meta);
            let call = AssertUnwindSafe(route.call(event, &mut cx)).catch_unwind().instrument(span.clone());
            tokio::time::timeout(timeout, call).await
        };
        crate::otel::handled(&span, &result);
        handler_seconds(&self.shared.options.group, self.topic, route.event_type(), started.elapsed().as_secs_f64());
        let result = match result {
            Ok(result) => result,
            Err(_) => {
                return Err(Failure {
                    exhausted: "handler_timed_out",
                    abandoned: true,
                    ..Failure::new(
                        true,
                        "handler_timed_out",
                        format!("the handler did not finish within {timeout:?} (handler_timeout)"),
                    )
                });
            }
        };
        // Whatever the handler returned: is the transaction still ours, open and usable?
        let mut session_lost = false;
        let state = if transaction_depth(conn) != Some(1) {
            Err(Failure::ended_transaction("through the connection's transaction manager"))
        } else if !verify && matches!(result, Ok(Ok(()))) {
            Ok(()) // checked by the caller's next statement (batch mode)
        } else {
            match store(&mut *conn).same_transaction(token).await {
                Ok(true) => Ok(()),
                Ok(false) => Err(Failure::ended_transaction("a raw COMMIT or ROLLBACK")),
                // The handler failed: its own error says more than the aborted transaction. But a
                // connection that no longer answers was lost (the server ended the session: shut
                // down, restarted, pg_terminate_backend): retrying on another connection may pass,
                // whatever the handler's error says, in whichever language the server speaks.
                Err(e) if !matches!(result, Ok(Ok(()))) => {
                    session_lost = connection_lost(&e);
                    Ok(())
                }
                Err(e) if server_rejected(&e) => Err(Failure::aborted_transaction(&e)),
                Err(e) => Err(Failure::new(true, "handler_failed", format!("the database connection failed: {e}"))),
            }
        };
        state?;
        match result {
            Ok(Ok(())) => Ok(route.event_type()),
            Ok(Err(e)) => Err(Failure::new(e.is_transient() || session_lost, "handler_failed", error_chain(&e))),
            Err(panic) => Err(Failure::new(false, "handler_panicked", panic_message(panic.as_ref()))),
        }
    }

    /// The partition's position after `msg`, with the identity of the log it is in.
    fn position<'m>(&'m self, msg: &OwnedMessage) -> NewPosition<'m> {
        NewPosition {
            consumer_group: &self.shared.options.group,
            topic: self.topic,
            kafka_partition: self.partition,
            next_offset: msg.offset() + 1,
            cluster_id: self.shared.cluster_id.get().and_then(Option::as_deref),
            fingerprint: Some(crate::raw_headers::fingerprint(msg)),
            replace: self.flow.replace_pending(),
        }
    }

    fn dedup_row<'m>(&'m self, id: Uuid, msg: &OwnedMessage) -> NewDedup<'m> {
        NewDedup {
            consumer_group: &self.shared.options.group,
            message_id: id,
            topic: self.topic,
            kafka_partition: self.partition,
            kafka_offset: msg.offset(),
        }
    }

    fn dead_letter_row<'m>(
        &'m self,
        item: &'m Item<C>,
        reason: &'m str,
        error: &'m str,
        attempts: i32,
        (raw_headers, headers): (Vec<u8>, serde_json::Value),
    ) -> NewDeadLetter<'m> {
        NewDeadLetter {
            consumer_group: &self.shared.options.group,
            message_id: item.plan.id(),
            topic: self.topic,
            kafka_partition: self.partition,
            kafka_offset: item.msg.offset(),
            key: item.msg.key(),
            payload: item.msg.payload(),
            headers,
            raw_headers,
            reason,
            // Free of NUL and other control characters, whatever the record quoted into it.
            error: sanitize_text(error),
            attempts,
        }
    }

    /// After a commit: metrics, and the Kafka offset hint. Storing fails for a partition no
    /// longer assigned to this consumer, which is exactly when it must not be stored.
    fn committed(&self, next_offset: i64, tally: &Tally) {
        self.flow.replaced();
        self.shared.health.cleared(self.topic, self.partition);
        tally.report(&self.shared.options.group, self.topic);
        let mut tpl = TopicPartitionList::new();
        if tpl.add_partition_offset(self.topic, self.partition, Offset::Offset(next_offset)).is_ok()
            && let Err(e) = self.consumer.store_offsets(&tpl)
        {
            tracing::debug!(error = %e, topic = self.topic, partition = self.partition, "inbox: offset hint not stored");
        }
    }

    /// For [`crate::InboxHealth`]: the partition is retrying this message.
    fn retrying(&self, item: &Item<C>, error: &str) {
        self.shared.health.failed(self.topic, self.partition, item.msg.offset(), error);
    }

    fn delays(&self) -> impl Iterator<Item = Duration> + use<C> {
        self.shared.options.retry.delays()
    }

    /// Waits `delay`, or returns false at once when the worker is told to stop.
    async fn pause(&self, delay: Option<Duration>) -> bool {
        let delay = delay.unwrap_or(self.shared.options.retry.max);
        tokio::select! {
            biased;
            _ = self.stop.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}

pub(crate) fn transaction_depth<C: Database>(conn: &mut C) -> Option<u32> {
    outbox::db::transaction_depth(conn).ok().flatten()
}

/// Rolls back every open level (the handler may have left savepoints behind). A failure here
/// leaves the transaction manager broken, and the pool then discards the connection.
pub(crate) async fn rollback_all<C: Database>(conn: &mut C) {
    while transaction_depth(conn).is_some() {
        if let Err(e) = C::TransactionManager::rollback_transaction(conn).await {
            tracing::debug!(error = %e, "inbox: rollback failed; the connection will be discarded");
            return;
        }
    }
}

/// The server answered the check with an error (a live connection refusing a statement that
/// cannot fail on its own): the transaction is aborted. diesel-async maps SQLSTATE 25P02
/// (`in_failed_sql_transaction`) to `DatabaseErrorKind::Unknown` without exposing the code, so
/// the inbox goes by this shape, never by the (localised) message text. Connection failures
/// are not the handler's.
pub(crate) fn server_rejected(e: &diesel::result::Error) -> bool {
    use diesel::result::{DatabaseErrorKind, Error};
    matches!(e, Error::DatabaseError(kind, _)
        if !matches!(kind, DatabaseErrorKind::UnableToSendCommand | DatabaseErrorKind::ClosedConnection))
}

/// The statement never got an answer: the connection is gone (diesel-async reports a closed
/// tokio-postgres connection as `UnableToSendCommand`, an error without SQLSTATE).
pub(crate) fn connection_lost(e: &diesel::result::Error) -> bool {
    use diesel::result::{DatabaseErrorKind, Error};
    matches!(e, Error::DatabaseError(DatabaseErrorKind::UnableToSendCommand | DatabaseErrorKind::ClosedConnection, _))
}

pub(crate) fn error_chain(e: &crate::HandlerError) -> String {
    use std::error::Error as _;
    let mut out = e.to_string();
    // HandlerError displays its source; start the chain below it.
    let mut next = e.source().and_then(|s| s.source());
    while let Some(s) = next {
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}

pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic payload".to_owned());
    format!("the handler panicked: {text}")
}
