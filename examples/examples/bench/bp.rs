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

/// Median latencies (ms) of `n` SDK transactions each through PgBouncer, direct with
/// `outbox::pooler` connections (the mode without the hop), and direct, interleaved one by one
/// in rotating order so drift hits all alike.
async fn latency(env: &Env, url: &str, n: usize) -> [f64; 3] {
    let mut conns = [pooled_conn(url).await, pooled_conn(&env.db_url).await, env.conn().await];
    let mut samples = [Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n)];
    for i in 0..n {
        for k in 0..3 {
            let arm = (i + k) % 3;
            let t = Instant::now();
            business_tx(&mut conns[arm], Mode::Sdk).await;
            samples[arm].push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    samples.map(|s| median(&s))
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
    // Per arm: 0 through PgBouncer, 1 direct with outbox::pooler connections, 2 direct.
    let (mut lat, mut tps_of) = (<[Vec<f64>; 3]>::default(), <[Vec<f64>; 3]>::default());
    let (mut p50, mut p99) = (<[Vec<f64>; 3]>::default(), <[Vec<f64>; 3]>::default());
    let urls = [Some(url.as_str()), Some(env.db_url.as_str()), None];
    for run in 0..env.runs {
        reset(env).await;
        for (arm, ms) in latency(env, &url, n).await.into_iter().enumerate() {
            lat[arm].push(ms);
        }
        reset(env).await;
        // Rotate which goes first.
        for k in 0..3 {
            let arm = (run + k) % 3;
            let t = tps(env, urls[arm], secs).await;
            tps_of[arm].push(t);
        }
        crate::common::truncate(&mut conn).await;
        let mut e2e = <[Vec<f64>; 3]>::default();
        for k in 0..3 {
            let arm = (run + k) % 3;
            let mut l = crate::b4::sdk(env, rate, e2e_secs, urls[arm]).await;
            l.sort_by(f64::total_cmp);
            p50[arm].push(percentile(&l, 50.0));
            p99[arm].push(percentile(&l, 99.0));
            e2e[arm] = l;
        }
        eprintln!(
            "BP run {run}: single-writer SDK tx {:.3} ms through PgBouncer / {:.3} ms direct with outbox::pooler / \
             {:.3} ms direct; 8 writers {:.0} / {:.0} / {:.0} tx/s; B4 through PgBouncer {}; direct with outbox::pooler {}; \
             direct {}",
            lat[0][run],
            lat[1][run],
            lat[2][run],
            tps_of[0][run],
            tps_of[1][run],
            tps_of[2][run],
            crate::b4::summary(&e2e[0]),
            crate::b4::summary(&e2e[1]),
            crate::b4::summary(&e2e[2])
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
            &lat[0],
            &lat[2],
            false,
        ),
        fig(
            "B2p mode",
            "single writer: the same, direct with outbox::pooler connections (the mode, no PgBouncer) vs direct",
            "ms",
            &lat[1],
            &lat[2],
            false,
        ),
        fig(
            "B2p 8w",
            "8 writers: TPS with SDK event, through PgBouncer vs direct",
            "tx/s",
            &tps_of[0],
            &tps_of[2],
            true,
        ),
        fig(
            "B2p 8w mode",
            "8 writers: TPS with SDK event, direct with outbox::pooler connections vs direct",
            "tx/s",
            &tps_of[1],
            &tps_of[2],
            true,
        ),
        fig(
            "B4p p50",
            "end-to-end COMMIT → handler p50 at 200 msg/s, through PgBouncer vs direct",
            "ms",
            &p50[0],
            &p50[2],
            false,
        ),
        fig("B4p p99", "end-to-end p99, through PgBouncer vs direct", "ms", &p99[0], &p99[2], false),
        fig(
            "B4p p50 mode",
            "end-to-end p50, direct with outbox::pooler pools (claim in a transaction, no LISTEN) vs direct",
            "ms",
            &p50[1],
            &p50[2],
            false,
        ),
    ];
    figures[0].note = "through PgBouncer the statement cache is off: each statement is prepared, run and closed in \
                       its transaction; `mode` rows: the same connections straight to PostgreSQL, which separates the \
                       mode's cost from PgBouncer's hop"
        .to_owned();
    figures
}
