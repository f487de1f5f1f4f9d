//! The seeded generative relay suite (tests/relay_generative.rs): settings from the environment,
//! one random case (workload, relay settings, fault schedule) per case seed, the writers, and the
//! per-backend operations the suite needs. The oracle and the topic reader are in
//! [`crate::relay_gen_oracle`].
//!
//! A seed reproduces every random choice: the workload (keys, transactions, hold times,
//! rollbacks), the relay settings and the fault schedule (which faults, when, for how long).
//! It does not reproduce timing: how the writers' commits interleave with the relay's claims,
//! which batch a fault hits, and which backoff delay librdkafka or the relay draw. A seed that
//! failed once makes the same case again, which usually, not always, fails the same way.
//!
//! The relay's producer runs with `max.in.flight.requests.per.connection=1` here: with more
//! requests in flight, an injected not-persisted error (LEADER_NOT_AVAILABLE,
//! UNKNOWN_PRODUCER_ID, ...) followed by a success of the next batch of the partition makes
//! librdkafka ack the failed batch implicitly; a real broker would have rejected the next batch
//! (sequence gap), but the mock cluster validates sequences only for transactional producers,
//! so the failed messages are acked and never written. That is a mock artifact, not a relay
//! defect, and the single in-flight request rules it out (at the price of not covering
//! pipelined Produce requests).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::types::RDKafkaRespErr as E;
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::relay_support::Happened;
use crate::{Backend, TestDb};

/// `RELAY_GEN_SEED` (decimal or 0x-hex; else random), `RELAY_GEN_CASES`, `RELAY_GEN_ONLY`,
/// `RELAY_GEN_REPEAT`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub seed: u64,
    pub cases: u32,
    /// Run only this case index (to replay one failing case).
    pub only: Option<u32>,
    /// Run each case this many times (`RELAY_GEN_REPEAT`, default 1): a replay reproduces the
    /// schedule, not the timing, so a timing-dependent failure may take a few runs.
    pub repeat: u32,
    pub backend: &'static str,
}

/// Cases per backend when `RELAY_GEN_CASES` is not set. A passing case takes 3 to 25 s, so
/// about a minute per backend; a case that cannot drain takes its 120 s deadline.
pub const DEFAULT_CASES: u32 = 8;

impl Settings {
    pub fn from_env(backend: &'static str) -> Self {
        let seed = match std::env::var("RELAY_GEN_SEED") {
            Ok(s) if !s.trim().is_empty() => {
                let s = s.trim();
                match s.strip_prefix("0x") {
                    Some(hex) => u64::from_str_radix(hex, 16),
                    None => s.parse(),
                }
                .unwrap_or_else(|e| panic!("RELAY_GEN_SEED={s:?} is not a u64: {e}"))
            }
            _ => rand::rng().random(),
        };
        let num = |name: &str| std::env::var(name).ok().map(|v| v.parse::<u32>().expect(name));
        let settings = Settings {
            seed,
            cases: num("RELAY_GEN_CASES").unwrap_or(DEFAULT_CASES),
            only: num("RELAY_GEN_ONLY"),
            repeat: num("RELAY_GEN_REPEAT").unwrap_or(1).max(1),
            backend,
        };
        println!(
            "relay_generative[{backend}]: seed {seed}, {} cases; replay with:\n  {}",
            settings.cases,
            settings.replay(None)
        );
        settings
    }

    /// The command that replays this run (or one case of it).
    pub fn replay(&self, case: Option<u32>) -> String {
        // One case: a few repeats, since the timing (not the schedule) decides some failures.
        let only = case.map(|c| format!(" RELAY_GEN_ONLY={c} RELAY_GEN_REPEAT=5")).unwrap_or_default();
        format!(
            "RELAY_GEN_SEED={} RELAY_GEN_CASES={}{only} cargo nextest run -p tests --all-features \
             --test relay_generative {}::generative --no-capture",
            self.seed, self.cases, self.backend
        )
    }

    /// The seed of case `i`, derived from the run's seed (splitmix64).
    pub fn case_seed(&self, i: u32) -> u64 {
        let mut z = self.seed.wrapping_add(u64::from(i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The fault classes the schedule draws from (and the totals count).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultClass {
    /// Produce errors librdkafka retries internally (until `message.timeout.ms`).
    Retriable,
    /// Produce errors that fail the messages at once (the relay parks record errors).
    Permanent,
    /// Errors of the idempotent producer: fatal (producer recreated) or an epoch bump.
    Idempotence,
    /// Every broker down for longer than `message.timeout.ms`.
    Outage,
    /// A relay task killed (no lease release) and restarted after more than its lease.
    Kill,
    /// `ops` retry / discard of parked rows while the relay runs.
    Ops,
}

#[derive(Debug, Clone)]
pub enum Fault {
    ProduceErrors { class: FaultClass, code: E, count: usize },
    Outage { ms: u64 },
    Kill { relay: usize, restart_after_ms: u64 },
    Ops,
}

impl Fault {
    pub fn class(&self) -> FaultClass {
        match self {
            Fault::ProduceErrors { class, .. } => *class,
            Fault::Outage { .. } => FaultClass::Outage,
            Fault::Kill { .. } => FaultClass::Kill,
            Fault::Ops => FaultClass::Ops,
        }
    }
}

const RETRIABLE: &[E] = &[
    E::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
    E::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND,
    E::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
    E::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
    E::RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE,
    E::RD_KAFKA_RESP_ERR_KAFKA_STORAGE_ERROR,
];
/// Record errors the relay parks at once, and non-retriable errors it retries with backoff.
const PERMANENT: &[E] = &[
    E::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE,
    E::RD_KAFKA_RESP_ERR_INVALID_RECORD,
    E::RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE,
    E::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
];
/// librdkafka (rdkafka_request.c, idempotent Produce error handling): OUT_OF_ORDER_SEQUENCE_NUMBER
/// for the next expected batch raises a fatal error (for a later one it drains and bumps the
/// epoch); UNKNOWN_PRODUCER_ID bumps the epoch and retries when nothing was retried yet, else is
/// fatal; INVALID_PRODUCER_EPOCH is a permanent, not-persisted error.
const IDEMPOTENCE: &[E] =
    &[E::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER, E::RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH];

/// One random case: workload, relay settings, fault schedule.
#[derive(Debug, Clone)]
pub struct Case {
    pub keys: usize,
    pub writers: usize,
    pub txs_per_writer: u32,
    pub max_tx: usize,
    pub max_hold_ms: u64,
    pub rollback_pct: u32,
    /// A writer's pause between transactions: 0 to this, so the writes span the fault schedule.
    pub max_pause_ms: u64,
    pub partitions: i32,
    pub batch_size: usize,
    pub pool_size: u32,
    pub relays: usize,
    pub lease_ms: u64,
    pub message_timeout_ms: u64,
    pub max_attempts: u32,
    pub backoff_ms: (u64, u64),
    /// PostgreSQL: the NOTIFY trigger on (the relay then LISTENs on a pooled connection).
    pub notify: bool,
    /// (pause before the fault in ms, fault)
    pub faults: Vec<(u64, Fault)>,
    pub writer_seeds: Vec<u64>,
    pub chaos_seed: u64,
}

impl Case {
    pub fn generate(seed: u64) -> Case {
        let mut r = StdRng::seed_from_u64(seed);
        let writers = r.random_range(2..=6);
        let relays = if r.random_bool(0.35) { 2 } else { 1 };
        let message_timeout_ms = r.random_range(300..=1000);
        let lease_ms = r.random_range(1000..=2000);
        let batch_size = match r.random_range(0..10) {
            0 => 1,
            1..=2 => r.random_range(2..=10),
            3..=5 => r.random_range(11..=100),
            _ => r.random_range(101..=500),
        };
        let base = [20, 100, 300, 500][r.random_range(0..4)];
        let mut faults = Vec::new();
        for _ in 0..r.random_range(2..=7) {
            let gap = r.random_range(50..=700);
            let fault = match r.random_range(0..100) {
                0..=29 => Fault::ProduceErrors {
                    class: FaultClass::Retriable,
                    code: RETRIABLE[r.random_range(0..RETRIABLE.len())],
                    count: r.random_range(1..=40),
                },
                30..=44 => Fault::ProduceErrors {
                    class: FaultClass::Permanent,
                    code: PERMANENT[r.random_range(0..PERMANENT.len())],
                    count: r.random_range(1..=3),
                },
                // A broker that answers one request of a producer session with a sequence or
                // epoch error answers every later request of that session the same way, until
                // the producer re-initialises. The mock fails only the requests it is told to,
                // so a run of them stands for that session: with one or two, the mock accepted
                // the very next request of the same session (which no broker does), and that
                // later record of the key was acknowledged before the failed one was resent.
                45..=54 => Fault::ProduceErrors {
                    class: FaultClass::Idempotence,
                    code: IDEMPOTENCE[r.random_range(0..IDEMPOTENCE.len())],
                    count: r.random_range(10..=30),
                },
                55..=79 => Fault::Outage { ms: message_timeout_ms + r.random_range(100..=1200) },
                80..=89 => Fault::Kill {
                    relay: r.random_range(0..relays),
                    restart_after_ms: lease_ms + r.random_range(100..=800),
                },
                _ => Fault::Ops,
            };
            faults.push((gap, fault));
        }
        let schedule_ms: u64 = faults
            .iter()
            .map(|(gap, f)| {
                gap + match f {
                    Fault::Outage { ms } => *ms,
                    Fault::Kill { restart_after_ms, .. } => *restart_after_ms,
                    _ => 0,
                }
            })
            .sum();
        let txs_per_writer = r.random_range(5..=25);
        Case {
            keys: r.random_range(1..=20),
            writers,
            txs_per_writer,
            max_pause_ms: 2 * schedule_ms / u64::from(txs_per_writer),
            max_tx: r.random_range(1..=20),
            max_hold_ms: r.random_range(0..=30),
            rollback_pct: r.random_range(10..=20),
            partitions: r.random_range(1..=4),
            batch_size,
            pool_size: if r.random_bool(0.3) { 1 } else { r.random_range(2..=4) },
            relays,
            lease_ms,
            message_timeout_ms,
            max_attempts: if r.random_bool(0.5) { r.random_range(1..=3) } else { 12 },
            backoff_ms: (base, base * r.random_range(4..=10)),
            notify: r.random_bool(0.2),
            faults,
            writer_seeds: (0..writers).map(|_| r.random()).collect(),
            chaos_seed: r.random(),
        }
    }

    /// The case's settings on one line.
    pub fn describe(&self) -> String {
        let mut by_class: BTreeMap<FaultClass, usize> = BTreeMap::new();
        for (_, f) in &self.faults {
            *by_class.entry(f.class()).or_default() += 1;
        }
        format!(
            "keys={} writers={} txs/writer={} tx<={} hold<={}ms rollback={}% pause<={}ms partitions={} batch={} pool={} \
             relays={} lease={}ms timeout={}ms max_attempts={} backoff={:?}ms notify={} faults={by_class:?}",
            self.keys,
            self.writers,
            self.txs_per_writer,
            self.max_tx,
            self.max_hold_ms,
            self.rollback_pct,
            self.max_pause_ms,
            self.partitions,
            self.batch_size,
            self.pool_size,
            self.relays,
            self.lease_ms,
            self.message_timeout_ms,
            self.max_attempts,
            self.backoff_ms,
            self.notify
        )
    }
}

/// What the writers wrote: each committed id's key and per-key sequence number, and the ids of
/// rolled-back transactions.
#[derive(Debug, Default)]
pub struct Written {
    pub committed: HashMap<Uuid, (String, u64)>,
    pub rolled_back: HashSet<Uuid>,
}

enum TxError {
    Rollback(Vec<Uuid>),
    Db(outbox::Error),
}

impl From<diesel::result::Error> for TxError {
    fn from(e: diesel::result::Error) -> Self {
        TxError::Db(e.into())
    }
}

/// Runs the case's writers concurrently. Per-key order is defined by a per-key lock held across
/// each transaction (taken in key order, so no deadlock): a key's sequence numbers `n` increase
/// in commit order, and within a transaction in insert order. Rolled-back numbers leave gaps.
pub async fn write<B: Backend>(db: &TestDb<B>, case: &Case) -> Result<Written, String> {
    let locks: Arc<Vec<Arc<Mutex<u64>>>> = Arc::new((0..case.keys).map(|_| Arc::new(Mutex::new(0))).collect());
    let mut tasks = Vec::new();
    for (w, &seed) in case.writer_seeds.iter().enumerate() {
        let (url, locks, case) = (db.url.clone(), locks.clone(), case.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut conn = B::connect(&url).await;
            let mut out = Written::default();
            for _ in 0..case.txs_per_writer {
                let size = rng.random_range(1..=case.max_tx);
                let keys: Vec<usize> = (0..size).map(|_| rng.random_range(0..case.keys)).collect();
                let hold = rng.random_range(0..=case.max_hold_ms);
                let rollback = rng.random_range(0..100) < case.rollback_pct;
                // Part of the workload: spreads the writes over the fault schedule.
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..=case.max_pause_ms))).await;
                let mut locked: Vec<usize> = keys.clone();
                locked.sort_unstable();
                locked.dedup();
                let mut guards = HashMap::new();
                for &k in &locked {
                    guards.insert(k, locks[k].clone().lock_owned().await);
                }
                let events: Vec<Happened> = keys
                    .iter()
                    .map(|&k| {
                        let n = guards.get_mut(&k).expect("locked");
                        **n += 1;
                        Happened::new(format!("k{k}"), **n)
                    })
                    .collect();
                let result = outbox::transaction(&mut conn, async |tx| {
                    let mut ids = Vec::with_capacity(events.len());
                    for e in &events {
                        ids.push(outbox::publish(tx, e).await.map_err(TxError::Db)?);
                    }
                    // The hold time is part of the workload: other writers' commits overtake.
                    tokio::time::sleep(Duration::from_millis(hold)).await;
                    if rollback { Err(TxError::Rollback(ids)) } else { Ok(ids) }
                })
                .await;
                drop(guards);
                match result {
                    Ok(ids) => {
                        for (id, e) in ids.into_iter().zip(events) {
                            out.committed.insert(id, (e.key, e.n));
                        }
                    }
                    Err(TxError::Rollback(ids)) => out.rolled_back.extend(ids),
                    Err(TxError::Db(e)) => return Err(format!("writer {w}: transaction failed: {e}")),
                }
            }
            Ok(out)
        }));
    }
    let mut all = Written::default();
    for t in tasks {
        let w = t.await.map_err(|e| format!("writer task panicked: {e}"))??;
        all.committed.extend(w.committed);
        all.rolled_back.extend(w.rolled_back);
    }
    Ok(all)
}
