//! The harness's waits: until a group has handled `n` messages, until everything is quiet, and
//! the checks every wait makes between two looks (the deadline, a relay or inbox that stopped).
//! Separate from the rest of the [`Harness`](super::Harness) because they are the polling part:
//! how often, over what, and how a wait fails.

use std::collections::HashMap;
use std::time::Duration;

use outbox::ErrorKind;

use super::kafka::{Partition, log_ends};
use super::{Harness, Store, fail, joined, plain, pool_error};
use crate::Error;

/// How often the waits look at the tables.
const POLL: Duration = Duration::from_millis(20);

impl<C: Store> Harness<C> {
    /// Waits until the inbox of `group` has handled at least `n` messages (dedup rows that are
    /// not dead letters: handled, or skipped as unknown types under
    /// [`UnknownTypePolicy::Skip`](crate::UnknownTypePolicy::Skip)); returns the count.
    pub async fn until_handled(&mut self, group: &str, n: i64, timeout: Duration) -> Result<i64, Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let handled = self.handled(group).await?;
            if handled >= n {
                return Ok(handled);
            }
            self.pause(deadline, || format!("{handled} of {n} messages handled by `{group}`")).await?;
        }
    }

    /// Waits until everything is done: no message waits in the outbox (parked ones aside; the
    /// messages a parked one holds back do count), and every started inbox has a stored
    /// position at the end of each partition of its topics — on two looks in a row over the same
    /// log ends. Replays requested with `inbox::ops::request_replay` are not waited for.
    pub async fn until_quiet(&mut self, timeout: Duration) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        // Quiet twice in a row, over the same log ends: the outbox and the positions are read in
        // separate statements, so a handler committing its position with a follow-up between
        // them, or a relay producing one right after, would pass a single look.
        let mut quiet_at: Option<Vec<(Partition, i64)>> = None;
        loop {
            let (behind, ends) = self.behind().await?;
            if behind.is_empty() {
                if quiet_at.as_ref() == Some(&ends) {
                    return Ok(());
                }
                quiet_at = Some(ends);
            } else {
                quiet_at = None;
            }
            self.pause(deadline, || format!("not quiet: {}", behind.join("; "))).await?;
        }
    }

    /// What keeps the harness from being quiet, one line each (empty when quiet), and the log
    /// ends it compared with.
    async fn behind(&self) -> Result<(Vec<String>, Vec<(Partition, i64)>), Error> {
        let mut behind = Vec::new();
        let (pending, positions) = {
            let mut conn = self.pool.get().await.map_err(pool_error)?;
            (conn.pending().await?, conn.positions().await?)
        };
        if pending > 0 {
            behind.push(format!("{pending} messages in the outbox"));
        }
        let stored: HashMap<(String, String, i32), i64> =
            positions.into_iter().map(|(g, t, p, next)| ((g, t, p), next)).collect();
        let brokers = self.kafka.bootstrap_servers().to_owned();
        let topics = self.topics();
        let ends = tokio::task::spawn_blocking(move || log_ends(&brokers, &topics))
            .await
            .map_err(|e| fail(ErrorKind::Kafka, "harness: the watermark read panicked", e))??;
        for r in &self.inboxes {
            for ((topic, partition), end) in ends.iter().filter(|((t, _), _)| r.topics.contains(&t.as_str())) {
                let at = stored.get(&(r.group.clone(), topic.clone(), *partition)).copied().unwrap_or(0);
                if at < *end {
                    behind.push(format!("`{}` at {at} of {end} on {topic}/{partition}", r.group));
                }
            }
        }
        Ok((behind, ends))
    }

    /// Sleeps one poll interval, or fails: past `deadline` (with `what`), or when the relay or
    /// an inbox has stopped (with its error).
    async fn pause(&mut self, deadline: tokio::time::Instant, what: impl FnOnce() -> String) -> Result<(), Error> {
        if let Some(stopped) = self.stopped().await {
            return Err(stopped);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(plain(ErrorKind::Timeout, format!("harness: timed out: {}", what())));
        }
        tokio::time::sleep(POLL).await;
        Ok(())
    }

    /// The error of the first task that has ended (they run until shutdown); a task's panic
    /// is resumed here, in the test.
    async fn stopped(&mut self) -> Option<Error> {
        if let Some(i) = self.inboxes.iter().position(|r| r.task.is_finished()) {
            let r = self.inboxes.remove(i);
            return Some(stopped(format!("the inbox of `{}`", r.group), joined(r.task.await)));
        }
        if let Some(task) = self.relay.take_if(|t| t.is_finished()) {
            return Some(stopped("the relay".to_owned(), joined(task.await)));
        }
        None
    }
}

/// The error for a task that ended before shutdown: its own error's kind, with who stopped.
fn stopped(who: String, result: Result<(), Error>) -> Error {
    match result {
        Ok(()) => plain(ErrorKind::Config, format!("harness: {who} stopped before shutdown without an error")),
        Err(e) => Error::other(e.kind(), format!("harness: {who} stopped: {e}"), Some(Box::new(e))),
    }
}
