//! Batch mode: a whole batch in one transaction, each message's dedup row inserted right before
//! its handler. Separate from the one-message mode (`one`) because of what only a batch needs:
//! checking a handler's transaction in the next message's statement and charging a lost or
//! aborted transaction to the handler that left it.

use diesel_async::TransactionManager;
use outbox::Database;
use tracing::Instrument;

use super::call::server_rejected;
use super::{Failure, Item, Processor, StepError, infra, rollback_all};
use crate::classify::{Plan, dead_letter_headers};
use crate::metrics::Tally;
use crate::store::store;

impl<C: Database> Processor<'_, C> {
    /// The whole batch in one transaction with one multi-row dedup INSERT. On failure returns
    /// which message's handler failed and how, if it was a handler.
    pub(super) async fn try_batch(&self, items: &mut [Item<C>]) -> Result<(), (Option<usize>, Option<Failure>)> {
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
}
