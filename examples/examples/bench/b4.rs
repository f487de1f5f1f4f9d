//! B4: end-to-end latency, business commit → handler, at a steady 200 msg/s, against raw
//! produce → consume with the same producer settings, measured in the same run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::common::Env;
use crate::stats::{Figure, median, percentile};

#[derive(Debug, Serialize, Deserialize, JsonSchema, outbox::Event)]
#[event(topic = "bench-e2e", name = "bench.e2e")]
pub struct Stamp {
    #[event(key)]
    pub key: u32,
    /// Microseconds since the Unix epoch, taken just before producing (the raw baseline's start).
    pub at_us: i64,
    /// Sent before the measurement, to let the consumer join and reach steady state.
    pub warm_up: bool,
}

/// The latency setting of the producer, for the relay and the baseline alike (the relay's
/// default of 1 ms favours throughput, B1); idempotence and acks=all stay on.
const LINGER_MS: &str = "0";

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// When each message reached the handler (message id, µs since the epoch).
struct Record(Arc<Mutex<Vec<(uuid::Uuid, i64)>>>);

#[inbox::async_trait]
impl inbox::Handler<Stamp> for Record {
    async fn handle(&self, _: Stamp, cx: &mut inbox::Context<'_>) -> Result<(), inbox::HandlerError> {
        let at = now_us();
        self.0.lock().map_err(|_| inbox::HandlerError::permanent("poisoned"))?.push((cx.message_id(), at));
        Ok(())
    }
}

/// Both consumers fetch with `fetch.wait.max.ms=1`: librdkafka's mock broker holds an empty
/// fetch for the whole wait even when data arrives (a real broker answers at once), so a longer
/// wait would measure the mock, not the path. Applied identically to the SDK and the baseline.
fn consumer_config(env: &Env) -> rdkafka::ClientConfig {
    let mut c = rdkafka::ClientConfig::new();
    c.set("bootstrap.servers", &env.brokers).set("fetch.wait.max.ms", "1");
    c
}

/// Latency from the moment `outbox::transaction` returns (the COMMIT is acknowledged) to the
/// moment the handler runs, per message. `pgbouncer`: the writer, the relay and the inbox go
/// through PgBouncer at that URL (transaction mode, `outbox::pooler` connections) instead.
pub(crate) async fn sdk(env: &Env, rate: f64, secs: f64, pgbouncer: Option<&str>) -> Vec<f64> {
    let handled = Arc::new(Mutex::new(Vec::new()));
    let stop = CancellationToken::new();
    let kafka = outbox::KafkaConfig::new(&env.brokers).set("linger.ms", LINGER_MS);
    let group = format!("e2e-{}", uuid::Uuid::now_v7().simple());
    let (relay_task, inbox_task, mut conn) = match pgbouncer {
        None => {
            let relay = outbox::relay::Relay::builder(env.pool(4).await, kafka).build().expect("relay");
            let inbox = inbox::Inbox::builder(env.pool(4).await, consumer_config(env))
                .group(group)
                .handle(Record(handled.clone()))
                .build()
                .expect("inbox");
            (tokio::spawn(relay.run(stop.clone())), tokio::spawn(inbox.run(stop.clone())), env.conn().await)
        }
        Some(url) => {
            let pool = async || {
                bb8::Pool::builder()
                    .max_size(4)
                    .queue_strategy(bb8::QueueStrategy::Lifo)
                    .build(outbox::pooler::Manager::new(url))
                    .await
                    .expect("pool through PgBouncer")
            };
            let relay = outbox::relay::Relay::builder(pool().await, kafka).build().expect("relay");
            let inbox = inbox::Inbox::builder(pool().await, consumer_config(env))
                .group(group)
                .handle(Record(handled.clone()))
                .build()
                .expect("inbox");
            let conn = outbox::pooler::establish(url).await.expect("connect through PgBouncer");
            (tokio::spawn(relay.run(stop.clone())), tokio::spawn(inbox.run(stop.clone())), conn)
        }
    };
    let mut publish = async |key: u32, warm_up: bool| {
        outbox::transaction(&mut conn, async |tx| outbox::publish(tx, &Stamp { key, at_us: now_us(), warm_up }).await)
            .await
            .expect("publish")
    };
    // Warm-up, not measured: group join, partition assignment, the first-message position check
    // of every partition (one message per key covers all partitions) and, for a new group on a
    // topic with earlier runs' records, reading past them. Waits for these very messages.
    let mut warm = std::collections::HashSet::new();
    for key in 0..50u32 {
        warm.insert(publish(key, true).await);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let warmed = || handled.lock().expect("lock").iter().filter(|(id, _)| warm.contains(id)).count();
    while warmed() < warm.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let latencies = measure(rate, secs, &handled, async |key| publish(key, false).await).await;
    stop.cancel();
    let _ = relay_task.await;
    let _ = inbox_task.await;
    latencies
}

/// The measured phase of both outbox paths: `rate × secs` messages, one per tick, each written
/// by `publish` (the message id, once COMMIT returned); then, up to 30 s, until every one of
/// them was handled (a late warm-up message must not stand in for one). Latencies COMMIT
/// returned → handler, in ms.
async fn measure(
    rate: f64,
    secs: f64,
    handled: &Mutex<Vec<(uuid::Uuid, i64)>>,
    mut publish: impl AsyncFnMut(u32) -> uuid::Uuid,
) -> Vec<f64> {
    let n = (rate * secs) as usize;
    let mut committed = HashMap::with_capacity(n);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    for i in 0..n {
        tick.tick().await;
        let id = publish((i % 50) as u32).await;
        committed.insert(id, now_us());
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let count = || handled.lock().expect("lock").iter().filter(|(id, _)| committed.contains_key(id)).count();
    while count() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let handled = handled.lock().expect("lock");
    handled.iter().filter_map(|(id, at)| committed.get(id).map(|c| (at - c) as f64 / 1000.0)).collect()
}

diesel::table! {
    /// The hand-written baseline's outbox.
    bench_e2e_outbox (seq) {
        seq -> BigInt,
        id -> Uuid,
        key -> Text,
        payload -> Bytea,
    }
}

diesel::table! {
    /// The hand-written baseline's inbox (message ids handled).
    bench_e2e_dedup (id) {
        id -> Uuid,
    }
}

/// The least database work an outbox plus inbox can do on the path, written by hand around the
/// same producer and consumer settings: the writer INSERTs the row in its transaction and
/// signals a relay task over a channel after COMMIT; the relay, on a connection of its own (no
/// pool, no lease, no fence), SELECTs the new rows, produces them, awaits the acknowledgements
/// and DELETEs them (asynchronous commit); the consumer, on its own connection, runs BEGIN,
/// INSERT of the message id (ON CONFLICT DO NOTHING), the handler, COMMIT. All statements
/// cached (diesel DSL). Latency from COMMIT returned to the handler, like the SDK's.
async fn hand(env: &Env, rate: f64, secs: f64) -> Vec<f64> {
    use diesel::prelude::*;
    use diesel_async::{AsyncConnection, RunQueryDsl};
    use rdkafka::message::{Header, Headers, OwnedHeaders};
    let stop = CancellationToken::new();
    let handled: Arc<Mutex<Vec<(uuid::Uuid, i64)>>> = Arc::new(Mutex::new(Vec::new()));
    let warmed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let consumer: StreamConsumer = consumer_config(env)
        .set("group.id", format!("hand-e2e-{}", uuid::Uuid::now_v7().simple()))
        .set("auto.offset.reset", "latest")
        .create()
        .expect("consumer");
    consumer.subscribe(&["bench-e2e-hand"]).expect("subscribe");
    let reader = tokio::spawn({
        let (handled, warmed, stop, mut conn) = (handled.clone(), warmed.clone(), stop.clone(), env.conn().await);
        async move {
            loop {
                let m = tokio::select! {
                    _ = stop.cancelled() => return,
                    m = consumer.recv() => m,
                };
                let Ok(m) = m else { continue };
                let id = m
                    .headers()
                    .and_then(|h| h.iter().find(|h| h.key == "ce_id").and_then(|h| h.value))
                    .and_then(|v| uuid::Uuid::from_slice(v).ok());
                let (Some(id), Ok(s)) = (id, serde_json::from_slice::<Stamp>(m.payload().unwrap_or_default())) else {
                    continue;
                };
                let handled = &handled;
                conn.transaction::<_, diesel::result::Error, _>(async |tx| {
                    let new = diesel::insert_into(bench_e2e_dedup::table)
                        .values(bench_e2e_dedup::id.eq(id))
                        .on_conflict_do_nothing()
                        .execute(tx)
                        .await?;
                    if new == 1 && s.warm_up {
                        warmed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    } else if new == 1 {
                        handled.lock().expect("lock").push((id, now_us()));
                    }
                    Ok(())
                })
                .await
                .expect("inbox tx");
            }
        }
    });
    let (signal, mut signals) = tokio::sync::mpsc::unbounded_channel::<()>();
    let relay = tokio::spawn({
        let (stop, mut conn) = (stop.clone(), env.conn().await);
        let producer: FutureProducer = env.producer_config().set("linger.ms", LINGER_MS).create().expect("producer");
        async move {
            diesel::sql_query("SET synchronous_commit = off").execute(&mut conn).await.expect("set");
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    s = signals.recv() => if s.is_none() { return },
                }
                while signals.try_recv().is_ok() {}
                let rows: Vec<(i64, uuid::Uuid, String, Vec<u8>)> = bench_e2e_outbox::table
                    .order(bench_e2e_outbox::seq)
                    .limit(1000)
                    .load(&mut conn)
                    .await
                    .expect("select");
                let acks: Vec<_> = rows
                    .iter()
                    .map(|(_, id, key, payload)| {
                        let h = OwnedHeaders::new().insert(Header { key: "ce_id", value: Some(id.as_bytes()) });
                        producer
                            .send_result(FutureRecord::to("bench-e2e-hand").key(key).payload(payload).headers(h))
                            .expect("produce")
                    })
                    .collect();
                for ack in acks {
                    ack.await.expect("delivery").expect("delivered");
                }
                let seqs: Vec<i64> = rows.iter().map(|r| r.0).collect();
                diesel::delete(bench_e2e_outbox::table.filter(bench_e2e_outbox::seq.eq_any(seqs)))
                    .execute(&mut conn)
                    .await
                    .expect("delete");
            }
        }
    });
    let mut conn = env.conn().await;
    let mut publish = async |key: u32, warm_up: bool| {
        let id = uuid::Uuid::now_v7();
        let payload = serde_json::to_vec(&Stamp { key, at_us: now_us(), warm_up }).expect("json");
        conn.transaction::<_, diesel::result::Error, _>(async |tx| {
            diesel::insert_into(bench_e2e_outbox::table)
                .values((
                    bench_e2e_outbox::id.eq(id),
                    bench_e2e_outbox::key.eq(key.to_string()),
                    bench_e2e_outbox::payload.eq(&payload),
                ))
                .execute(tx)
                .await
        })
        .await
        .expect("write");
        let _ = signal.send(());
        id
    };
    // Warm-up like the SDK's: until the consumer has handled 50 messages.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = 0;
    let warm = || std::sync::atomic::AtomicUsize::load(&warmed, std::sync::atomic::Ordering::Relaxed);
    while warm() < 50 && Instant::now() < deadline {
        publish(i % 50, true).await;
        i += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let latencies = measure(rate, secs, &handled, async |key| publish(key, false).await).await;
    stop.cancel();
    let _ = relay.await;
    let _ = reader.await;
    latencies
}

async fn raw(env: &Env, rate: f64, secs: f64) -> Vec<f64> {
    let consumer: StreamConsumer = consumer_config(env)
        .set("group.id", format!("raw-e2e-{}", uuid::Uuid::now_v7().simple()))
        .set("auto.offset.reset", "latest")
        .create()
        .expect("consumer");
    consumer.subscribe(&["bench-e2e-raw"]).expect("subscribe");
    let n = (rate * secs) as usize;
    let warmed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let reader = tokio::spawn({
        let warmed = warmed.clone();
        async move {
            let mut out = Vec::with_capacity(n);
            while out.len() < n {
                match tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await {
                    Ok(Ok(m)) => match serde_json::from_slice::<Stamp>(m.payload().unwrap_or_default()) {
                        Ok(s) if s.warm_up => {
                            warmed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Ok(s) => out.push((now_us() - s.at_us) as f64 / 1000.0),
                        Err(_) => {}
                    },
                    _ => break,
                }
            }
            out
        }
    });
    let producer: FutureProducer = env.producer_config().set("linger.ms", LINGER_MS).create().expect("producer");
    let send = |i: usize, warm_up: bool| {
        let payload = serde_json::to_vec(&Stamp { key: (i % 50) as u32, at_us: now_us(), warm_up }).expect("json");
        let key = (i % 50).to_string();
        // Not awaited one by one: the SDK's relay does not either.
        let _ = producer.send_result(FutureRecord::to("bench-e2e-raw").key(&key).payload(&payload));
    };
    // Warm-up, like the SDK's: until the consumer has joined and received 50 messages in a row.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = 0;
    while warmed.load(std::sync::atomic::Ordering::Relaxed) < 50 && Instant::now() < deadline {
        send(i, true);
        i += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    for i in 0..n {
        tick.tick().await;
        send(i, false);
    }
    reader.await.expect("reader")
}

pub async fn run(env: &Env) -> Vec<Figure> {
    use diesel_async::SimpleAsyncConnection;
    // B2 leaves tens of thousands of unsent rows behind (its last throughput phase); B4 measures
    // new events, not the relay draining (and deleting) someone else's backlog first.
    let mut conn = env.conn().await;
    crate::common::truncate(&mut conn).await;
    conn.batch_execute(
        "CREATE TABLE IF NOT EXISTS bench_e2e_outbox (seq bigserial PRIMARY KEY, id uuid NOT NULL, key text NOT NULL,
                                                      payload bytea NOT NULL);
         CREATE TABLE IF NOT EXISTS bench_e2e_dedup (id uuid PRIMARY KEY);
         TRUNCATE bench_e2e_outbox, bench_e2e_dedup",
    )
    .await
    .expect("hand-written baseline tables");
    drop(conn);
    let secs = (20.0 * env.scale).clamp(5.0, 20.0);
    let rate = 200.0;
    let percentiles = [50.0, 95.0, 99.0, 100.0];
    // Per run: each percentile of each path; runs rotate which path goes first.
    let (mut sdk_p, mut raw_p, mut hand_p) = (vec![Vec::new(); 4], vec![Vec::new(); 4], vec![Vec::new(); 4]);
    let (mut sdk_all, mut raw_all) = (Vec::new(), Vec::new());
    for run in 0..env.runs {
        let (mut sdk_lat, mut raw_lat, mut hand_lat) = (Vec::new(), Vec::new(), Vec::new());
        for step in 0..3 {
            match (run + step) % 3 {
                0 => raw_lat = raw(env, rate, secs).await,
                1 => sdk_lat = sdk(env, rate, secs, None).await,
                _ => hand_lat = hand(env, rate, secs).await,
            }
        }
        for v in [&mut sdk_lat, &mut raw_lat, &mut hand_lat] {
            v.sort_by(f64::total_cmp);
        }
        for (i, p) in percentiles.iter().enumerate() {
            sdk_p[i].push(percentile(&sdk_lat, *p));
            raw_p[i].push(percentile(&raw_lat, *p));
            hand_p[i].push(percentile(&hand_lat, *p));
        }
        eprintln!(
            "B4 run {run}: SDK commit→handler {}; raw produce→consume {}; hand-written outbox+inbox {}",
            summary(&sdk_lat),
            summary(&raw_lat),
            summary(&hand_lat)
        );
        sdk_all.extend(sdk_lat);
        raw_all.extend(raw_lat);
    }
    sdk_all.sort_by(f64::total_cmp);
    raw_all.sort_by(f64::total_cmp);
    let fig = |id, what: &str, i: usize, baseline: &[Vec<f64>], target: &str, bound| Figure {
        id,
        what: what.into(),
        unit: "ms",
        sdk: sdk_p[i].clone(),
        baseline: baseline[i].clone(),
        higher_is_better: false,
        target: target.into(),
        ratio_bound: bound,
        note: String::new(),
    };
    let mut figures = vec![
        fig(
            "B4 p50",
            "end-to-end COMMIT returned → handler at 200 msg/s (outbox::transaction, linger.ms=0), p50 (baseline: raw produce→consume, same producer settings)",
            0,
            &raw_p,
            "≤ 3 ms absolute",
            None,
        ),
        fig("B4 p95", "end-to-end p95", 1, &raw_p, "–", None),
        fig("B4 p99", "end-to-end p99", 2, &raw_p, "≤ 1.5× raw p99", Some(1.5)),
        fig("B4 max", "end-to-end max", 3, &raw_p, "–", None),
        fig(
            "B4h p50",
            "end-to-end p50, SDK vs a hand-written outbox + inbox (the same producer and consumer, the fewest database round trips on the path; no pool, lease or fence)",
            0,
            &hand_p,
            "–",
            None,
        ),
        fig("B4h p99", "end-to-end p99, SDK vs the hand-written outbox + inbox", 2, &hand_p, "–", None),
    ];
    figures[0].note = format!(
        "{} runs of {secs:.0} s at {rate} msg/s, all runs pooled: SDK {}; raw {}; p50 target (median of runs) met: {}",
        env.runs,
        summary(&sdk_all),
        summary(&raw_all),
        if median(&sdk_p[0]) <= 3.0 { "yes" } else { "no" }
    );
    let per_run =
        |a: &[f64], b: &[f64]| -> Vec<String> { a.iter().zip(b).map(|(a, b)| format!("{:.2}", a / b)).collect() };
    figures[2].note = format!(
        "p99 per run, SDK / raw: {}; hand-written outbox + inbox / raw: {} (its p99 {} ms)",
        per_run(&sdk_p[2], &raw_p[2]).join(", "),
        per_run(&hand_p[2], &raw_p[2]).join(", "),
        hand_p[2].iter().map(|v| format!("{v:.2}")).collect::<Vec<_>>().join(", ")
    );
    figures
}

pub(crate) fn summary(v: &[f64]) -> String {
    format!(
        "n={} p50 {:.2} p95 {:.2} p99 {:.2} max {:.2} ms",
        v.len(),
        percentile(v, 50.0),
        percentile(v, 95.0),
        percentile(v, 99.0),
        v.last().copied().unwrap_or(f64::NAN)
    )
}
