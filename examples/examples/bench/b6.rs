//! B6: soak. Writers at half of the measured end-to-end capacity for `BENCH_SOAK_MINUTES`
//! (default 30) with the relay and an inbox (one-row handler, 5-minute dedup window) running;
//! compares the handled rate of the last five minutes with the first five, and the size of the
//! outbox and inbox tables (with indexes) at the end with their size at minute five.
//! Opt-in (`BENCH_ONLY=B6`): it takes longer than the 15-minute budget of the default report.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::common::Env;
use crate::stats::Figure;

#[derive(Debug, Serialize, Deserialize, JsonSchema, outbox::Event)]
#[event(topic = "bench-soak", name = "bench.soak")]
pub struct Tick {
    #[event(key)]
    pub key: u32,
    pub n: u64,
    pub pad: String,
}

struct Count(Arc<AtomicU64>);

#[inbox::async_trait]
impl inbox::Handler<Tick> for Count {
    async fn handle(&self, e: Tick, cx: &mut inbox::Context<'_>) -> Result<(), inbox::HandlerError> {
        diesel::sql_query("INSERT INTO soak_effects (n) VALUES ($1)")
            .bind::<diesel::sql_types::BigInt, _>(e.n as i64)
            .execute(cx.conn())
            .await?;
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

#[derive(QueryableByName)]
struct Sizes {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    outbox: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    inbox: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pending: i64,
}

async fn sizes(conn: &mut AsyncPgConnection) -> Sizes {
    diesel::sql_query(
        "SELECT pg_total_relation_size('outbox_messages') AS outbox, pg_total_relation_size('inbox_messages') AS inbox, \
         (SELECT count(*) FROM outbox_messages) AS pending",
    )
    .get_result(conn)
    .await
    .expect("sizes")
}

/// Writers publishing 10 events per transaction at `rate` events/s in total (unpaced when
/// `rate` is 0), until `stop`.
fn writers(env: &Env, rate: f64, stop: CancellationToken, written: Arc<AtomicU64>) -> Vec<tokio::task::JoinHandle<()>> {
    const WRITERS: usize = 4;
    const PER_TX: u64 = 10;
    (0..WRITERS)
        .map(|w| {
            let url = env.db_url.clone();
            let stop = stop.clone();
            let written = written.clone();
            tokio::spawn(async move {
                let mut conn = AsyncPgConnection::establish(&url).await.expect("connect");
                let period = if rate > 0.0 {
                    Duration::from_secs_f64(PER_TX as f64 * WRITERS as f64 / rate)
                } else {
                    Duration::ZERO
                };
                let mut next = Instant::now();
                let mut n = w as u64 * 1_000_000_000;
                while !stop.is_cancelled() {
                    let events: Vec<Tick> = (0..PER_TX)
                        .map(|i| Tick { key: ((n + i) % 100) as u32, n: n + i, pad: "x".repeat(200) })
                        .collect();
                    n += PER_TX;
                    conn.transaction::<_, outbox::Error, _>(async |tx| {
                        outbox::publish_all(tx, &events).await.map(drop)
                    })
                    .await
                    .expect("publish");
                    written.fetch_add(PER_TX, Ordering::Relaxed);
                    if !period.is_zero() {
                        next += period;
                        if let Some(wait) = next.checked_duration_since(Instant::now()) {
                            tokio::time::sleep(wait).await;
                        }
                    }
                }
            })
        })
        .collect()
}

pub async fn run(env: &Env) -> Vec<Figure> {
    let minutes: f64 = std::env::var("BENCH_SOAK_MINUTES").ok().and_then(|m| m.parse().ok()).unwrap_or(30.0);
    let window = (minutes / 6.0).clamp(0.5, 5.0); // five minutes in a 30-minute soak
    let mut conn = env.conn().await;
    diesel::sql_query("CREATE TABLE IF NOT EXISTS soak_effects (n bigint NOT NULL)")
        .execute(&mut conn)
        .await
        .expect("table");
    let handled = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let relay = outbox::relay::Relay::builder(env.pool(4).await, outbox::KafkaConfig::new(&env.brokers))
        .build()
        .expect("relay");
    let relay_task = tokio::spawn(relay.run(stop.clone()));
    let inbox = inbox::Inbox::builder(env.pool(4).await, env.brokers.as_str())
        .group("soak")
        .handle(Count(handled.clone()))
        .dedup_window(Duration::from_secs_f64(window * 60.0))
        .prune_interval(Duration::from_secs(10))
        .build()
        .expect("inbox");
    let inbox_task = tokio::spawn(inbox.run(stop.clone()));

    // Calibration: writers unpaced for 20 s, then everything drained through the inbox;
    // capacity = events written / time until the handler has seen the last of them.
    let written = Arc::new(AtomicU64::new(0));
    tokio::time::sleep(Duration::from_secs(5)).await; // group join
    let calibrate = CancellationToken::new();
    let h0 = AtomicU64::load(&handled, Ordering::Relaxed);
    let t0 = Instant::now();
    let tasks = writers(env, 0.0, calibrate.clone(), written.clone());
    tokio::time::sleep(Duration::from_secs(20)).await;
    calibrate.cancel();
    for t in tasks {
        let _ = t.await;
    }
    let total = AtomicU64::load(&written, Ordering::Relaxed);
    while AtomicU64::load(&handled, Ordering::Relaxed) - h0 < total {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let capacity = total as f64 / t0.elapsed().as_secs_f64();
    let rate = capacity / 2.0;
    eprintln!("B6: end-to-end capacity {capacity:.0} events/s; soaking at {rate:.0} events/s for {minutes} min");

    let soak = CancellationToken::new();
    let tasks = writers(env, rate, soak.clone(), written.clone());
    let started = Instant::now();
    let mut per_minute: Vec<(f64, u64, Sizes)> = Vec::new();
    let step = Duration::from_secs_f64(window * 60.0 / 5.0);
    let mut last = AtomicU64::load(&handled, Ordering::Relaxed);
    let mut at_window: Option<Sizes> = None;
    while started.elapsed().as_secs_f64() < minutes * 60.0 {
        tokio::time::sleep(step).await;
        let now = AtomicU64::load(&handled, Ordering::Relaxed);
        let s = sizes(&mut conn).await;
        let t = started.elapsed().as_secs_f64() / 60.0;
        eprintln!(
            "B6 t={t:.1} min: handled {:.0}/s, outbox {} rows pending, outbox {} KiB, inbox dedup {} KiB",
            (now - last) as f64 / step.as_secs_f64(),
            s.pending,
            s.outbox / 1024,
            s.inbox / 1024
        );
        if at_window.is_none() && t >= window {
            at_window = Some(Sizes { outbox: s.outbox, inbox: s.inbox, pending: s.pending });
        }
        per_minute.push((t, now - last, s));
        last = now;
    }
    soak.cancel();
    for t in tasks {
        let _ = t.await;
    }
    stop.cancel();
    let _ = relay_task.await;
    let _ = inbox_task.await;

    let samples_per_window = 5;
    let rate_of =
        |xs: &[(f64, u64, Sizes)]| xs.iter().map(|x| x.1).sum::<u64>() as f64 / (xs.len() as f64 * step.as_secs_f64());
    let first = rate_of(&per_minute[..samples_per_window.min(per_minute.len())]);
    let last_rate = rate_of(&per_minute[per_minute.len().saturating_sub(samples_per_window)..]);
    let end = per_minute.last().map(|x| (x.2.outbox, x.2.inbox)).unwrap_or_default();
    let base = at_window.map(|s| (s.outbox, s.inbox)).unwrap_or(end);
    let note = format!(
        "{minutes} min at {rate:.0} events/s (half of the measured end-to-end capacity {capacity:.0}/s), 4 writers × 10 events/tx, \
         relay + inbox with a one-row handler, dedup window {window} min; windows of {window} min"
    );
    vec![
        Figure {
            id: "B6 rate",
            what: format!("soak: handled events/s, last {window} min (baseline: first {window} min)"),
            unit: "events/s",
            sdk: vec![last_rate],
            baseline: vec![first],
            higher_is_better: true,
            target: "≥ 0.95".into(),
            ratio_bound: Some(0.95),
            note,
        },
        Figure {
            id: "B6 outbox size",
            what: format!("soak: outbox table+indexes at the end (baseline: at minute {window})"),
            unit: "KiB",
            sdk: vec![end.0 as f64 / 1024.0],
            baseline: vec![base.0 as f64 / 1024.0],
            higher_is_better: false,
            target: "≤ 2×".into(),
            ratio_bound: Some(2.0),
            note: String::new(),
        },
        Figure {
            id: "B6 inbox size",
            what: format!("soak: inbox dedup table+indexes at the end (baseline: at minute {window})"),
            unit: "KiB",
            sdk: vec![end.1 as f64 / 1024.0],
            baseline: vec![base.1 as f64 / 1024.0],
            higher_is_better: false,
            target: "≤ 2×".into(),
            ratio_bound: Some(2.0),
            note: String::new(),
        },
    ]
}
