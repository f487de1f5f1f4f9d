//! Shared pieces of the inbox suites that check what a dead letter stores and how far a
//! consumer got: running an inbox until its stored positions reach a target, reading dead
//! letters with their raw headers, and decoding the documented raw-header encoding (an
//! implementation of its own, so the suites check the format, not the SDK's decoder).

use std::time::Duration;

use inbox::Inbox;
use tokio_util::sync::CancellationToken;

use crate::produce::wait_for_count;
use crate::raw::RawHeader;
use crate::{Backend, TestConn, TestDb};

/// Sum of `group`'s stored next offsets, as a one-value query.
pub fn positions_sql(group: &str) -> String {
    format!(
        "SELECT CAST(coalesce(sum(next_offset), 0) AS BIGINT) AS n FROM inbox_offsets WHERE consumer_group = '{group}'"
    )
}

/// Runs `inboxes` until the sum of each one's stored positions reaches its target (or
/// `timeout`), then shuts them down. Returns the sums reached, in order. A panic inside
/// `Inbox::run` fails the calling test with the panic's message.
pub async fn run_until_positions<B: Backend>(
    db: &TestDb<B>,
    inboxes: Vec<(Inbox<B::Conn>, i64)>,
    timeout: Duration,
) -> Vec<i64> {
    let shutdown = CancellationToken::new();
    let mut running = Vec::new();
    let mut targets = Vec::new();
    for (inbox, target) in inboxes {
        targets.push((inbox.group().to_owned(), target));
        running.push(tokio::spawn(inbox.run(shutdown.clone())));
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut reached = Vec::new();
    for (group, target) in &targets {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        reached.push(wait_for_count(db, &positions_sql(group), *target, left).await);
    }
    shutdown.cancel();
    for r in running {
        match r.await {
            Ok(result) => result.expect("Inbox::run returned an error"),
            Err(e) if e.is_panic() => {
                let panic = e.into_panic();
                let text = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                panic!("Inbox::run panicked: {text}");
            }
            Err(e) => panic!("Inbox::run task failed: {e}"),
        }
    }
    reached
}

/// One dead letter with everything the inbox stored about the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawDeadLetter {
    pub consumer_group: String,
    pub message_id: Option<String>,
    pub kafka_partition: i32,
    pub kafka_offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub raw_headers: Option<Vec<u8>>,
    pub reason: String,
    pub error: String,
}

/// Decodes the `raw_headers` column (format 1, see `outbox::raw_headers`): a version byte 1,
/// then per header a u32 big-endian key length, the key, a u32 big-endian value length
/// (0xFFFF_FFFF: no value) and the value. `None` when the bytes are not in that format.
pub fn decode_raw_headers(bytes: &[u8]) -> Option<Vec<RawHeader>> {
    let (&version, mut rest) = bytes.split_first()?;
    if version != 1 {
        return None;
    }
    let take = |n: usize, rest: &mut &[u8]| -> Option<Vec<u8>> {
        if rest.len() < n {
            return None;
        }
        let (a, b) = rest.split_at(n);
        *rest = b;
        Some(a.to_vec())
    };
    let mut out = Vec::new();
    while !rest.is_empty() {
        let len = u32::from_be_bytes(take(4, &mut rest)?.try_into().ok()?) as usize;
        let key = take(len, &mut rest)?;
        let vlen = u32::from_be_bytes(take(4, &mut rest)?.try_into().ok()?);
        let value = if vlen == u32::MAX { None } else { Some(take(vlen as usize, &mut rest)?) };
        out.push((key, value));
    }
    Some(out)
}

/// Every dead letter of `group`, in (partition, offset) order.
pub async fn raw_dead_letters<B: Backend>(db: &TestDb<B>, group: &str) -> Vec<RawDeadLetter> {
    db.conn().await.raw_dead_letters(group).await
}
