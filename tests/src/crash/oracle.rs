//! The oracle: what must hold at the end of every crash scenario, whatever was killed.
//!
//! - a message is stored iff its business transaction committed (ledger ↔ business rows);
//! - every committed message is on the topic; no rolled-back or unknown message is;
//! - per key, first occurrences on the topic are in write order (duplicates allowed, counted);
//! - per consumer group, every committed message has exactly one effect, no other message has
//!   any, and per key the effects are exactly the committed subsequence, in order (no gaps);
//! - nothing is left unpublished, parked or dead-lettered.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Integer, Nullable, Text, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::{TOPIC, TopicRecord};
use crate::TestDb;

#[derive(Debug, QueryableByName)]
struct LedgerRow {
    #[diesel(sql_type = BigInt)]
    order_id: i64,
    #[diesel(sql_type = Text)]
    key: String,
    #[diesel(sql_type = BigInt)]
    seq: i64,
    #[diesel(sql_type = SqlUuid)]
    message_id: Uuid,
    #[diesel(sql_type = Text)]
    outcome: String,
    #[diesel(sql_type = Text)]
    how: String,
    #[diesel(sql_type = Text)]
    written_at: String,
}

/// An outbox row kept after sending (relays with `CRASH_KEEP_SENT`), for diagnostics.
#[derive(Debug, QueryableByName)]
struct Kept {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = BigInt)]
    seq: i64,
    #[diesel(sql_type = Nullable<Text>)]
    sent_at: Option<String>,
}

#[derive(Debug, QueryableByName)]
struct EffectRow {
    #[diesel(sql_type = SqlUuid)]
    message_id: Uuid,
    #[diesel(sql_type = Text)]
    key: String,
    #[diesel(sql_type = BigInt)]
    seq: i64,
}

#[derive(Debug, QueryableByName)]
struct Id {
    #[diesel(sql_type = BigInt)]
    order_id: i64,
}

#[derive(Debug, QueryableByName)]
struct Position {
    #[diesel(sql_type = Integer)]
    kafka_partition: i32,
    #[diesel(sql_type = BigInt)]
    next_offset: i64,
}

#[derive(Debug, QueryableByName)]
struct Leftover {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = Nullable<Text>)]
    last_error: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    parked: bool,
}

#[derive(Debug, QueryableByName)]
struct DeadLetter {
    #[diesel(sql_type = Nullable<SqlUuid>)]
    message_id: Option<Uuid>,
    #[diesel(sql_type = Text)]
    reason: String,
    #[diesel(sql_type = Text)]
    error: String,
}

/// What one consumer group did.
#[derive(Debug, Clone)]
pub struct GroupCounts {
    pub group: String,
    /// Dedup rows: messages the inbox recorded as handled.
    pub handled: i64,
    /// Effect rows the handler wrote.
    pub effects: usize,
    pub dead_letters: usize,
}

/// The counts of a scenario, and every violation the oracle found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub committed: usize,
    /// Rolled-back orders by how they failed.
    pub rolled_back: BTreeMap<String, usize>,
    /// Records of this run on the topic.
    pub produced_total: usize,
    /// Distinct message ids among them.
    pub produced_distinct: usize,
    /// `produced_total - produced_distinct`: allowed (at-least-once), counted.
    pub duplicates: usize,
    /// Records of other runs (only on a shared broker), ignored.
    pub foreign: usize,
    pub groups: Vec<GroupCounts>,
    pub violations: Vec<String>,
}

impl Report {
    pub fn rolled_back_total(&self) -> usize {
        self.rolled_back.values().sum()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let how: Vec<String> = self.rolled_back.iter().map(|(k, v)| format!("{k} {v}")).collect();
        write!(
            f,
            "committed {}, rolled back {} ({}); produced {} distinct / {} records, {} duplicates on the topic",
            self.committed,
            self.rolled_back_total(),
            how.join(", "),
            self.produced_distinct,
            self.produced_total,
            self.duplicates
        )?;
        if self.foreign > 0 {
            write!(f, " ({} records of other runs ignored)", self.foreign)?;
        }
        for g in &self.groups {
            write!(f, "; group {}: handled {}, effects {}", g.group, g.handled, g.effects)?;
            if g.dead_letters > 0 {
                write!(f, ", dead letters {}", g.dead_letters)?;
            }
        }
        Ok(())
    }
}

/// Collects violations, keeping a few examples of each kind.
#[derive(Default)]
struct Violations {
    kinds: BTreeMap<&'static str, (usize, Vec<String>)>,
}

impl Violations {
    fn add(&mut self, kind: &'static str, example: impl FnOnce() -> String) {
        let entry = self.kinds.entry(kind).or_default();
        entry.0 += 1;
        if entry.1.len() < 5 {
            entry.1.push(example());
        }
    }

    fn into_lines(self) -> Vec<String> {
        self.kinds.into_iter().map(|(kind, (n, ex))| format!("{kind}: {n}, e.g. {}", ex.join("; "))).collect()
    }
}

async fn load<T: QueryableByName<diesel::pg::Pg> + Send + 'static>(db: &TestDb, sql: &str) -> Vec<T> {
    let mut conn = db.conn().await;
    diesel::sql_query(sql).load(&mut conn).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Whether `group`'s stored positions reached `ends` on every partition.
pub(crate) async fn caught_up(db: &TestDb, group: &str, ends: &BTreeMap<i32, i64>) -> bool {
    let rows: Vec<Position> = load(
        db,
        &format!(
            "SELECT kafka_partition, next_offset FROM inbox_offsets WHERE consumer_group = '{group}' AND topic = '{TOPIC}'"
        ),
    )
    .await;
    let at: HashMap<i32, i64> = rows.into_iter().map(|p| (p.kafka_partition, p.next_offset)).collect();
    ends.iter().all(|(p, end)| at.get(p).copied().unwrap_or(0) >= *end)
}

pub(crate) async fn check(db: &TestDb, run: &str, groups: &[String], records: &[TopicRecord]) -> Report {
    let mut v = Violations::default();
    let mut report = Report::default();
    let ledger: Vec<LedgerRow> = load(
        db,
        "SELECT order_id, key, seq, message_id, outcome, how, to_char(written_at, 'HH24:MI:SS.US') AS written_at \
         FROM crash_ledger ORDER BY order_id",
    )
    .await;
    let kept: HashMap<Uuid, Kept> =
        load::<Kept>(db, "SELECT id, seq, to_char(sent_at, 'HH24:MI:SS.US') AS sent_at FROM outbox_messages")
            .await
            .into_iter()
            .map(|k| (k.id, k))
            .collect();
    // What is known about a message beyond the topic: when it committed, and (kept rows only)
    // its outbox seq and when the relay marked it sent.
    let describe = |r: &LedgerRow| match kept.get(&r.message_id) {
        Some(k) => format!(
            "seq {} committed {} (outbox seq {}, sent {})",
            r.seq,
            r.written_at,
            k.seq,
            k.sent_at.as_deref().unwrap_or("-")
        ),
        None => format!("seq {} committed {}", r.seq, r.written_at),
    };
    let business: HashSet<i64> =
        load::<Id>(db, "SELECT order_id FROM crash_orders").await.into_iter().map(|r| r.order_id).collect();
    let by_id: HashMap<Uuid, &LedgerRow> = ledger.iter().map(|r| (r.message_id, r)).collect();
    // Per key, the seqs of its committed orders, ascending: what each group must have applied.
    let mut committed_per_key: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    let mut ledger_ids = HashSet::new();
    for r in &ledger {
        ledger_ids.insert(r.order_id);
        if r.outcome == "committed" {
            report.committed += 1;
            committed_per_key.entry(&r.key).or_default().push(r.seq);
            if !business.contains(&r.order_id) {
                v.add("committed order without its business row", || format!("order {}", r.order_id));
            }
        } else {
            *report.rolled_back.entry(r.how.clone()).or_default() += 1;
            if business.contains(&r.order_id) {
                v.add("rolled-back order has a business row", || format!("order {} ({})", r.order_id, r.how));
            }
        }
    }
    for seqs in committed_per_key.values_mut() {
        seqs.sort_unstable();
    }
    for id in business.iter().filter(|id| !ledger_ids.contains(id)) {
        v.add("business row without a ledger row", || format!("order {id}"));
    }

    // The outbox must be empty: everything published (delete mode), nothing parked.
    let leftovers: Vec<Leftover> =
        load(db, "SELECT id, last_error, parked_at IS NOT NULL AS parked FROM outbox_messages WHERE sent_at IS NULL")
            .await;
    for l in &leftovers {
        let what = match by_id.get(&l.id) {
            Some(r) if r.outcome != "committed" => "a rolled-back message is in the outbox",
            _ if l.parked => "message parked instead of published",
            _ => "message still unpublished at the end",
        };
        v.add(what, || format!("{} (last error: {:?})", l.id, l.last_error));
    }

    // The topic.
    let mut sorted: Vec<&TopicRecord> = records.iter().collect();
    sorted.sort_by_key(|r| (r.partition, r.offset));
    let mut seen: HashMap<Uuid, usize> = HashMap::new();
    // Per key, the last first occurrence: (ledger row, offset).
    let mut last_per_key: HashMap<String, (&LedgerRow, i64)> = HashMap::new();
    for r in sorted {
        let (Some(id), Some(order)) = (r.id, r.order.as_ref()) else {
            v.add("record without a valid ce_id or payload", || {
                format!("partition {} offset {}", r.partition, r.offset)
            });
            continue;
        };
        if order.run != run {
            report.foreign += 1;
            continue;
        }
        report.produced_total += 1;
        let Some(row) = by_id.get(&id) else {
            v.add("message on the topic that no writer wrote", || format!("{id} at {}:{}", r.partition, r.offset));
            continue;
        };
        if row.outcome != "committed" {
            v.add("rolled-back message produced", || format!("{id} (order {}, {})", row.order_id, row.how));
        }
        if (order.order_id, order.seq, &order.key) != (row.order_id, row.seq, &row.key)
            || r.key.as_deref() != Some(&row.key)
        {
            v.add("record does not match what was written", || format!("{id}: {order:?} / key {:?}", r.key));
        }
        let n = seen.entry(id).or_insert(0);
        *n += 1;
        if *n > 1 {
            continue; // a duplicate: allowed, counted
        }
        if let Some((prev, prev_offset)) = last_per_key.insert(row.key.clone(), (row, r.offset))
            && prev.seq >= row.seq
        {
            v.add("per-key order broken on the topic", || {
                format!(
                    "key {} partition {}: {} at offset {} first seen after {} at offset {prev_offset}",
                    row.key,
                    r.partition,
                    describe(row),
                    r.offset,
                    describe(prev)
                )
            });
        }
    }
    report.produced_distinct = seen.len();
    report.duplicates = report.produced_total - report.produced_distinct;
    for r in ledger.iter().filter(|r| r.outcome == "committed" && !seen.contains_key(&r.message_id)) {
        v.add("committed message never reached the topic", || format!("{} (order {})", r.message_id, r.order_id));
    }

    // Each consumer group.
    for group in groups {
        let effects: Vec<EffectRow> = load(
            db,
            &format!("SELECT message_id, key, seq FROM crash_effects WHERE consumer_group = '{group}' ORDER BY id"),
        )
        .await;
        let mut count: HashMap<Uuid, usize> = HashMap::new();
        let mut applied_per_key: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
        for e in &effects {
            *count.entry(e.message_id).or_insert(0) += 1;
            applied_per_key.entry(&e.key).or_default().push(e.seq);
            match by_id.get(&e.message_id) {
                None => v.add("effect of a message no writer wrote", || format!("{group}: {}", e.message_id)),
                Some(r) if r.outcome != "committed" => {
                    v.add("effect of a rolled-back message", || format!("{group}: order {}", r.order_id))
                }
                Some(_) => {}
            }
        }
        for (id, n) in count.iter().filter(|(_, n)| **n > 1) {
            v.add("message took effect more than once in a group", || format!("{group}: {id} {n} times"));
        }
        for r in ledger.iter().filter(|r| r.outcome == "committed" && !count.contains_key(&r.message_id)) {
            v.add("committed message never handled", || format!("{group}: {} (order {})", r.message_id, r.order_id));
        }
        for (key, want) in &committed_per_key {
            let got = applied_per_key.get(key).map(Vec::as_slice).unwrap_or_default();
            if got != want.as_slice() {
                let at = got.iter().zip(want).position(|(g, w)| g != w).unwrap_or(got.len().min(want.len()));
                v.add("per-key effects are not the committed sequence in order", || {
                    format!(
                        "{group} key {key}: from position {at} applied {:?}, committed {:?}",
                        &got[at..got.len().min(at + 5)],
                        &want[at..want.len().min(at + 5)]
                    )
                });
            }
        }
        let handled =
            db.count(&format!("SELECT count(*) AS n FROM inbox_messages WHERE consumer_group = '{group}'")).await;
        let dead: Vec<DeadLetter> = load(
            db,
            &format!("SELECT message_id, reason, error FROM inbox_dead_letters WHERE consumer_group = '{group}'"),
        )
        .await;
        for d in &dead {
            v.add("message dead-lettered", || format!("{group}: {:?} {}: {}", d.message_id, d.reason, d.error));
        }
        report.groups.push(GroupCounts {
            group: group.strip_prefix(&format!("{run}-")).unwrap_or(group).to_owned(),
            handled,
            effects: effects.len(),
            dead_letters: dead.len(),
        });
    }
    report.violations = v.into_lines();
    report
}
