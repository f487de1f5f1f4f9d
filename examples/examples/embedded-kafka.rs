//! embedded-kafka: a Kafka cluster for trying the examples without installing Kafka.
//!
//! Starts librdkafka's in-process mock cluster (`outbox::embedded::EmbeddedKafka`), creates the
//! topic the example services use, prints the `KAFKA_BROKERS` value to give them, and serves
//! until Ctrl-C (or SIGTERM). Everything is kept in memory and gone when it stops.
//!
//! ```sh
//! cargo run -p examples --example embedded-kafka
//! ```

use std::process::ExitCode;

use examples::events::OrderPlaced;
use examples::service;
use outbox::embedded::EmbeddedKafka;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    service::init_logging();
    let kafka = match EmbeddedKafka::start() {
        Ok(kafka) => kafka,
        Err(e) => {
            eprintln!("embedded-kafka: {}", service::error_chain(&e));
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = kafka.create_topic_for::<OrderPlaced>(3) {
        eprintln!("embedded-kafka: {}", service::error_chain(&e));
        return ExitCode::FAILURE;
    }
    println!("KAFKA_BROKERS={}", kafka.bootstrap_servers());
    println!("embedded-kafka: 3 brokers, topic `orders` with 3 partitions; Ctrl-C to stop");
    let shutdown = CancellationToken::new();
    if let Err(e) = service::cancel_on_signal(shutdown.clone()) {
        eprintln!("embedded-kafka: cannot install signal handlers: {e}");
        return ExitCode::FAILURE;
    }
    shutdown.cancelled().await;
    println!("embedded-kafka: stopped");
    ExitCode::SUCCESS
}
