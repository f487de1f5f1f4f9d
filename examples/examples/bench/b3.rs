//! B3: inbox throughput with a one-row handler vs raw consume + the same handler.

use std::time::{Duration, Instant};

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use futures_util::StreamExt;
use futures_util::future::join_all;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::common::{self, Env};
use crate::stats::Figure;

pub const TOPIC: &str = "bench-inbox";

#[derive(Debug, Serialize, Deserialize, JsonSchema, outbox::Event)]
#[event(topic = "bench-inbox", name = "bench.inbox")]
pub struct Tick {
    #[event(key)]
    pub key: String,
    pub n: i64,
    pub pad: String,
}

struct OneRow;

#[inbox::async_trait]
impl inbox::Handler<Tick> for OneRow {
    async fn handle(&self, e: Tick, cx: &mut inbox::Context<'_>) -> Result<(), inbox::HandlerError> {
        insert_effect(cx.conn(), e.n).await.map(drop).map_err(inbox::HandlerError::transient)
    }
}

diesel::table! {
    /// The handler's table.
    bench_effects (id) {
        id -> BigInt,
        n -> BigInt,
    }
}

/// The handler's whole effect: one row, written with diesel's DSL like an application would (a
/// statement diesel-async keeps prepared). The raw baselines run the same function.
async fn insert_effect(conn: &mut AsyncPgConnection, n: i64) -> Result<usize, diesel::result::Error> {
    use diesel::ExpressionMethods;
    diesel::insert_into(bench_effects::table).values(bench_effects::n.eq(n)).execute(conn).await
}

/// Produces `n` messages; with `duplicates`, every 10th repeats the previous message's id.
async fn produce(env: &Env, n: usize, duplicates: bool) -> usize {
    let producer: FutureProducer = env.producer_config().create().expect("producer");
    let mut futures = Vec::with_capacity(n);
    let mut previous = uuid::Uuid::now_v7();
    let mut distinct = 0;
    for i in 0..n {
        let dup = duplicates && i % 10 == 9;
        let id = if dup { previous } else { uuid::Uuid::now_v7() };
        if !dup {
            distinct += 1;
        }
        previous = id;
        let tick = Tick { key: format!("key-{}", i % 100), n: i as i64, pad: "x".repeat(200) };
        let payload = serde_json::to_vec(&tick).expect("json");
        let envelope = outbox::Envelope {
            id,
            event_type: "bench.inbox".into(),
            version: 1,
            source: "bench".into(),
            time: chrono::Utc::now(),
            correlation_id: None,
            causation_id: None,
            traceparent: None,
            headers: Default::default(),
        };
        let rec = FutureRecord::to(TOPIC).key(&tick.key).payload(&payload).headers(envelope.to_kafka_headers());
        futures.push(producer.send_result(rec).map_err(|(e, _)| e).expect("enqueue"));
    }
    for d in join_all(futures).await {
        d.expect("delivery").expect("delivered");
    }
    distinct
}

async fn effects(conn: &mut AsyncPgConnection) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct C {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        c: i64,
    }
    let c: C = diesel::sql_query("SELECT count(*) AS c FROM bench_effects").get_result(conn).await.expect("count");
    c.c
}

async fn reset(conn: &mut AsyncPgConnection) {
    diesel::sql_query("TRUNCATE bench_effects, inbox_messages, inbox_offsets").execute(conn).await.expect("truncate");
}

/// The SDK: effects per second from the first effect (the consumer group's join, the same for
/// the raw consumer, is not throughput) until `expected` effects exist, and µs of machine CPU per
/// effect over that window.
async fn sdk(env: &Env, expected: usize, batch: usize) -> (f64, Option<f64>) {
    let mut conn = env.conn().await;
    reset(&mut conn).await;
    let group = format!("bench-{}", uuid::Uuid::now_v7().simple());
    let inbox = inbox::Inbox::builder(env.pool(6).await, env.brokers.as_str())
        .group(group)
        .batch_size(batch)
        .handle(OneRow)
        .build()
        .expect("inbox");
    let stop = CancellationToken::new();
    let task = tokio::spawn(inbox.run(stop.clone()));
    let mut first = effects(&mut conn).await;
    while first == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        first = effects(&mut conn).await;
    }
    let started = Instant::now();
    let cpu = common::CpuClock::start();
    // count(*) reads the whole effects table: polled every 100 ms (about 1 % of a run), so the
    // measurement does not compete with the inbox it measures.
    let mut done = first;
    while done < expected as i64 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        done = effects(&mut conn).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let handled = usize::try_from(done - first).unwrap_or(0);
    let cpu = cpu.per_item_us(handled);
    stop.cancel();
    let _ = task.await;
    (handled as f64 / secs, cpu)
}

/// Raw consume + the same handler, no dedup and no stored position: `batch` messages per
/// transaction (1 = one transaction per message).
async fn raw(env: &Env, total: usize, batch: usize) -> (f64, Option<f64>) {
    let mut conn = env.conn().await;
    reset(&mut conn).await;
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &env.brokers)
        .set("group.id", format!("raw-{}", uuid::Uuid::now_v7().simple()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true")
        .create()
        .expect("consumer");
    consumer.subscribe(&[TOPIC]).expect("subscribe");
    // The clock starts at the first message: the group join is not throughput.
    let mut started = None;
    let mut done = 0;
    // Whatever is ready, up to `batch`, goes into one transaction (no timers, no waiting).
    let mut chunks = consumer.stream().ready_chunks(batch);
    while done < total {
        let Some(chunk) = chunks.next().await else { break };
        started.get_or_insert_with(|| (Instant::now(), common::CpuClock::start()));
        let ns: Vec<i64> = chunk
            .iter()
            .filter_map(|m| m.as_ref().ok())
            .map(|m| serde_json::from_slice::<Tick>(m.payload().unwrap_or_default()).expect("json").n)
            .collect();
        conn.transaction::<_, diesel::result::Error, _>(async |tx| {
            for n in &ns {
                insert_effect(tx, *n).await?;
            }
            Ok(())
        })
        .await
        .expect("tx");
        done += ns.len();
    }
    let (started, cpu) = started.unwrap_or_else(|| (Instant::now(), common::CpuClock::start()));
    (total as f64 / started.elapsed().as_secs_f64(), cpu.per_item_us(total))
}

pub async fn run(env: &Env) -> Vec<Figure> {
    let mut conn = env.conn().await;
    diesel::sql_query("CREATE TABLE IF NOT EXISTS bench_effects (id bigserial PRIMARY KEY, n bigint NOT NULL)")
        .execute(&mut conn)
        .await
        .expect("effects table");
    let n = env.n(50_000);
    let (mut s_batch, mut s_one, mut s_dup, mut r_batch, mut r_one) = (vec![], vec![], vec![], vec![], vec![]);
    let total = n;
    let distinct = produce(env, n, false).await;
    let mut cpu = vec![];
    for run in 0..env.runs {
        let (r, r_cpu) = raw(env, total, 500).await;
        let (rate, s_cpu) = sdk(env, distinct, 500).await;
        r_batch.push(r);
        s_batch.push(rate);
        eprintln!("B3 run {run}: inbox batch {:.0}/s, raw consume+handler {:.0}/s", s_batch[run], r_batch[run]);
        if let (Some(s_us), Some(r_us)) = (s_cpu, r_cpu) {
            let (s_busy, r_busy) = (common::cores_busy(s_us, rate), common::cores_busy(r_us, r));
            eprintln!(
                "B3 run {run} CPU per message: inbox {s_us:.1} µs ({s_busy:.2} cores busy), raw {r_us:.1} µs ({r_busy:.2})"
            );
            cpu.push((s_us, s_busy, r_us, r_busy));
        }
    }
    // One-message modes are slow by nature (a commit each): a tenth of the messages.
    let small = (n / 10).max(10);
    for run in 0..env.runs {
        s_one.push(sdk(env, small, 1).await.0);
        r_one.push(raw(env, small, 1).await.0);
        eprintln!("B3 run {run}: inbox one-message {:.0}/s, raw one-tx-per-message {:.0}/s", s_one[run], r_one[run]);
    }
    // 10 % duplicates on a separate topic segment: produce again with repeated ids.
    let dup_distinct = produce(env, n, true).await;
    for run in 0..env.runs {
        // The topic now holds both sets (2n messages); distinct + dup_distinct effects expected.
        // Effects per second × messages per effect: messages (duplicates included) per second.
        let effects = distinct + dup_distinct;
        s_dup.push(sdk(env, effects, 500).await.0 * (2 * n) as f64 / effects as f64);
        eprintln!("B3 run {run}: inbox with 10% duplicates {:.0} msg/s", s_dup[run]);
    }
    let fig = |id, what: String, sdk, baseline, target: &str, bound| Figure {
        id,
        what,
        unit: "msg/s",
        sdk,
        baseline,
        higher_is_better: true,
        target: target.into(),
        ratio_bound: bound,
        note: String::new(),
    };
    let mut figures = vec![
        fig(
            "B3a",
            format!("inbox, batch 500, {n} msgs, one-row handler vs raw consume + handler (batch tx)"),
            s_batch.clone(),
            r_batch.clone(),
            "≥ 0.9",
            Some(0.9),
        ),
        fig(
            "B3b",
            "inbox batch mode vs raw one-tx-per-message".into(),
            s_batch.clone(),
            r_one.clone(),
            "≥ 10×",
            Some(10.0),
        ),
        fig("B3c", format!("inbox one-message mode vs raw one-tx-per-message ({small} msgs)"), s_one, r_one, "–", None),
        fig(
            "B3d",
            "inbox batch mode, 10 % duplicates (msgs incl. duplicates/s) vs raw batch".into(),
            s_dup,
            r_batch,
            "–",
            None,
        ),
    ];
    if !cpu.is_empty() {
        let m = |f: fn(&(f64, f64, f64, f64)) -> f64| crate::stats::median(&cpu.iter().map(f).collect::<Vec<_>>());
        figures[0].note = format!(
            "machine CPU per message (median): inbox {:.1} µs with {:.2} of the cores busy; raw batch {:.1} µs with {:.2}",
            m(|c| c.0),
            m(|c| c.1),
            m(|c| c.2),
            m(|c| c.3)
        );
    }
    figures
}
