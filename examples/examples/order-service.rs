//! order-service: places an order every 500 ms and publishes `OrderPlaced` through the outbox.
//!
//! Each order is one transaction: INSERT into `orders` + `outbox::publish(tx, &OrderPlaced)`.
//! Every tenth order is rolled back on purpose after publishing: its event must never reach
//! Kafka. The relay runs in the same process and sends the committed events to the `orders`
//! topic; `inventory-service` handles them.
//!
//! ```sh
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres KAFKA_BROKERS=localhost:9092 \
//!     cargo run -p examples --example order-service
//! ```
//!
//! `ORDERS_PER_SEC` (default 2) sets the pace, `RUST_LOG` the logging (default `info`).
//! Ctrl-C or SIGTERM: no new orders; the relay publishes what is left (up to 5 s) and stops;
//! the totals are printed and the process exits with status 0. Logic: `examples/src/orders.rs`.

use std::process::ExitCode;

use examples::orders::{self, OrderOptions};
use examples::service::{self, Settings, error_chain};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    service::init_logging();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("order-service: {}", error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), service::BoxError> {
    let settings = Settings::from_env("order-service")?;
    let options = OrderOptions::from_env()?;
    orders::prepare(&mut service::connect(&settings.database_url).await?).await?;
    let pool = service::pool(&settings.database_url, 5);

    let shutdown = CancellationToken::new();
    service::cancel_on_signal(shutdown.clone())?;
    println!(
        "order-service: placing {} orders/s, 1 in {} rolled back on purpose; Ctrl-C to stop",
        options.orders_per_sec, options.rollback_one_in
    );
    let totals = orders::run(pool, settings.kafka, options, shutdown).await?;

    let unpublished = match totals.unpublished {
        Some(0) => "every event published".to_owned(),
        Some(n) => format!("{n} events left in the outbox (published at the next start)"),
        None => "outbox not readable at exit".to_owned(),
    };
    println!(
        "order-service: {} orders placed, {} rolled back, {} failed; {unpublished}",
        totals.placed, totals.rolled_back, totals.failed
    );
    Ok(())
}
