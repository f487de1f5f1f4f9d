//! B4: end-to-end latency, business commit → handler, at a steady 200 msg/s, against raw
//! produce → consume with the same producer settings, measured in the same run.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diesel_async::AsyncConnection;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::common::Env;
use crate::stats::{Figure, percentile};

#[derive(Debug, Serialize, Deserialize, JsonSchema, outbox::Event)]
#[event(topic = "bench-e2e", name = "bench.e2e")]
pub struct Stamp {
    #[event(key)]
    pub key: u32,
    /// Microseconds since the Unix epoch, taken just before COMMIT.
    pub at_us: i64,
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

struct Record(Arc<Mutex<Vec<f64>>>);

#[inbox::async_trait]
impl inbox::Handler<Stamp> for Record {
    async fn handle(&self, e: Stamp, _cx: &mut inbox::Context<'_>) -> Result<(), inbox::HandlerError> {
        let ms = (now_us() - e.at_us) as f64 / 1000.0;
        self.0.lock().map_err(|_| inbox::HandlerError::permanent("poisoned"))?.push(ms);
        Ok(())
    }
}

/// Both consumers fetch with `fetch.wait.max.ms=5`: librdkafka's mock broker does not end a
/// long-poll fetch when data arrives (a real broker does), so the default 500 ms would measure
/// the mock, not the path. Applied identically to the SDK and the baseline.
fn consumer_config(env: &Env) -> rdkafka::ClientConfig {
    let mut c = rdkafka::ClientConfig::new();
    c.set("bootstrap.servers", &env.brokers).set("fetch.wait.max.ms", "5");
    c
}

async fn sdk(env: &Env, rate: f64, secs: f64) -> Vec<f64> {
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let stop = CancellationToken::new();
    let relay = outbox::relay::Relay::builder(env.pool(4).await, outbox::KafkaConfig::new(&env.brokers))
        .build()
        .expect("relay");
    let relay_task = tokio::spawn(relay.run(stop.clone()));
    let inbox = inbox::Inbox::builder(env.pool(4).await, consumer_config(env))
        .group(format!("e2e-{}", uuid::Uuid::now_v7().simple()))
        .handle(Record(latencies.clone()))
        .build()
        .expect("inbox");
    let inbox_task = tokio::spawn(inbox.run(stop.clone()));
    // Warm-up, not measured: group join, partition assignment and the first-message position
    // check of every partition (one message per key covers all partitions).
    let mut conn = env.conn().await;
    for key in 0..50u32 {
        conn.transaction::<_, outbox::Error, _>(async |tx| {
            outbox::publish(tx, &Stamp { key, at_us: now_us() }).await?;
            Ok(())
        })
        .await
        .expect("publish");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while latencies.lock().expect("lock").len() < 50 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    latencies.lock().expect("lock").clear();
    let n = (rate * secs) as u32;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    for i in 0..n {
        tick.tick().await;
        conn.transaction::<_, outbox::Error, _>(async |tx| {
            outbox::publish(tx, &Stamp { key: i % 50, at_us: now_us() }).await?;
            Ok(())
        })
        .await
        .expect("publish");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while latencies.lock().expect("lock").len() < n as usize && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    let _ = relay_task.await;
    let _ = inbox_task.await;
    latencies.lock().expect("lock").clone()
}

async fn raw(env: &Env, rate: f64, secs: f64) -> Vec<f64> {
    let consumer: StreamConsumer = consumer_config(env)
        .set("group.id", format!("raw-e2e-{}", uuid::Uuid::now_v7().simple()))
        .set("auto.offset.reset", "latest")
        .create()
        .expect("consumer");
    consumer.subscribe(&["bench-e2e"]).expect("subscribe");
    let n = (rate * secs) as usize;
    let warm_up = 50;
    let reader = tokio::spawn(async move {
        let mut out = Vec::with_capacity(n + warm_up);
        while out.len() < n + warm_up {
            match tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await {
                Ok(Ok(m)) => {
                    if let Ok(s) = serde_json::from_slice::<Stamp>(m.payload().unwrap_or_default()) {
                        out.push((now_us() - s.at_us) as f64 / 1000.0);
                    }
                }
                _ => break,
            }
        }
        out.split_off(warm_up.min(out.len()))
    });
    tokio::time::sleep(Duration::from_secs(3)).await; // group join, partition assignment
    let producer: FutureProducer = env.producer_config().create().expect("producer");
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    for i in 0..n + warm_up {
        tick.tick().await;
        let payload = serde_json::to_vec(&Stamp { key: (i % 50) as u32, at_us: now_us() }).expect("json");
        let key = (i % 50).to_string();
        // Not awaited one by one: the SDK's relay does not either.
        let _ = producer.send_result(FutureRecord::to("bench-e2e").key(&key).payload(&payload));
    }
    reader.await.expect("reader")
}

pub async fn run(env: &Env) -> Vec<Figure> {
    let secs = (20.0 * env.scale).clamp(5.0, 20.0);
    let rate = 200.0;
    let mut raw_lat = raw(env, rate, secs).await;
    let mut sdk_lat = sdk(env, rate, secs).await;
    raw_lat.sort_by(f64::total_cmp);
    sdk_lat.sort_by(f64::total_cmp);
    let summary = |v: &[f64]| {
        format!(
            "n={} p50 {:.2} p95 {:.2} p99 {:.2} max {:.2} ms",
            v.len(),
            percentile(v, 50.0),
            percentile(v, 95.0),
            percentile(v, 99.0),
            v.last().copied().unwrap_or(f64::NAN)
        )
    };
    eprintln!("B4 SDK commit→handler: {}", summary(&sdk_lat));
    eprintln!("B4 raw produce→consume: {}", summary(&raw_lat));
    let fig = |id, what: &str, p: f64, target: &str, bound| Figure {
        id,
        what: what.into(),
        unit: "ms",
        sdk: vec![percentile(&sdk_lat, p)],
        baseline: vec![percentile(&raw_lat, p)],
        higher_is_better: false,
        target: target.into(),
        ratio_bound: bound,
        note: String::new(),
    };
    let mut figures = vec![
        fig(
            "B4 p50",
            "end-to-end commit→handler at 200 msg/s, p50 (baseline: raw produce→consume)",
            50.0,
            "≤ 3 ms absolute",
            None,
        ),
        fig("B4 p95", "end-to-end p95", 95.0, "–", None),
        fig("B4 p99", "end-to-end p99", 99.0, "≤ 1.5× raw p99", Some(1.5)),
        fig("B4 max", "end-to-end max", 100.0, "–", None),
    ];
    figures[0].note = format!(
        "{secs:.0} s at {rate} msg/s; SDK {}; raw {}; p50 target met: {}",
        summary(&sdk_lat),
        summary(&raw_lat),
        if percentile(&sdk_lat, 50.0) <= 3.0 { "yes" } else { "no" }
    );
    figures
}
