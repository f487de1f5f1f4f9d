//! The quickstart's whole flow (examples/src/quickstart/) as a test: on the test script's
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

/// The quickstart's handler on its own, tested with the SDK's harness (`inbox::testing`) on
/// SQLite, as a user would test theirs: each order reserved once, a redelivered one too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_handler_tested_with_the_harness() {
    use examples::quickstart::{OrderPlaced, ReserveStock, Shop, create_tables};
    use std::time::Duration;
    let mut h = inbox::testing::Harness::sqlite().await.unwrap();
    create_tables(&mut *h.pool().get().await.unwrap()).await.unwrap();
    h.create_topic::<OrderPlaced>(3).unwrap();
    h.start(h.inbox_builder().group("inventory").handle(ReserveStock).build().unwrap()).unwrap();
    let order =
        |n: i32| OrderPlaced { order_id: uuid::Uuid::now_v7(), run_id: "t".into(), sku: format!("s{n}"), quantity: n };
    let mut ids = Vec::new();
    for n in 1..=3 {
        ids.push(h.publish(&order(n)).await.unwrap());
    }
    h.until_handled("inventory", 3, Duration::from_secs(60)).await.unwrap();
    h.redeliver(ids[0]).await.unwrap();
    h.until_quiet(Duration::from_secs(60)).await.unwrap();
    let reserved = h.pool().get().await.unwrap().reservations("t").await.unwrap();
    assert_eq!(reserved.len(), 3, "{reserved:?}");
    h.shutdown().await.unwrap();
}
