//! B2: what one outbox event adds to a business transaction.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use diesel::sql_types::{Bytea, Integer, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use schemars::JsonSchema;
use serde::Serialize;
use uuid::Uuid;

use crate::common::Env;
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
enum Mode {
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

async fn business_tx(conn: &mut AsyncPgConnection, mode: Mode) {
    conn.transaction::<_, outbox::Error, _>(async |tx| {
        let e = event();
        diesel::sql_query("INSERT INTO bench_orders (id, customer, total_cents) VALUES ($1, $2, $3)")
            .bind::<SqlUuid, _>(e.order_id)
            .bind::<Text, _>(&e.customer)
            .bind::<diesel::sql_types::BigInt, _>(e.total_cents)
            .execute(tx)
            .await?;
        match mode {
            Mode::Bare => {}
            Mode::TwoRows => {
                diesel::sql_query("INSERT INTO bench_orders (id, customer, total_cents) VALUES ($1, $2, $3)")
                    .bind::<SqlUuid, _>(Uuid::now_v7())
                    .bind::<Text, _>(&e.customer)
                    .bind::<diesel::sql_types::BigInt, _>(e.total_cents)
                    .execute(tx)
                    .await?;
            }
            Mode::HandWritten => {
                let payload = serde_json::to_vec(&e).expect("json");
                diesel::sql_query(
                    "INSERT INTO outbox_messages (id, topic, key, event_type, event_version, payload, headers, occurred_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind::<SqlUuid, _>(Uuid::now_v7())
                .bind::<Text, _>("orders")
                .bind::<Nullable<Text>, _>(Some(e.order_id.to_string()))
                .bind::<Text, _>("order.placed")
                .bind::<Integer, _>(1)
                .bind::<Bytea, _>(payload)
                .bind::<Jsonb, _>(serde_json::json!({}))
                .bind::<Timestamptz, _>(chrono::Utc::now())
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

/// Transactions per second of `writers` concurrent writers for `secs`.
async fn tps(env: &Env, mode: Mode, writers: usize, secs: f64) -> f64 {
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
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let n = AtomicU64::load(&done, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    for t in tasks {
        t.await.expect("writer");
    }
    n as f64 / elapsed
}

async fn reset(env: &Env) {
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
    let (mut tps_sdk, mut tps_bare, mut tps_quiet, mut tps_hand) = (vec![], vec![], vec![], vec![]);
    let mut tps_two = vec![];
    for run in 0..env.runs {
        reset(env).await;
        outbox::set_notify(&mut conn, true).await.expect("notify on");
        // Alternate SDK and baseline so drift on a noisy machine hits both.
        let (sdk, hand) = latency_pair(env, Mode::Sdk, Mode::HandWritten, n).await;
        lat_sdk.push(sdk);
        lat_hand.push(hand);
        let (ten, one) = latency_pair(env, Mode::Sdk10, Mode::Sdk, n / 2).await;
        lat_10.push(ten);
        lat_1.push(one);
        reset(env).await;
        tps_bare.push(tps(env, Mode::Bare, 8, secs).await);
        tps_sdk.push(tps(env, Mode::Sdk, 8, secs).await);
        outbox::set_notify(&mut conn, false).await.expect("notify off");
        tps_hand.push(tps(env, Mode::HandWritten, 8, secs).await);
        tps_quiet.push(tps(env, Mode::Sdk, 8, secs).await);
        tps_two.push(tps(env, Mode::TwoRows, 8, secs).await);
        outbox::set_notify(&mut conn, true).await.expect("notify on");
        eprintln!(
            "B2 run {run}: latency sdk {:.3} ms / hand-written {:.3} ms; 10 events {:.3} ms / 1 event {:.3} ms; \
             8 writers: {:.0} tps with outbox (NOTIFY on), {:.0} (NOTIFY off), {:.0} hand-written outbox INSERT \
             (no NOTIFY), {:.0} with a second business INSERT instead, {:.0} without",
            lat_sdk[run],
            lat_hand[run],
            lat_10[run],
            lat_1[run],
            tps_sdk[run],
            tps_quiet[run],
            tps_hand[run],
            tps_two[run],
            tps_bare[run]
        );
    }
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
            tps_sdk.clone(),
            tps_bare.clone(),
            true,
            "≥ 0.95",
            Some(0.95),
        ),
        fig(
            "B2b",
            "8 writers, sync commit: TPS with outbox (default: no NOTIFY) vs without",
            "tx/s",
            tps_quiet.clone(),
            tps_bare,
            true,
            "≥ 0.95",
            Some(0.95),
        ),
        fig(
            "B2f",
            "8 writers: TPS with SDK event vs hand-written outbox INSERT (both NOTIFY off)",
            "tx/s",
            tps_quiet.clone(),
            tps_hand,
            true,
            "–",
            None,
        ),
        fig(
            "B2g",
            "8 writers: TPS with SDK event vs a second business INSERT instead (no outbox; NOTIFY off)",
            "tx/s",
            tps_quiet.clone(),
            tps_two,
            true,
            "–",
            None,
        ),
        fig("B2d", "8 writers: NOTIFY on vs off (cost of the wakeup)", "tx/s", tps_sdk, tps_quiet, true, "–", None),
        fig("B2e", "10 events per tx vs 1", "ms", lat_10, lat_1, false, "≤ 1.5×", Some(1.5)),
    ]
}
