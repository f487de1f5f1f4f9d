//! B2: what one outbox event adds to a business transaction.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use diesel::ExpressionMethods;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use schemars::JsonSchema;
use serde::Serialize;
use uuid::Uuid;

use crate::common::{CpuClock, Env, cores_busy};
use crate::stats::{Figure, median};

#[derive(Serialize, JsonSchema, outbox::Event)]
#[event(topic = "orders", name = "order.placed")]
struct OrderPlaced {
    #[event(key)]
    order_id: Uuid,
    customer: String,
    total_cents: i64,
    note: String,
}

fn event() -> OrderPlaced {
    OrderPlaced { order_id: Uuid::now_v7(), customer: "customer-42".into(), total_cents: 4200, note: "n".repeat(150) }
}

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Mode {
    /// The business INSERT alone.
    Bare,
    /// Business INSERT + a hand-written INSERT of the same outbox row.
    HandWritten,
    /// Business INSERT + `outbox::publish`.
    Sdk,
    /// Business INSERT + `outbox::publish_all` of 10 events.
    Sdk10,
    /// Two business INSERTs and no outbox: what any second statement costs.
    TwoRows,
}

diesel::table! {
    /// The business table of the benchmark.
    bench_orders (id) {
        id -> Uuid,
        customer -> Text,
        total_cents -> BigInt,
    }
}

/// One business row, written with diesel's DSL like an application would (a statement
/// diesel-async keeps prepared, one round trip).
async fn insert_order(tx: &mut AsyncPgConnection, id: Uuid, e: &OrderPlaced) -> diesel::QueryResult<usize> {
    diesel::insert_into(bench_orders::table)
        .values((
            bench_orders::id.eq(id),
            bench_orders::customer.eq(&e.customer),
            bench_orders::total_cents.eq(e.total_cents),
        ))
        .execute(tx)
        .await
}

pub(crate) async fn business_tx(conn: &mut AsyncPgConnection, mode: Mode) {
    conn.transaction::<_, outbox::Error, _>(async |tx| {
        let e = event();
        insert_order(tx, e.order_id, &e).await?;
        match mode {
            Mode::Bare => {}
            Mode::TwoRows => {
                insert_order(tx, Uuid::now_v7(), &e).await?;
            }
            Mode::HandWritten => {
                // The same row the SDK stores, written by hand with diesel's DSL.
                use outbox::schema::outbox_messages as m;
                let payload = serde_json::to_vec(&e).expect("json");
                diesel::insert_into(m::table)
                    .values((
                        m::id.eq(Uuid::now_v7()),
                        m::topic.eq("orders"),
                        m::key.eq(Some(e.order_id.to_string())),
                        m::event_type.eq("order.placed"),
                        m::event_version.eq(1),
                        m::payload.eq(payload),
                        m::headers.eq(serde_json::json!({})),
                        m::occurred_at.eq(chrono::Utc::now()),
                    ))
                    .execute(tx)
                    .await?;
            }
            Mode::Sdk => {
                outbox::publish(tx, &e).await?;
            }
            Mode::Sdk10 => {
                let events: Vec<OrderPlaced> = (0..10).map(|_| event()).collect();
                outbox::publish_all(tx, &events).await?;
            }
        }
        Ok(())
    })
    .await
    .expect("business transaction");
}

/// Median latencies (ms) of `n` transactions of mode `a` and `n` of mode `b`, interleaved one
/// by one on one connection (a, b, b, a, a, b, ...), so drift on a noisy machine hits both alike.
async fn latency_pair(env: &Env, a: Mode, b: Mode, n: usize) -> (f64, f64) {
    let mut conn = env.conn().await;
    let (mut sa, mut sb) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let order = if i % 2 == 0 { [(a, true), (b, false)] } else { [(b, false), (a, true)] };
        for (mode, is_a) in order {
            let t = Instant::now();
            business_tx(&mut conn, mode).await;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            if is_a { sa.push(ms) } else { sb.push(ms) }
        }
    }
    (median(&sa), median(&sb))
}

/// Transactions per second of `writers` concurrent writers for `secs`, and the machine CPU
/// (client and server together) per transaction, in µs.
async fn tps(env: &Env, mode: Mode, writers: usize, secs: f64) -> (f64, Option<f64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let mut conn = env.conn().await;
        let (stop, done) = (stop.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            while !AtomicBool::load(&stop, Ordering::Relaxed) {
                business_tx(&mut conn, mode).await;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let started = Instant::now();
    let cpu = CpuClock::start();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let n = AtomicU64::load(&done, Ordering::Relaxed);
    let us = cpu.per_item_us(n as usize);
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("writer");
    }
    (n as f64 / elapsed, us)
}

/// One kind of 8-writer phase over the runs: transactions per second and machine CPU per
/// transaction (µs), one entry per run.
#[derive(Default)]
struct Phase {
    tps: Vec<f64>,
    cpu_us: Vec<f64>,
}

impl Phase {
    async fn run(&mut self, env: &Env, mode: Mode, secs: f64) {
        let (tps, cpu_us) = tps(env, mode, 8, secs).await;
        self.tps.push(tps);
        self.cpu_us.extend(cpu_us);
    }

    /// "230 µs (1.49 cores busy)", medians over the runs.
    fn cpu(&self) -> String {
        let us = median(&self.cpu_us);
        format!("{us:.0} µs ({:.2} cores busy)", cores_busy(us, median(&self.tps)))
    }
}

pub(crate) async fn reset(env: &Env) {
    let mut conn = env.conn().await;
    diesel::sql_query("TRUNCATE bench_orders, outbox_messages").execute(&mut conn).await.expect("truncate");
}

pub async fn run(env: &Env) -> Vec<Figure> {
    let mut conn = env.conn().await;
    diesel::sql_query(
        "CREATE TABLE IF NOT EXISTS bench_orders (id uuid PRIMARY KEY, customer text NOT NULL, total_cents bigint NOT NULL,
         created_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(&mut conn)
    .await
    .expect("orders table");
    let n = env.n(2000);
    let secs = (5.0 * env.scale).clamp(1.0, 5.0);
    let (mut lat_sdk, mut lat_hand, mut lat_10, mut lat_1) = (vec![], vec![], vec![], vec![]);
    // 8-writer phases: the SDK with NOTIFY on (`notify`) and off (`quiet`), and the baselines.
    let (mut notify, mut quiet, mut hand, mut two, mut bare) = Default::default();
    for run in 0..env.runs {
        reset(env).await;
        outbox::set_notify(&mut conn, true).await.expect("notify on");
        // Alternate SDK and baseline so drift on a noisy machine hits both.
        let (sdk_ms, hand_ms) = latency_pair(env, Mode::Sdk, Mode::HandWritten, n).await;
        lat_sdk.push(sdk_ms);
        lat_hand.push(hand_ms);
        let (ten, one) = latency_pair(env, Mode::Sdk10, Mode::Sdk, n / 2).await;
        lat_10.push(ten);
        lat_1.push(one);
        reset(env).await;
        // The default (no NOTIFY) next to its baselines, then the opt-in trigger.
        outbox::set_notify(&mut conn, false).await.expect("notify off");
        Phase::run(&mut bare, env, Mode::Bare, secs).await;
        Phase::run(&mut quiet, env, Mode::Sdk, secs).await;
        Phase::run(&mut two, env, Mode::TwoRows, secs).await;
        Phase::run(&mut hand, env, Mode::HandWritten, secs).await;
        outbox::set_notify(&mut conn, true).await.expect("notify on");
        Phase::run(&mut notify, env, Mode::Sdk, secs).await;
        eprintln!(
            "B2 run {run}: latency sdk {:.3} ms / hand-written {:.3} ms; 10 events {:.3} ms / 1 event {:.3} ms; \
             8 writers: {:.0} tps with outbox (NOTIFY on), {:.0} (NOTIFY off), {:.0} hand-written outbox INSERT \
             (no NOTIFY), {:.0} with a second business INSERT instead, {:.0} without",
            lat_sdk[run],
            lat_hand[run],
            lat_10[run],
            lat_1[run],
            notify.tps[run],
            quiet.tps[run],
            hand.tps[run],
            two.tps[run],
            bare.tps[run]
        );
    }
    let cpu_note = format!(
        "machine CPU per transaction at 8 writers (median, client and server): without outbox {}, \
         with the SDK's event {}, with a second business INSERT instead {}",
        bare.cpu(),
        quiet.cpu(),
        two.cpu()
    );
    eprintln!("B2b {cpu_note}");
    let fig = |id, what: &str, unit, sdk, baseline, hib, target: &str, bound| Figure {
        id,
        what: what.into(),
        unit,
        sdk,
        baseline,
        higher_is_better: hib,
        target: target.into(),
        ratio_bound: bound,
        note: String::new(),
    };
    vec![
        fig(
            "B2a",
            "single writer: tx latency, SDK event vs hand-written INSERT",
            "ms",
            lat_sdk,
            lat_hand,
            false,
            "≤ 1.03×",
            Some(1.03),
        ),
        fig(
            "B2c",
            "8 writers, sync commit: TPS with outbox, NOTIFY trigger on (opt-in) vs without",
            "tx/s",
            notify.tps.clone(),
            bare.tps.clone(),
            true,
            "≥ 0.95",
            Some(0.95),
        ),
        Figure {
            note: cpu_note,
            ..fig(
                "B2b",
                "8 writers, sync commit: TPS with outbox (default: no NOTIFY) vs without",
                "tx/s",
                quiet.tps.clone(),
                bare.tps,
                true,
                "≥ 0.95",
                Some(0.95),
            )
        },
        fig(
            "B2f",
            "8 writers: TPS with SDK event vs hand-written outbox INSERT (both NOTIFY off)",
            "tx/s",
            quiet.tps.clone(),
            hand.tps,
            true,
            "–",
            None,
        ),
        fig(
            "B2g",
            "8 writers: TPS with SDK event vs a second business INSERT instead (no outbox; NOTIFY off)",
            "tx/s",
            quiet.tps.clone(),
            two.tps,
            true,
            "–",
            None,
        ),
        fig("B2d", "8 writers: NOTIFY on vs off (cost of the wakeup)", "tx/s", notify.tps, quiet.tps, true, "–", None),
        fig("B2e", "10 events per tx vs 1", "ms", lat_10, lat_1, false, "≤ 1.5×", Some(1.5)),
    ]
}
