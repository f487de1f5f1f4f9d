//! BP: B2 (what an outbox event costs a business transaction) and B4 (COMMIT → handler) through
//! PgBouncer in transaction mode (`PGBOUNCER_URL`, started by scripts/bench; `outbox::pooler`
//! connections), each beside the same measurement straight to PostgreSQL in the same run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use diesel_async::AsyncPgConnection;

use crate::b2::{Mode, business_tx, reset};
use crate::common::Env;
use crate::stats::{Figure, median, percentile};

/// The bench database through PgBouncer: its `*` entry maps the name to the same database.
fn via_pgbouncer(env: &Env) -> String {
    let url = std::env::var("PGBOUNCER_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .expect("BP needs PGBOUNCER_URL (scripts/bench starts PgBouncer in transaction mode)");
    let db = env.db_url.rsplit_once('/').map_or("", |(_, db)| db);
    crate::common::with_database(&url, db)
}

async fn pooled_conn(url: &str) -> AsyncPgConnection {
    outbox::pooler::establish(url).await.expect("connect through PgBouncer")
}

/// Median latency (ms) of `n` SDK transactions through PgBouncer and `n` direct, interleaved
/// one by one (a, b, b, a, ...) so drift hits both alike.
async fn latency(env: &Env, url: &str, n: usize) -> (f64, f64) {
    let (mut via, mut direct) = (pooled_conn(url).await, env.conn().await);
    let (mut sv, mut sd) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        for pooled in if i % 2 == 0 { [true, false] } else { [false, true] } {
            let t = Instant::now();
            business_tx(if pooled { &mut via } else { &mut direct }, Mode::Sdk).await;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            if pooled { sv.push(ms) } else { sd.push(ms) }
        }
    }
    (median(&sv), median(&sd))
}

/// Transactions per second of 8 concurrent SDK writers for `secs`, through PgBouncer or direct.
async fn tps(env: &Env, url: Option<&str>, secs: f64) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut conn = match url {
            Some(url) => pooled_conn(url).await,
            None => env.conn().await,
        };
        let (stop, done) = (stop.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            while !AtomicBool::load(&stop, Ordering::Relaxed) {
                business_tx(&mut conn, Mode::Sdk).await;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let n = AtomicU64::load(&done, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("writer");
    }
    n as f64 / elapsed
}

pub async fn run(env: &Env) -> Vec<Figure> {
    let url = via_pgbouncer(env);
    // B2's business table (B2 may not have run).
    let mut conn = env.conn().await;
    diesel_async::SimpleAsyncConnection::batch_execute(
        &mut conn,
        "CREATE TABLE IF NOT EXISTS bench_orders (id uuid PRIMARY KEY, customer text NOT NULL, total_cents bigint NOT NULL,
         created_at timestamptz NOT NULL DEFAULT now())",
    )
    .await
    .expect("orders table");
    outbox::set_notify(&mut conn, false).await.expect("notify off");
    let n = env.n(2000);
    let secs = (5.0 * env.scale).clamp(1.0, 5.0);
    let (e2e_secs, rate) = ((20.0 * env.scale).clamp(5.0, 20.0), 200.0);
    let (mut lat_via, mut lat_direct, mut tps_via, mut tps_direct) = (vec![], vec![], vec![], vec![]);
    let (mut p50_via, mut p50_direct, mut p99_via, mut p99_direct) = (vec![], vec![], vec![], vec![]);
    for run in 0..env.runs {
        reset(env).await;
        let (v, d) = latency(env, &url, n).await;
        lat_via.push(v);
        lat_direct.push(d);
        reset(env).await;
        // Alternate which goes first.
        for pooled in if run % 2 == 0 { [true, false] } else { [false, true] } {
            let t = tps(env, pooled.then_some(url.as_str()), secs).await;
            if pooled { tps_via.push(t) } else { tps_direct.push(t) }
        }
        crate::common::truncate(&mut conn).await;
        let (mut via, mut direct) = (Vec::new(), Vec::new());
        for pooled in if run % 2 == 0 { [true, false] } else { [false, true] } {
            let mut l = crate::b4::sdk(env, rate, e2e_secs, pooled.then_some(url.as_str())).await;
            l.sort_by(f64::total_cmp);
            if pooled { via = l } else { direct = l }
        }
        p50_via.push(percentile(&via, 50.0));
        p50_direct.push(percentile(&direct, 50.0));
        p99_via.push(percentile(&via, 99.0));
        p99_direct.push(percentile(&direct, 99.0));
        eprintln!(
            "BP run {run}: single-writer SDK tx {v:.3} ms through PgBouncer / {d:.3} ms direct; 8 writers {:.0} / {:.0} tx/s; \
             B4 through PgBouncer {}; direct {}",
            tps_via[run],
            tps_direct[run],
            crate::b4::summary(&via),
            crate::b4::summary(&direct)
        );
    }
    let fig = |id, what: &str, unit, sdk: &[f64], baseline: &[f64], higher_is_better| Figure {
        id,
        what: what.into(),
        unit,
        sdk: sdk.to_vec(),
        baseline: baseline.to_vec(),
        higher_is_better,
        target: "–".into(),
        ratio_bound: None,
        note: String::new(),
    };
    let mut figures = vec![
        fig(
            "B2p",
            "single writer: business tx + SDK event, through PgBouncer 1.18 transaction mode (outbox::pooler) vs direct",
            "ms",
            &lat_via,
            &lat_direct,
            false,
        ),
        fig(
            "B2p 8w",
            "8 writers: TPS with SDK event, through PgBouncer vs direct",
            "tx/s",
            &tps_via,
            &tps_direct,
            true,
        ),
        fig(
            "B4p p50",
            "end-to-end COMMIT → handler p50 at 200 msg/s, through PgBouncer vs direct",
            "ms",
            &p50_via,
            &p50_direct,
            false,
        ),
        fig("B4p p99", "end-to-end p99, through PgBouncer vs direct", "ms", &p99_via, &p99_direct, false),
    ];
    figures[0].note = "through PgBouncer the statement cache is off: each statement is prepared, run and closed in \
                       its transaction (B2p median of runs: "
        .to_owned()
        + &format!("{:.3} ms vs {:.3} ms direct)", median(&lat_via), median(&lat_direct));
    figures
}
