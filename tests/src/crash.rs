//! Crash-consistency harness: the writers, relays and consumers run as separate OS processes
//! (this crate's `crash_writer`, `crash_relay` and `crash_consumer` binaries) against a fresh
//! database and the test's Kafka cluster; a test kills them for real (SIGKILL, terminated
//! database sessions, broker faults) and then checks the end state with [`Harness::settle_and_check`].
//!
//! Every random choice comes from one seed, printed at the start and replayable with
//! `CRASH_SEED=<seed>`; `CRASH_SCALE=<n>` multiplies the sizes for long soak runs. See
//! `tests/CRASH.md`.

mod oracle;
mod process;
mod topic;

use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use diesel_async::SimpleAsyncConnection;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use oracle::{GroupCounts, Report};
pub use process::Proc;
pub use topic::TopicRecord;

use crate::{TestDb, TestKafka};

/// The topic every order is published to.
pub const TOPIC: &str = "crash.orders";
/// Partitions of [`TOPIC`]: several, so consumers of one group share them.
pub const PARTITIONS: i32 = 4;
/// The relay lease name all relay processes share (one publishes, the others stand by).
pub const LEASE: &str = "crash";

/// The event each order publishes. `run` names the test (its database), so that records of
/// other runs on a shared broker (`KAFKA_BROKERS`) are recognised and left alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, outbox::Event)]
#[event(topic = "crash.orders", name = "crash.order_placed", version = 1)]
pub struct OrderPlaced {
    #[event(key)]
    pub key: String,
    pub order_id: i64,
    /// Position of this order among all orders written for `key` (committed or not): 0, 1, 2, ...
    pub seq: i64,
    pub run: String,
}

/// The business tables of the test service, its ledger and the consumer's effects.
const SCHEMA: &str = "
CREATE TABLE crash_orders (
    order_id BIGINT PRIMARY KEY,
    key      TEXT   NOT NULL,
    seq      BIGINT NOT NULL
);
-- What each writer did. A committed order's row is written in the business transaction itself;
-- a rolled-back order's row is written after the rollback, outside it.
CREATE TABLE crash_ledger (
    order_id   BIGINT PRIMARY KEY,
    writer     INTEGER NOT NULL,
    key        TEXT    NOT NULL,
    seq        BIGINT  NOT NULL,
    message_id UUID    NOT NULL,
    outcome    TEXT    NOT NULL CHECK (outcome IN ('committed', 'rolled_back')),
    how        TEXT    NOT NULL,
    -- For a committed order: just before its COMMIT (for diagnosing order violations).
    written_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
-- The consumer's handler effect. No UNIQUE constraint on purpose: a second effect of one message
-- must be countable, not prevented. `id` gives the order in which effects were applied.
CREATE TABLE crash_effects (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consumer_group TEXT   NOT NULL,
    message_id     UUID   NOT NULL,
    order_id       BIGINT NOT NULL,
    key            TEXT   NOT NULL,
    seq            BIGINT NOT NULL,
    consumer       TEXT   NOT NULL
);";

/// Reads a configuration variable of a child process (or of the harness).
pub fn env_or<T: FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().unwrap_or_else(|_| panic!("{name}={v} is not a valid value")),
        _ => default,
    }
}

/// Logging of a child process: to its stderr (the harness sends it to a log file).
pub fn init_child_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(false).try_init();
}

/// A cancellation token cancelled by SIGTERM or SIGINT: how a child is stopped gracefully.
pub fn shutdown_on_sigterm() -> tokio_util::sync::CancellationToken {
    use tokio::signal::unix::{SignalKind, signal};
    let token = tokio_util::sync::CancellationToken::new();
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let t = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("stop signal received");
        t.cancel();
    });
    token
}

/// `url` with `application_name` set, so a test can find (and terminate) the sessions.
pub fn with_application_name(url: &str, name: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}application_name={name}")
}

/// Paths of the crash binaries; build with [`crash_bins!`](crate::crash_bins) in an integration test.
#[derive(Debug, Clone, Copy)]
pub struct Bins {
    pub writer: &'static str,
    pub relay: &'static str,
    pub consumer: &'static str,
}

/// The crash binaries of this package (`CARGO_BIN_EXE_*` exists only in integration tests).
#[macro_export]
macro_rules! crash_bins {
    () => {
        $crate::crash::Bins {
            writer: env!("CARGO_BIN_EXE_crash_writer"),
            relay: env!("CARGO_BIN_EXE_crash_relay"),
            consumer: env!("CARGO_BIN_EXE_crash_consumer"),
        }
    };
}

/// A group of writer processes.
#[derive(Debug, Clone, Copy)]
pub struct Writers {
    pub count: u32,
    /// Orders per writer (a writer stopped with SIGTERM writes fewer).
    pub orders_each: u64,
    /// Keys per writer; each writer has keys of its own.
    pub keys_each: u32,
    /// Share of transactions rolled back, in percent, spread over the three ways of failing.
    pub rollback_pct: u32,
    /// Orders per second per writer; `None`: as fast as it can.
    pub rate_each: Option<f64>,
}

/// One test's world: database, Kafka, the processes it started and its random source.
pub struct Harness {
    pub scenario: &'static str,
    pub db: TestDb,
    pub kafka: TestKafka,
    pub bins: Bins,
    /// Identifies the run in payloads and consumer group names: the database name.
    pub run: String,
    pub seed: u64,
    pub rng: StdRng,
    /// `CRASH_SCALE`, default 1.
    pub scale: f64,
    pub logs: PathBuf,
    /// Relays keep sent rows (`AfterSend::Keep`) instead of deleting them: the oracle then also
    /// shows each violating message's outbox seq and send time. `CRASH_KEEP_SENT=1`, or set it.
    pub keep_sent: bool,
    /// Extra librdkafka producer properties of the relays (`key=value,key=value`);
    /// `CRASH_RELAY_KAFKA`, or set it.
    pub relay_kafka: String,
    started: Instant,
    next_writer: u32,
    incarnations: std::collections::HashMap<String, u32>,
}

impl Harness {
    /// A fresh database with the outbox, inbox and test tables, and a Kafka cluster with [`TOPIC`].
    pub async fn new(scenario: &'static str, bins: Bins) -> Self {
        let seed = env_or("CRASH_SEED", rand::random::<u64>() >> 12);
        let scale: f64 = env_or("CRASH_SCALE", 1.0);
        assert!(scale > 0.0, "CRASH_SCALE must be positive");
        let db = TestDb::new().await;
        db.conn().await.batch_execute(SCHEMA).await.expect("create the crash test tables");
        let kafka = TestKafka::new();
        kafka.create_topic(TOPIC, PARTITIONS).await;
        let logs = std::env::temp_dir().join("outbox-crash").join(&db.name);
        std::fs::create_dir_all(&logs).expect("log directory");
        println!(
            "[{scenario}] seed {seed} (replay: CRASH_SEED={seed}), scale {scale}, database {}, kafka {}, logs {}",
            db.name,
            if kafka.mock().is_some() { "mock cluster" } else { "KAFKA_BROKERS" },
            logs.display()
        );
        Harness {
            scenario,
            run: db.name.clone(),
            db,
            kafka,
            bins,
            seed,
            rng: StdRng::seed_from_u64(seed),
            scale,
            logs,
            keep_sent: env_or("CRASH_KEEP_SENT", 0u8) == 1,
            relay_kafka: env_or("CRASH_RELAY_KAFKA", String::new()),
            started: Instant::now(),
            next_writer: 0,
            incarnations: Default::default(),
        }
    }

    /// `n` multiplied by `CRASH_SCALE` (at least 1).
    pub fn scaled(&self, n: u64) -> u64 {
        ((n as f64 * self.scale).round() as u64).max(1)
    }

    /// A random duration in `[lo_ms, hi_ms)`.
    pub fn random_ms(&mut self, lo_ms: u64, hi_ms: u64) -> Duration {
        Duration::from_millis(self.rng.random_range(lo_ms..hi_ms))
    }

    /// Seconds since the harness started, for log lines.
    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// The consumer group name of `label` in this run (unique, so a shared broker works too).
    pub fn group(&self, label: &str) -> String {
        format!("{}-{label}", self.run)
    }

    fn spawn(&mut self, bin: &'static str, slot: &str, envs: Vec<(&str, String)>) -> Proc {
        let n = self.incarnations.entry(slot.to_owned()).or_insert(0);
        *n += 1;
        let log = self.logs.join(format!("{slot}.{n}.log"));
        let mut all = vec![
            ("DATABASE_URL", with_application_name(&self.db.url, slot)),
            ("KAFKA_BROKERS", self.kafka.brokers().to_owned()),
            ("CRASH_RUN", self.run.clone()),
            ("CRASH_NAME", slot.to_owned()),
            ("RUST_LOG", std::env::var("CRASH_LOG").unwrap_or_else(|_| "info".into())),
        ];
        all.extend(envs);
        Proc::spawn(bin, slot, log, all)
    }

    /// Starts the writers of `plan`; each gets its own keys and a seed derived from the test's.
    pub fn spawn_writers(&mut self, plan: Writers) -> Vec<Proc> {
        (0..plan.count)
            .map(|_| {
                let w = self.next_writer;
                self.next_writer += 1;
                let seed = self.seed.wrapping_mul(6364136223846793005).wrapping_add(w as u64 + 1);
                let envs = vec![
                    ("CRASH_WRITER", w.to_string()),
                    ("CRASH_ORDERS", plan.orders_each.to_string()),
                    ("CRASH_KEYS", plan.keys_each.to_string()),
                    ("CRASH_ROLLBACK_PCT", plan.rollback_pct.to_string()),
                    ("CRASH_SEED", seed.to_string()),
                    ("CRASH_RATE", plan.rate_each.map(|r| r.to_string()).unwrap_or_default()),
                ];
                self.spawn(self.bins.writer, &format!("crash-writer-{w}"), envs)
            })
            .collect()
    }

    /// Starts a relay process in `slot` (e.g. `crash-relay-a`); all relays share [`LEASE`].
    pub fn spawn_relay(&mut self, slot: &str) -> Proc {
        let keep = if self.keep_sent { "1" } else { "" };
        let envs = vec![
            ("CRASH_LEASE", LEASE.to_owned()),
            ("CRASH_KEEP_SENT", keep.to_owned()),
            ("CRASH_RELAY_KAFKA", self.relay_kafka.clone()),
        ];
        self.spawn(self.bins.relay, slot, envs)
    }

    /// Starts a consumer process in `slot` (e.g. `crash-consumer-a`) for consumer group `group`.
    pub fn spawn_consumer(&mut self, slot: &str, group: &str) -> Proc {
        // The mock cluster accepts short sessions, so a killed consumer's partitions come back
        // quickly; but a session shorter than its initial rebalance delay (3 s) expires members
        // while they join. Real brokers refuse less than group.min.session.timeout.ms (6 s).
        let session_ms = if self.kafka.mock().is_some() { 3500 } else { 6000 };
        let envs = vec![("CRASH_GROUP", group.to_owned()), ("CRASH_SESSION_TIMEOUT_MS", session_ms.to_string())];
        self.spawn(self.bins.consumer, slot, envs)
    }

    /// The fencing epoch of the relay lease (0 before any relay took it).
    pub async fn lease_epoch(&self) -> i64 {
        self.db
            .count(&format!("SELECT COALESCE(max(epoch), 0) AS n FROM outbox_relay_leases WHERE name = '{LEASE}'"))
            .await
    }

    /// Effects recorded so far by `group`.
    pub async fn effects(&self, group: &str) -> i64 {
        self.db.count(&format!("SELECT count(*) AS n FROM crash_effects WHERE consumer_group = '{group}'")).await
    }

    /// Rows not yet published (neither sent nor parked).
    pub async fn backlog(&self) -> i64 {
        self.db.count("SELECT count(*) AS n FROM outbox_messages WHERE sent_at IS NULL AND parked_at IS NULL").await
    }

    /// Terminates the database sessions whose application_name starts with `prefix`.
    pub async fn terminate_sessions(&self, prefix: &str) -> i64 {
        self.db.terminate_backends(&format!("{prefix}%")).await
    }

    /// Sleeps `d` while checking that none of `procs` exited.
    pub async fn sleep_watching(&self, d: Duration, procs: &mut [&mut Proc]) {
        let deadline = Instant::now() + d;
        loop {
            for p in procs.iter_mut() {
                p.assert_running();
            }
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            tokio::time::sleep((deadline - now).min(Duration::from_millis(50))).await;
        }
    }

    /// Waits (watching `procs`) until a relay took the lease after `epoch`; returns the new epoch.
    pub async fn wait_new_lease(&self, epoch: i64, procs: &mut [&mut Proc]) -> i64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let now = self.lease_epoch().await;
            if now > epoch {
                return now;
            }
            assert!(Instant::now() < deadline, "no relay took the lease within 60 s");
            self.sleep_watching(Duration::from_millis(25), procs).await;
        }
    }

    /// Waits (watching `procs`) until `group` recorded more than `effects` effects.
    pub async fn wait_effects_above(&self, group: &str, effects: i64, procs: &mut [&mut Proc]) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.effects(group).await <= effects {
            assert!(Instant::now() < deadline, "group {group} handled nothing within 60 s");
            self.sleep_watching(Duration::from_millis(25), procs).await;
        }
    }

    /// The end of every scenario: lets the writers finish (`stop_writers`: SIGTERM them first),
    /// makes sure one relay and the consumers run undisturbed until everything committed is
    /// published and handled, stops them all with SIGTERM (each must exit cleanly), reads the
    /// topic and runs the oracle. Panics with every violation found; returns the counts.
    pub async fn settle_and_check(
        &mut self,
        writers: Vec<Proc>,
        stop_writers: bool,
        mut relays: Vec<Proc>,
        mut consumers: Vec<(Proc, String)>,
    ) -> Report {
        for mut w in writers {
            if stop_writers {
                w.signal("TERM");
            }
            w.wait_success(Duration::from_secs(600)).await;
        }
        if relays.is_empty() {
            relays.push(self.spawn_relay("crash-relay-final"));
        }
        let timeout = Duration::from_secs(120).mul_f64(self.scale.max(1.0));
        let deadline = Instant::now() + timeout;
        while self.backlog().await > 0 && Instant::now() < deadline {
            for r in relays.iter_mut() {
                r.assert_running();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for r in relays {
            r.stop().await;
        }
        // Drained and every relay stopped: the topic is final. Wait until each group's stored
        // positions reach the end of every partition.
        let ends = topic::high_watermarks(self.kafka.brokers()).await;
        let groups: Vec<String> = {
            let mut g: Vec<String> = consumers.iter().map(|(_, g)| g.clone()).collect();
            g.sort();
            g.dedup();
            g
        };
        let deadline = Instant::now() + timeout;
        for group in &groups {
            while !oracle::caught_up(&self.db, group, &ends).await && Instant::now() < deadline {
                for (c, _) in consumers.iter_mut() {
                    c.assert_running();
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        for (c, _) in consumers.drain(..) {
            c.stop().await;
        }
        let records = topic::read_to_end(self.kafka.brokers(), &ends).await;
        let report = oracle::check(&self.db, &self.run, &groups, &records).await;
        println!("[{}] {report}", self.scenario);
        println!("[{}] finished in {:.1} s", self.scenario, self.elapsed());
        if !report.violations.is_empty() {
            panic!(
                "[{}] {} guarantee violation(s) (seed {}, logs {}):\n  {}",
                self.scenario,
                report.violations.len(),
                self.seed,
                self.logs.display(),
                report.violations.join("\n  ")
            );
        }
        report
    }
}
