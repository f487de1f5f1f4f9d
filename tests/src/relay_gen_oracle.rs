//! The generative relay suite's oracle: reads a topic back to its end and checks it against
//! what the writers committed (see [`crate::relay_gen`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use uuid::Uuid;

use crate::kafka::Record;
use crate::relay_gen::Written;

/// Reads every partition of `topic` from its low to its high watermark (taken first): once
/// the outbox is drained, every acknowledged record is below the high watermark.
pub async fn read_to_end(
    brokers: &str,
    topic: &str,
    partitions: i32,
    timeout: Duration,
) -> Result<Vec<Record>, String> {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", format!("gen-reader-{}", Uuid::now_v7()))
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|e| format!("reader consumer: {e}"))?;
        let mut next = Vec::new();
        let mut high = Vec::new();
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            let (lo, hi) = consumer
                .fetch_watermarks(&topic, p, Duration::from_secs(10))
                .map_err(|e| format!("watermarks of partition {p}: {e}"))?;
            next.push(lo);
            high.push(hi);
            tpl.add_partition_offset(&topic, p, Offset::Offset(lo)).map_err(|e| e.to_string())?;
        }
        consumer.assign(&tpl).map_err(|e| format!("assign: {e}"))?;
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while (0..partitions as usize).any(|p| next[p] < high[p]) {
            if Instant::now() >= deadline {
                return Err(format!("topic not read to its end within {timeout:?}: at {next:?}, end {high:?}"));
            }
            let Some(m) = consumer.poll(Duration::from_millis(100)) else { continue };
            let m = m.map_err(|e| format!("reader: {e}"))?;
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_owned(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned()))
                        .collect()
                })
                .unwrap_or_default();
            next[m.partition() as usize] = m.offset() + 1;
            out.push(Record {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                payload: Vec::new(),
                headers,
            });
        }
        Ok(out)
    })
    .await
    .map_err(|e| format!("reader thread: {e}"))?
}

/// What one case's topic held.
#[derive(Debug, Default, Clone, Copy)]
pub struct Checked {
    pub records: usize,
    pub distinct: usize,
    pub duplicates: usize,
    /// Discarded ids that had reached the topic anyway (an earlier "maybe sent" attempt).
    pub discarded_present: usize,
}

/// The oracle. Every committed id that was not discarded is on the topic; no rolled-back or
/// unknown id is; each key lives in one partition; and per key, the first occurrences (in
/// offset order) have increasing per-key sequence numbers, i.e. are in commit order.
/// Duplicates are allowed (at-least-once) and counted. Returns every violation found.
pub fn check(written: &Written, discarded: &HashSet<Uuid>, records: &[Record]) -> Result<Checked, Vec<String>> {
    let mut violations = Vec::new();
    let mut sorted: Vec<&Record> = records.iter().collect();
    sorted.sort_by_key(|r| (r.partition, r.offset));
    let mut seen: HashSet<Uuid> = HashSet::new();
    // key -> (last first-seen n, its id, partition, offset)
    let mut last: HashMap<&str, (u64, Uuid, i32, i64)> = HashMap::new();
    let mut partition_of: BTreeMap<String, i32> = BTreeMap::new();
    let mut order_violations = 0usize;
    for r in sorted {
        let Some(id) = r.header("ce_id").and_then(|s| s.parse::<Uuid>().ok()) else {
            violations.push(format!("record p{}@{} has no valid ce_id header", r.partition, r.offset));
            continue;
        };
        if written.rolled_back.contains(&id) {
            violations.push(format!("rolled-back id {id} is on the topic at p{}@{}", r.partition, r.offset));
            continue;
        }
        let Some((key, n)) = written.committed.get(&id) else {
            violations.push(format!("unknown id {id} on the topic at p{}@{}", r.partition, r.offset));
            continue;
        };
        if r.key.as_deref() != Some(key.as_str()) {
            violations.push(format!("id {id} was written with key {key} but carries key {:?}", r.key));
        }
        if let Some(&p) = partition_of.get(key)
            && p != r.partition
        {
            violations.push(format!("key {key} is in partitions {p} and {} (id {id})", r.partition));
        }
        partition_of.insert(key.clone(), r.partition);
        if !seen.insert(id) {
            continue; // a duplicate: allowed, counted
        }
        if let Some(&(prev, prev_id, pp, po)) = last.get(key.as_str())
            && prev > *n
        {
            order_violations += 1;
            if order_violations <= 5 {
                violations.push(format!(
                    "per-key order violation: key {key}: #{n} (id {id}) first seen at p{}@{}, after #{prev} \
                     (id {prev_id}, p{pp}@{po}), which was committed later",
                    r.partition, r.offset
                ));
            }
        }
        let entry = last.entry(key.as_str()).or_insert((*n, id, r.partition, r.offset));
        if *n >= entry.0 {
            *entry = (*n, id, r.partition, r.offset);
        }
    }
    if order_violations > 5 {
        violations.push(format!("... {order_violations} per-key order violations in all"));
    }
    let mut missing: Vec<(&String, u64, Uuid)> = written
        .committed
        .iter()
        .filter(|(id, _)| !seen.contains(id) && !discarded.contains(id))
        .map(|(id, (k, n))| (k, *n, *id))
        .collect();
    if !missing.is_empty() {
        missing.sort();
        violations.push(format!(
            "{} committed, not discarded ids never reached the topic, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        ));
    }
    if !violations.is_empty() {
        return Err(violations);
    }
    Ok(Checked {
        records: records.len(),
        distinct: seen.len(),
        duplicates: records.len() - seen.len(),
        discarded_present: discarded.iter().filter(|id| seen.contains(id)).count(),
    })
}
