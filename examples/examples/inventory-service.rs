//! inventory-service: reserves stock for every `OrderPlaced` event, exactly once, via the inbox.
//!
//! The handler inserts a `stock_reservations` row in the inbox's transaction, together with the
//! message's dedup row and the partition's position: a message Kafka delivers again (after a
//! restart, a rebalance, a crash) reserves nothing twice.
//!
//! ```sh
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres KAFKA_BROKERS=localhost:9092 \
//!     cargo run -p examples --example inventory-service
//! ```
//!
//! `RUST_LOG` sets the logging (default `info`). Ctrl-C or SIGTERM: the batch in hand is
//! committed, the consumer leaves its group, the number of reservations is printed and the
//! process exits with status 0. Logic: `examples/src/inventory.rs`.

use std::process::ExitCode;

use examples::inventory;
use examples::service::{self, Settings, error_chain};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    service::init_logging();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("inventory-service: {}", error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), service::BoxError> {
    let settings = Settings::from_env("inventory-service")?;
    inventory::prepare(&mut service::connect(&settings.database_url).await?).await?;
    let pool = service::pool(&settings.database_url, 5);

    let shutdown = CancellationToken::new();
    service::cancel_on_signal(shutdown.clone())?;
    println!("inventory-service: reserving stock for each order (group `{}`); Ctrl-C to stop", inventory::GROUP);
    inventory::run(pool.clone(), &settings.kafka, inventory::GROUP, shutdown).await?;

    let n = inventory::reservations(&mut *pool.get().await?).await?;
    println!("inventory-service: stopped; stock_reservations holds {n} reservations");
    Ok(())
}
