//! Benchmarks of the outbox and inbox against raw baselines measured in the same run.
//!
//! `scripts/bench` starts PostgreSQL (fsync on) and runs this; or set DATABASE_URL (and
//! KAFKA_BROKERS for a real broker) and run `cargo run --release -p examples --example bench`.
//! BENCH_SCALE (default 1) scales every size, BENCH_RUNS (default 3) the repetitions,
//! BENCH_ONLY=B1,B2 selects figures; BP (B2 and B4 through PgBouncer, PGBOUNCER_URL) runs in a full
//! run when PGBOUNCER_URL is set, or when named; B6 (the soak, BENCH_SOAK_MINUTES, default 30) runs only when
//! named. Prints a Markdown table and writes report.{md,json} to BENCH_OUT (default
//! target/bench). tests/tests/bench_smoke.rs runs it at a tiny scale so it cannot rot.

mod b1;
mod b2;
mod b3;
mod b4;
mod b5;
mod b6;
mod bp;
mod common;
mod stats;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("relay-child") => return b5::child(false).await,
        Some("relay-child-idle") => return b5::child(true).await,
        _ => {}
    }
    let env = common::Env::new().await;
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let wanted = |id: &str| only.is_empty() || only.split(',').any(|o| o.trim().eq_ignore_ascii_case(id));
    let started = std::time::Instant::now();
    let mut figures = Vec::new();
    if wanted("B1") {
        figures.extend(b1::run(&env).await);
    }
    if wanted("B2") {
        figures.extend(b2::run(&env).await);
    }
    if wanted("B3") {
        figures.extend(b3::run(&env).await);
    }
    if wanted("B4") {
        figures.extend(b4::run(&env).await);
    }
    if wanted("B5") {
        figures.extend(b5::run(&env).await);
    }
    // BP: B2 and B4 through PgBouncer (transaction mode); when named, or in a full run with
    // PGBOUNCER_URL set (scripts/bench starts PgBouncer).
    let pgbouncer = std::env::var("PGBOUNCER_URL").is_ok_and(|u| !u.is_empty());
    if only.split(',').any(|o| o.trim().eq_ignore_ascii_case("BP")) || (only.is_empty() && pgbouncer) {
        figures.extend(bp::run(&env).await);
    }
    if only.split(',').any(|o| o.trim().eq_ignore_ascii_case("B6")) {
        figures.extend(b6::run(&env).await);
    }
    let machine = format!(
        "{} cores, {}; PostgreSQL at DATABASE_URL; Kafka: {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| c.lines().find(|l| l.starts_with("model name")).map(|l| l
                .split(':')
                .nth(1)
                .unwrap_or("")
                .trim()
                .to_owned()))
            .unwrap_or_default(),
        if env._mock.is_some() { "librdkafka mock cluster (in process)" } else { "KAFKA_BROKERS" }
    );
    let date = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC");
    let mut md = format!(
        "Benchmark run {date}, {machine}, scale {}, {} runs per figure, took {:.0} s\n\n",
        env.scale,
        env.runs,
        started.elapsed().as_secs_f64()
    );
    md.push_str(&stats::table(&figures));
    for f in figures.iter().filter(|f| !f.note.is_empty()) {
        md.push_str(&format!("\n- {}: {}", f.id, f.note));
    }
    println!("{md}");
    let out = std::path::PathBuf::from(std::env::var("BENCH_OUT").unwrap_or_else(|_| "target/bench".into()));
    let json = serde_json::json!({ "date": date.to_string(), "machine": machine, "scale": env.scale, "runs": env.runs, "figures": figures });
    let written =
        std::fs::create_dir_all(&out).and_then(|()| std::fs::write(out.join("report.md"), &md)).and_then(|()| {
            std::fs::write(out.join("report.json"), serde_json::to_string_pretty(&json).unwrap_or_default())
        });
    if let Err(e) = written {
        eprintln!("bench: cannot write the report to {}: {e}", out.display());
        std::process::exit(1);
    }
}
