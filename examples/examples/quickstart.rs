//! `cargo run -p examples --example quickstart`: the whole outbox → Kafka → inbox flow with
//! nothing to install. Set `DATABASE_URL=postgres://...` and/or `KAFKA_BROKERS=host:9092` to run
//! the same code on PostgreSQL and a real broker. Exits 1 when a promise did not hold.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let options = examples::quickstart::Options::from_env();
    println!("outbox + inbox quickstart: placing {} orders (every fourth rolled back)...", options.orders);
    match examples::quickstart::run(options).await {
        Ok(report) => {
            println!("{report}");
            let problems = report.problems();
            if problems.is_empty() {
                println!(
                    "OK: every committed order was published and handled exactly once; no rolled-back order escaped."
                );
                std::process::ExitCode::SUCCESS
            } else {
                for p in problems {
                    eprintln!("PROBLEM: {p}");
                }
                std::process::ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("quickstart failed: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
