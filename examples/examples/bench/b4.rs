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
/// moment the handler runs, per message.
async fn sdk(env: &Env, rate: f64, secs: f64) -> Vec<f64> {
    let handled = Arc::new(Mutex::new(Vec::new()));
    let stop = CancellationToken::new();
    let relay = outbox::relay::Relay::builder(
        env.pool(4).await,
        outbox::KafkaConfig::new(&env.brokers).set("linger.ms", LINGER_MS),
    )
    .build()
    .expect("relay");
    let relay_task = tokio::spawn(relay.run(stop.clone()));
    let inbox = inbox::Inbox::builder(env.pool(4).await, consumer_config(env))
        .group(format!("e2e-{}", uuid::Uuid::now_v7().simple()))
        .handle(Record(handled.clone()))
        .build()
        .expect("inbox");
    let inbox_task = tokio::spawn(inbox.run(stop.clone()));
    let mut conn = env.conn().await;
    let publish = async |conn: &mut diesel_async::AsyncPgConnection, key: u32, warm_up: bool| {
        outbox::transaction(conn, async |tx| outbox::publish(tx, &Stamp { key, at_us: now_us(), warm_up }).await)
            .await
            .expect("publish")
    };
    // Warm-up, not measured: group join, partition assignment, the first-message position check
    // of every partition (one message per key covers all partitions) and, for a new group on a
    // topic with earlier runs' records, reading past them. Waits for these very messages.
    let mut warm = std::collections::HashSet::new();
    for key in 0..50u32 {
        warm.insert(publish(&mut conn, key, true).await);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let warmed = || handled.lock().expect("lock").iter().filter(|(id, _)| warm.contains(id)).count();
    while warmed() < warm.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    handled.lock().expect("lock").clear();
    let n = (rate * secs) as usize;
    let mut committed = HashMap::with_capacity(n);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    for i in 0..n {
        tick.tick().await;
        let id = publish(&mut conn, (i % 50) as u32, false).await;
        committed.insert(id, now_us());
    }
    // Until every measured message was handled (a late warm-up message must not stand in for one).
    let deadline = Instant::now() + Duration::from_secs(30);
    let count = || handled.lock().expect("lock").iter().filter(|(id, _)| committed.contains_key(id)).count();
    while count() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    let _ = relay_task.await;
    let _ = inbox_task.await;
    let handled = handled.lock().expect("lock");
    handled.iter().filter_map(|(id, at)| committed.get(id).map(|c| (at - c) as f64 / 1000.0)).collect()
}

async fn raw(env: &Env, rate: f64, secs: f64) -> Vec<f64> {
    let consumer: StreamConsumer = consumer_config(env)
        .set("group.id", format!("raw-e2e-{}", uuid::Uuid::now_v7().simple()))
        .set("auto.offset.reset", "latest")
        .create()
        .expect("consumer");
    consumer.subscribe(&["bench-e2e"]).expect("subscribe");
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
        let _ = producer.send_result(FutureRecord::to("bench-e2e").key(&key).payload(&payload));
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
    // B2 leaves tens of thousands of unsent rows behind (its last throughput phase); B4 measures
    // new events, not the relay draining (and deleting) someone else's backlog first.
    crate::common::truncate(&mut env.conn().await).await;
    let secs = (20.0 * env.scale).clamp(5.0, 20.0);
    let rate = 200.0;
    let percentiles = [50.0, 95.0, 99.0, 100.0];
    // Per run: each percentile of the SDK and of the raw path; runs alternate which goes first.
    let (mut sdk_p, mut raw_p) = (vec![Vec::new(); 4], vec![Vec::new(); 4]);
    let (mut sdk_all, mut raw_all) = (Vec::new(), Vec::new());
    for run in 0..env.runs {
        let (mut raw_lat, mut sdk_lat) = if run % 2 == 0 {
            let r = raw(env, rate, secs).await;
            (r, sdk(env, rate, secs).await)
        } else {
            let s = sdk(env, rate, secs).await;
            (raw(env, rate, secs).await, s)
        };
        raw_lat.sort_by(f64::total_cmp);
        sdk_lat.sort_by(f64::total_cmp);
        for (i, p) in percentiles.iter().enumerate() {
            sdk_p[i].push(percentile(&sdk_lat, *p));
            raw_p[i].push(percentile(&raw_lat, *p));
        }
        eprintln!("B4 run {run}: SDK commit→handler {}; raw produce→consume {}", summary(&sdk_lat), summary(&raw_lat));
        sdk_all.extend(sdk_lat);
        raw_all.extend(raw_lat);
    }
    sdk_all.sort_by(f64::total_cmp);
    raw_all.sort_by(f64::total_cmp);
    let fig = |id, what: &str, i: usize, target: &str, bound| Figure {
        id,
        what: what.into(),
        unit: "ms",
        sdk: sdk_p[i].clone(),
        baseline: raw_p[i].clone(),
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
            "≤ 3 ms absolute",
            None,
        ),
        fig("B4 p95", "end-to-end p95", 1, "–", None),
        fig("B4 p99", "end-to-end p99", 2, "≤ 1.5× raw p99", Some(1.5)),
        fig("B4 max", "end-to-end max", 3, "–", None),
    ];
    figures[0].note = format!(
        "{} runs of {secs:.0} s at {rate} msg/s, all runs pooled: SDK {}; raw {}; p50 target (median of runs) met: {}",
        env.runs,
        summary(&sdk_all),
        summary(&raw_all),
        if median(&sdk_p[0]) <= 3.0 { "yes" } else { "no" }
    );
    figures
}

fn summary(v: &[f64]) -> String {
    format!(
        "n={} p50 {:.2} p95 {:.2} p99 {:.2} max {:.2} ms",
        v.len(),
        percentile(v, 50.0),
        percentile(v, 95.0),
        percentile(v, 99.0),
        v.last().copied().unwrap_or(f64::NAN)
    )
}
