//! B5: peak RSS of a relay process draining a large backlog.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;

use crate::common::{self, Env};
use crate::stats::Figure;

/// Runs in the child process: a relay until the outbox is empty, then prints its peak RSS.
pub async fn child(idle: bool) {
    let db_url = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let brokers = std::env::var("KAFKA_BROKERS").expect("KAFKA_BROKERS");
    let manager =
        diesel_async::pooled_connection::AsyncDieselConnectionManager::<diesel_async::AsyncPgConnection>::new(&db_url);
    let pool = outbox::Pool::builder().max_size(4).build(manager).await.expect("pool");
    let relay = outbox::relay::Relay::builder(pool.clone(), outbox::KafkaConfig::new(brokers))
        .batch_size(2000)
        .listen(false)
        .poll_interval(Duration::from_millis(20))
        .build()
        .expect("relay");
    let stop = CancellationToken::new();
    let task = tokio::spawn(relay.run(stop.clone()));
    let mut conn = pool.get().await.expect("conn");
    if idle {
        tokio::time::sleep(Duration::from_secs(1)).await;
    } else {
        common::wait_empty(&mut conn).await;
    }
    stop.cancel();
    task.await.expect("task").expect("relay");
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let hwm = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap_or("VmHWM: 0 kB");
    let kb: f64 = hwm.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    println!("PEAK_RSS_KB={kb}");
}

async fn spawn_child(env: &Env, idle: bool) -> (f64, f64) {
    let exe = std::env::current_exe().expect("current exe");
    let started = Instant::now();
    let mut child = tokio::process::Command::new(exe)
        .arg(if idle { "relay-child-idle" } else { "relay-child" })
        .env("DATABASE_URL", &env.db_url)
        .env("KAFKA_BROKERS", &env.brokers)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn relay child");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut kb = 0.0;
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(v) = line.strip_prefix("PEAK_RSS_KB=") {
            kb = v.parse().unwrap_or(0.0);
        }
    }
    let status = child.wait().await.expect("child");
    assert!(status.success(), "relay child failed");
    (kb / 1024.0, started.elapsed().as_secs_f64())
}

pub async fn run(env: &Env) -> Vec<Figure> {
    let n = env.n(1_000_000);
    let mut conn = env.conn().await;
    common::truncate(&mut conn).await;
    let t = Instant::now();
    common::fill(&mut conn, "bench", n, 100).await;
    eprintln!("B5: filled {n} rows in {:.1} s", t.elapsed().as_secs_f64());
    let (idle_mib, _) = spawn_child(env, true).await;
    let (peak_mib, secs) = spawn_child(env, false).await;
    eprintln!(
        "B5: relay drained {n} rows in {secs:.1} s ({:.0}/s), peak RSS {peak_mib:.1} MiB (idle {idle_mib:.1} MiB)",
        n as f64 / secs
    );
    vec![Figure {
        id: "B5",
        what: format!("relay process peak RSS draining {n} rows (baseline: same process idle)"),
        unit: "MiB",
        sdk: vec![peak_mib],
        baseline: vec![idle_mib],
        higher_is_better: false,
        target: "≤ 64 MiB absolute".into(),
        ratio_bound: None,
        note: format!("met: {}", if peak_mib <= 64.0 { "yes" } else { "no" }),
    }]
}
