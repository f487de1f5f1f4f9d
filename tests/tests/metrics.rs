//! Every metric the relay and the inbox describe is recorded, with a plausible value, by a relay
//! and inbox running on real databases and librdkafka's mock cluster; and the metrics table in
//! docs/operations.md lists exactly the described metrics.
//!
//! The recorder: metrics-util's `DebuggingRecorder`, installed as the global recorder once per
//! test binary. A thread-local recorder (`metrics::with_local_recorder`) does not follow the
//! relay's and the inbox's tasks onto tokio's worker threads (nor librdkafka's statistics
//! callback), so it would miss most updates. nextest runs every test in a process of its own;
//! under `cargo test` the tests of this binary share the recorder, and each test reads only the
//! series carrying its own `relay` or `group` label. Snapshots drain histograms, so every
//! snapshot is merged into one accumulated view.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use inbox::{Context, Handler, HandlerError, Inbox, UnknownTypePolicy};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use outbox::Event as _;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tests::produce::{CloudEvent, TestProducer};
use tests::relay_support as rs;
use tests::{Backend, TestConn, TestDb, TestKafka};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

tests::backends!(relay_and_inbox_record_every_described_metric);

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, outbox::Event)]
#[event(topic = "metrics.orders", name = "order.placed")]
struct Placed {
    #[event(key)]
    order_id: String,
    n: u64,
}

/// Same topic, a type no handler is registered for: skipped under `UnknownTypePolicy::Skip`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, outbox::Event)]
#[event(topic = "metrics.orders", name = "order.audited")]
struct Audited {
    #[event(key)]
    order_id: String,
}

struct Accept;

#[inbox::async_trait]
impl<C: outbox::Database + TestConn> Handler<Placed, C> for Accept {
    async fn handle(&self, _: Placed, _: &mut Context<'_, C>) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// A recorded series, merged over snapshots. A snapshot of the debugging recorder consumes what
/// it reads (counters and gauges are swapped to 0, histograms cleared): counters are summed,
/// every gauge value read is kept (a gauge reads 0 until it is set again), histograms keep every
/// observation.
#[derive(Debug, Clone)]
enum Value {
    Counter(u64),
    Gauge(Vec<f64>),
    Histogram(Vec<f64>),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Counter(n) => write!(f, "{n}"),
            Value::Gauge(seen) => {
                let set: Vec<f64> = seen.iter().copied().filter(|v| *v != 0.0).collect();
                write!(f, "{}", set.last().copied().unwrap_or(0.0))
            }
            Value::Histogram(xs) => {
                let max = xs.iter().cloned().fold(f64::NAN, f64::max);
                write!(f, "{} observations, max {max}", xs.len())
            }
        }
    }
}

/// A series: name and sorted labels.
type Series = (String, Vec<(String, String)>);

fn snapshotter() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder.install().expect("no other global recorder in this test binary");
        snapshotter
    })
}

/// Everything recorded so far (snapshots merged: a snapshot drains the histograms).
fn recorded() -> BTreeMap<Series, Value> {
    static SEEN: Mutex<BTreeMap<Series, Value>> = Mutex::new(BTreeMap::new());
    let mut seen = SEEN.lock().unwrap();
    for (key, _, _, value) in snapshotter().snapshot().into_vec() {
        let key = key.key();
        let mut labels: Vec<(String, String)> =
            key.labels().map(|l| (l.key().to_owned(), l.value().to_owned())).collect();
        labels.sort();
        let series = (key.name().to_owned(), labels);
        match value {
            DebugValue::Counter(n) => {
                if let Value::Counter(total) = seen.entry(series).or_insert(Value::Counter(0)) {
                    *total += n;
                }
            }
            DebugValue::Gauge(v) => {
                if let Value::Gauge(all) = seen.entry(series).or_insert(Value::Gauge(Vec::new()))
                    && all.last() != Some(&v.into_inner())
                {
                    all.push(v.into_inner());
                }
            }
            DebugValue::Histogram(xs) => {
                let entry = seen.entry(series).or_insert(Value::Histogram(Vec::new()));
                if let Value::Histogram(all) = entry {
                    all.extend(xs.into_iter().map(|x| x.into_inner()));
                }
            }
        }
    }
    seen.clone()
}

/// The (name, kind) of every metric `describe` gives, caught by a recorder of its own.
fn described() -> BTreeSet<(String, &'static str)> {
    #[derive(Default)]
    struct Describes(Mutex<BTreeSet<(String, &'static str)>>);
    impl Describes {
        fn add(&self, name: KeyName, kind: &'static str) {
            self.0.lock().unwrap().insert((name.as_str().to_owned(), kind));
        }
    }
    impl Recorder for Describes {
        fn describe_counter(&self, name: KeyName, _: Option<Unit>, _: SharedString) {
            self.add(name, "counter")
        }
        fn describe_gauge(&self, name: KeyName, _: Option<Unit>, _: SharedString) {
            self.add(name, "gauge")
        }
        fn describe_histogram(&self, name: KeyName, _: Option<Unit>, _: SharedString) {
            self.add(name, "histogram")
        }
        fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
            Counter::noop()
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }
    let describes = Describes::default();
    metrics::with_local_recorder(&describes, || {
        outbox::metrics::describe();
        inbox::metrics::describe();
    });
    describes.0.into_inner().unwrap()
}

/// The series of `name` whose labels include every pair of `labels`.
fn find<'a>(all: &'a BTreeMap<Series, Value>, name: &str, labels: &[(&str, &str)]) -> Vec<(&'a Series, &'a Value)> {
    all.iter()
        .filter(|((n, ls), _)| n == name && labels.iter().all(|(k, v)| ls.iter().any(|(lk, lv)| lk == k && lv == v)))
        .collect()
}

fn show(series: &Series, value: &Value) -> String {
    let labels: Vec<String> = series.1.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{}{{{}}} {value}", series.0, labels.join(","))
}

/// One expectation: a series of `name` with these labels whose value passes `ok`.
struct Expect {
    name: &'static str,
    labels: Vec<(&'static str, String)>,
    ok: fn(&Value) -> bool,
    what: &'static str,
}

fn expect(name: &'static str, labels: &[(&'static str, &str)], what: &'static str, ok: fn(&Value) -> bool) -> Expect {
    Expect { name, labels: labels.iter().map(|(k, v)| (*k, v.to_string())).collect(), ok, what }
}

fn counter_at_least(v: &Value, n: u64) -> bool {
    matches!(v, Value::Counter(c) if *c >= n)
}

/// Some value read from the gauge passes `ok`.
fn gauge(v: &Value, ok: impl Fn(f64) -> bool) -> bool {
    matches!(v, Value::Gauge(seen) if seen.iter().any(|g| ok(*g)))
}

fn observed(v: &Value, ok: impl Fn(f64) -> bool) -> bool {
    matches!(v, Value::Histogram(xs) if !xs.is_empty() && xs.iter().all(|x| ok(*x)))
}

async fn publish<B: Backend>(db: &TestDb<B>, key: &str, n: u64) -> Uuid {
    let mut conn = db.conn().await;
    let e = Placed { order_id: key.to_owned(), n };
    outbox::transaction(&mut conn, async |tx| outbox::publish(tx, &e).await).await.expect("publish")
}

async fn relay_and_inbox_record_every_described_metric<B: Backend>() {
    snapshotter(); // installed before anything is built: it receives the descriptions
    let db = TestDb::<B>::fresh().await;
    let kafka = TestKafka::new();
    // Taking brokers down needs the mock cluster: scripts/test's real-broker pass leaves this out
    // by name (a test that passes without running would be reported as run).
    let mock =
        kafka.mock().expect("this test needs the mock cluster (it takes brokers down); run it without KAFKA_BROKERS");
    kafka.create_topic(Placed::TOPIC, 2).await;
    let relay_name = format!("metrics-{}", B::NAME);
    let group = format!("metrics-{}", B::NAME);
    let prune_group = format!("metrics-prune-{}", B::NAME);
    let topic = Placed::TOPIC;

    // Published: 20 events.
    let mut first = None;
    for n in 0..20 {
        let id = publish(&db, &format!("k{}", n % 4), n).await;
        first.get_or_insert(id);
    }
    let kafka_config = outbox::KafkaConfig::new(kafka.brokers()).set("message.timeout.ms", "1000");
    let relay = rs::relay_with(db.pool(4).await, kafka_config)
        .name(&relay_name)
        .max_attempts(1)
        .metrics_interval(Duration::from_millis(100))
        .build()
        .unwrap();
    let (stop_relay, relay_task) = rs::spawn(relay);
    rs::wait_drained(&db, Duration::from_secs(60)).await;

    // Failed and parked: every broker down, one event whose delivery times out (1 s) and, with
    // max_attempts 1, parks at once.
    for b in 1..=3 {
        mock.broker_down(b).unwrap();
    }
    publish(&db, "outage", 100).await;
    let parked_sql = "SELECT count(*) AS n FROM outbox_messages WHERE parked_at IS NOT NULL";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while db.count(parked_sql).await < 1 {
        assert!(tokio::time::Instant::now() < deadline, "the event sent during the outage was not parked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for b in 1..=3 {
        mock.broker_up(b).unwrap();
    }

    // Duplicate, skipped, dead-lettered: produced beside the relay's records.
    let producer = TestProducer::new(&kafka);
    let placed = Placed { order_id: "k0".into(), n: 0 };
    producer.send(&CloudEvent::of(&placed).with_id(first.unwrap())).await; // a redelivery
    producer.send(&CloudEvent::of(&Audited { order_id: "k1".into() })).await; // no handler
    producer.send(&CloudEvent::of(&placed).payload(b"not json".to_vec())).await; // undecodable

    let inbox_config = {
        let mut c = tests::produce::inbox_kafka_config(&kafka);
        c.set("statistics.interval.ms", "100");
        c
    };
    let stop_inbox = CancellationToken::new();
    let inbox = Inbox::builder(db.pool(4).await, inbox_config.clone())
        .group(&group)
        .handle(Accept)
        .unknown_types(UnknownTypePolicy::Skip)
        .metrics_interval(Duration::from_millis(100))
        .build()
        .unwrap();
    // A second group whose dedup rows expire at once: the retention task prunes them.
    let pruning = Inbox::builder(db.pool(2).await, inbox_config)
        .group(&prune_group)
        .handle(Accept)
        .unknown_types(UnknownTypePolicy::Skip)
        .dedup_window(Duration::from_millis(1))
        .prune_interval(Duration::from_millis(100))
        .build()
        .unwrap();
    let inbox_task = tokio::spawn(inbox.run(stop_inbox.clone()));
    let pruning_task = tokio::spawn(pruning.run(stop_inbox.clone()));

    let r = relay_name.as_str();
    let g = group.as_str();
    let expectations = [
        expect("outbox_pending", &[("relay", r), ("topic", topic)], ">= 0", |v| gauge(v, |g| g >= 0.0)),
        expect("outbox_parked", &[("relay", r), ("topic", topic)], "the one parked event", |v| gauge(v, |g| g == 1.0)),
        expect("outbox_oldest_pending_seconds", &[("relay", r), ("topic", topic)], ">= 0", |v| gauge(v, |g| g >= 0.0)),
        expect("outbox_batch_size", &[("relay", r)], "1 to 20 rows", |v| observed(v, |x| (1.0..=20.0).contains(&x))),
        expect("outbox_publish_seconds", &[("relay", r)], "non-negative", |v| observed(v, |x| x >= 0.0)),
        expect("outbox_published_total", &[("relay", r), ("topic", topic)], "20", |v| matches!(v, Value::Counter(20))),
        expect("outbox_publish_failures_total", &[("relay", r), ("topic", topic)], ">= 1", |v| counter_at_least(v, 1)),
        expect("outbox_parked_total", &[("relay", r)], "1", |v| matches!(v, Value::Counter(1))),
        expect("outbox_lease_held", &[("relay", r)], "1", |v| gauge(v, |g| g == 1.0)),
        expect("outbox_last_success_timestamp_seconds", &[("relay", r)], "a Unix time after 2020", |v| {
            gauge(v, |g| g > 1.6e9)
        }),
        expect("inbox_handled_total", &[("group", g), ("topic", topic), ("type", "order.placed")], "20", |v| {
            matches!(v, Value::Counter(20))
        }),
        expect("inbox_duplicates_total", &[("group", g), ("topic", topic)], ">= 1", |v| counter_at_least(v, 1)),
        expect(
            "inbox_dead_lettered_total",
            &[("group", g), ("topic", topic), ("reason", "malformed_payload")],
            "1",
            |v| counter_at_least(v, 1),
        ),
        expect("inbox_skipped_total", &[("group", g), ("topic", topic)], ">= 1", |v| counter_at_least(v, 1)),
        expect("inbox_handler_seconds", &[("group", g), ("type", "order.placed")], "non-negative", |v| {
            observed(v, |x| x >= 0.0)
        }),
        expect("inbox_lag", &[("group", g), ("topic", topic)], ">= 0", |v| gauge(v, |g| g >= 0.0)),
        expect("inbox_pruned_total", &[("group", &prune_group)], ">= 1", |v| counter_at_least(v, 1)),
        expect("inbox_dead_letters", &[("group", g)], "1", |v| gauge(v, |g| g == 1.0)),
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let all = loop {
        let all = recorded();
        let missing: Vec<String> = expectations
            .iter()
            .filter(|e| {
                let labels: Vec<(&str, &str)> = e.labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                !find(&all, e.name, &labels).iter().any(|(_, v)| (e.ok)(v))
            })
            .map(|e| format!("{}{:?} ({})", e.name, e.labels, e.what))
            .collect();
        if missing.is_empty() {
            break all;
        }
        if tokio::time::Instant::now() >= deadline {
            let shown: Vec<String> = all.iter().map(|(s, v)| show(s, v)).collect();
            panic!("not recorded as expected: {missing:#?}\nrecorded:\n{}", shown.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    stop_inbox.cancel();
    stop_relay.cancel();
    inbox_task.await.unwrap().unwrap();
    pruning_task.await.unwrap().unwrap();
    relay_task.await.unwrap().unwrap();

    let ours = |s: &Series| {
        s.1.iter().any(|(k, v)| (k == "relay" && v == r) || (k == "group" && (v == g || *v == prune_group)))
    };
    println!("recorded ({}):", B::NAME);
    for (series, value) in all.iter().filter(|(s, _)| ours(s)) {
        println!("  {}", show(series, value));
    }
    // Every described metric was recorded, and nothing undescribed was.
    let described: BTreeSet<String> = described().into_iter().map(|(name, _)| name).collect();
    let recorded: BTreeSet<String> = all.keys().filter(|s| ours(s)).map(|(name, _)| name.clone()).collect();
    assert_eq!(recorded, described, "the metrics recorded are exactly the metrics described");
    let expected: BTreeSet<String> = expectations.iter().map(|e| e.name.to_owned()).collect();
    assert_eq!(expected, described, "this test checks every described metric");
}

/// The metrics table of docs/operations.md: (name, kind) from each `| `name` | kind | ... |` row.
fn docs_table() -> BTreeSet<(String, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/operations.md");
    let text = std::fs::read_to_string(path).expect("read docs/operations.md");
    let start = text.find("## Metrics").expect("docs/operations.md has a `## Metrics` section");
    let section = &text[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    section
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.trim().strip_prefix('|')?.split('|').map(str::trim).collect();
            let name = cells.first()?.strip_prefix('`')?.strip_suffix('`')?;
            Some((name.to_owned(), cells.get(1)?.to_string()))
        })
        .collect()
}

#[test]
fn docs_metrics_table_lists_exactly_the_described_metrics() {
    let docs = docs_table();
    let described: BTreeSet<(String, String)> =
        described().into_iter().map(|(name, kind)| (name, kind.to_owned())).collect();
    println!("described: {described:#?}");
    assert_eq!(docs, described, "docs/operations.md's metrics table (name, kind) against the describe_* calls");
}
