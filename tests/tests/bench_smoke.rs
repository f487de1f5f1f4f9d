//! The benchmark program (examples/examples/bench) at a tiny scale, so it cannot rot: it must
//! run B1–B5 and BP (B2 and B4 through PgBouncer) against the test script's PostgreSQL and librdkafka's mock cluster, exit 0, and
//! write a report in which every figure has SDK and baseline samples. No timing is asserted:
//! figures at this scale mean nothing.

use std::path::PathBuf;
use std::process::Command;

/// Builds the bench (a no-op after `scripts/test`'s `cargo nextest run --workspace --features
/// $(cat scripts/features)`, which builds the workspace's examples with the same features) and returns
/// its path: target/<profile>/examples/bench, next to this test's target/<profile>/deps.
fn bench_binary() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = Command::new(cargo)
        .args(["build", "--workspace", "--features", include_str!("../../scripts/features").trim()])
        .args(["--example", "bench"])
        .status()
        .expect("run cargo build");
    assert!(built.success(), "cargo build --example bench failed: {built}");
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>");
    let bin = profile_dir.join("examples").join(format!("bench{}", std::env::consts::EXE_SUFFIX));
    assert!(bin.exists(), "{} is missing after the build", bin.display());
    bin
}

#[test]
fn bench_runs_every_figure_at_a_tiny_scale() {
    let db = std::env::var("DATABASE_URL").expect("DATABASE_URL (scripts/test starts PostgreSQL)");
    let out = tests::backend::TempDir::new(&format!("bench-{}", uuid::Uuid::now_v7().simple()));
    let status = Command::new(bench_binary())
        .env("DATABASE_URL", db)
        // The mock cluster: this checks the program, not a broker's topic set-up.
        .env_remove("KAFKA_BROKERS")
        .env("BENCH_SCALE", "0.001")
        .env("BENCH_RUNS", "1")
        // BP: B2 and B4 through the PgBouncer scripts/test starts (PGBOUNCER_URL, inherited).
        .env("BENCH_ONLY", "B1,B2,B3,B4,B5,BP")
        .env("BENCH_OUT", out.path())
        .status()
        .expect("run the bench");
    assert!(status.success(), "bench exited with {status}");

    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("report.json")).expect("report.json")).expect("json");
    let figures = report["figures"].as_array().expect("figures");
    let ids: Vec<&str> = figures.iter().filter_map(|f| f["id"].as_str()).collect();
    for id in [
        "B1", "B1a", "B1b", "B2a", "B2b", "B2c", "B2e", "B2f", "B2g", "B3a", "B3b", "B3c", "B3d", "B4 p50", "B4 p99",
        "B5", "B2p", "B2p 8w", "B4p p50", "B4p p99",
    ] {
        assert!(ids.contains(&id), "figure {id} missing from the report: {ids:?}");
    }
    for f in figures {
        for side in ["sdk", "baseline"] {
            let samples = f[side].as_array().unwrap_or_else(|| panic!("{}: no {side} samples", f["id"]));
            assert!(!samples.is_empty(), "{}: no {side} samples", f["id"]);
            for s in samples {
                let v = s.as_f64().unwrap_or(f64::NAN);
                assert!(v.is_finite() && v > 0.0, "{}: {side} sample {s} is not a positive number", f["id"]);
            }
        }
    }
    let md = std::fs::read_to_string(out.path().join("report.md")).expect("report.md");
    assert!(md.contains("| B1 |") && md.contains("verification drain"), "{md}");
}
