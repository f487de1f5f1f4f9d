//! One-message mode: a message in its own transactions, after a batch failed or when the batch
//! has one message. Handler failures are retried with backoff up to `max_attempts` and then
//! dead-lettered; infrastructure failures are retried until they pass.

use diesel_async::TransactionManager;
use outbox::Database;
use rdkafka::message::Message;

use super::{Failure, Item, Processor, Progress, StepError, infra, rollback_all};
use crate::classify::{Plan, dead_letter_headers};
use crate::metrics::Tally;
use crate::store::store;

impl<C: Database> Processor<'_, C> {
    /// One message in its own transactions, retrying handler failures with backoff and
    /// infrastructure failures until they pass.
    pub(super) async fn process_one(&self, item: &mut Item<C>, prior: Option<Failure>) -> Progress {
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
}
