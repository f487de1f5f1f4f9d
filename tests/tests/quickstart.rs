//! The quickstart's whole flow (examples/src/quickstart.rs) as a test: on the test script's
//! PostgreSQL, and on SQLite (the zero-setup default). Its report must add up: published =
//! committed, handled = committed with no double effect, the deliberate duplicate skipped, the
//! hostile message dead-lettered, nothing from a rolled-back order seen.

use examples::quickstart::{Options, run};

async fn check(options: Options) {
    let report = run(options).await.expect("quickstart ran");
    println!("{report}");
    assert_eq!(report.problems(), Vec::<String>::new(), "{report}");
    assert!(report.committed > 0 && report.rolled_back > 0, "{report}");
}

/// A real broker when the environment names one (`KAFKA_BROKERS`, or `TEST_BROKER=tansu`); else
/// the quickstart starts its own mock cluster, as it does for a new user.
fn real_broker() -> Option<tests::TestKafka> {
    tests::TestKafka::real()
}

#[tokio::test(flavor = "multi_thread")]
async fn quickstart_on_postgres() {
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL: run with scripts/test");
    let kafka = real_broker();
    let kafka_brokers = kafka.as_ref().map(|k| k.brokers().to_owned());
    check(Options { database_url: Some(url), kafka_brokers, orders: 40 }).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn quickstart_on_sqlite() {
    let kafka = real_broker();
    let kafka_brokers = kafka.as_ref().map(|k| k.brokers().to_owned());
    check(Options { database_url: None, kafka_brokers, orders: 40 }).await;
}
