//! Exactly-once chaining: a handler that publishes a follow-up event with `cx.publish` stores it
//! in the outbox in the inbox transaction, so a redelivered input — or an attempt that failed
//! after publishing — never yields a second follow-up. The follow-up's causation id is the
//! input's id and the correlation id is carried over (or starts at the input's id).

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use inbox::{Context, Handler, HandlerError, Inbox};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tests::produce::{CloudEvent, TestProducer, wait_for_count};
use tests::{Backend, TestConn, TestDb, TestKafka};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

tests::backends!(follow_up_is_published_once_per_input,);

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, outbox::Event)]
#[event(topic = "orders", name = "order.placed")]
struct OrderPlaced {
    #[event(key)]
    order_id: Uuid,
    fail_once_after_publishing: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, outbox::Event)]
#[event(topic = "stock", name = "stock.reserved")]
struct StockReserved {
    #[event(key)]
    order_id: Uuid,
}

#[derive(Default)]
struct ReserveStock {
    failed: Mutex<HashSet<Uuid>>,
}

#[inbox::async_trait]
impl<C: outbox::Database + TestConn> Handler<OrderPlaced, C> for ReserveStock {
    async fn handle(&self, e: OrderPlaced, cx: &mut Context<'_, C>) -> Result<(), HandlerError> {
        cx.publish(&StockReserved { order_id: e.order_id }).await?;
        if e.fail_once_after_publishing && self.failed.lock().unwrap().insert(cx.message_id()) {
            return Err(HandlerError::transient("stock service hiccup after publishing"));
        }
        Ok(())
    }
}

async fn follow_up_is_published_once_per_input<B: Backend>() {
    let db = TestDb::<B>::fresh().await;
    let kafka = TestKafka::new();
    kafka.create_topic("orders", 1).await;
    let order = |fail: bool| {
        CloudEvent::of(&OrderPlaced { order_id: Uuid::now_v7(), fail_once_after_publishing: fail }).partition(0)
    };
    // A traceparent set by the producer is copied to the follow-up as it is (no OpenTelemetry
    // layer here; with one, `tests/otel.rs` checks the follow-up gets a child span instead).
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let correlated = order(false).header("ce_correlationid", "checkout-42").header("traceparent", traceparent);
    let uncorrelated = order(false);
    let flaky = order(true);
    let input = [
        correlated.clone(),
        uncorrelated.clone(),
        correlated.clone(), // redelivered
        flaky.clone(),
        uncorrelated.clone(), // redelivered
        correlated.clone(),   // redelivered again
    ];
    TestProducer::new(&kafka).send_all(&input).await;

    let shutdown = CancellationToken::new();
    let inbox = Inbox::builder(db.pool(4).await, tests::produce::inbox_kafka_config(&kafka))
        .group("inventory")
        .retry_backoff(Duration::from_millis(10), Duration::from_millis(50))
        .handle(ReserveStock::default())
        .build()
        .unwrap();
    let running = tokio::spawn(inbox.run(shutdown.clone()));
    let position =
        wait_for_count(&db, "SELECT coalesce(max(next_offset), 0) AS n FROM inbox_offsets", 6, Duration::from_secs(20))
            .await;
    shutdown.cancel();
    running.await.unwrap().unwrap();
    assert_eq!(position, 6);

    assert_eq!(db.count("SELECT count(*) AS n FROM outbox_messages").await, 3, "one follow-up per input id");
    let mut conn = db.conn().await;
    for (input, correlation) in [
        (&correlated, "checkout-42".to_owned()),
        (&uncorrelated, uncorrelated.id().unwrap().to_string()),
        (&flaky, flaky.id().unwrap().to_string()),
    ] {
        let id = input.id().unwrap();
        let rows = conn.follow_ups(&id.to_string()).await;
        assert_eq!(rows.len(), 1, "exactly one follow-up caused by {id}");
        assert_eq!(rows[0].0, "stock");
        assert_eq!(rows[0].1, "stock.reserved");
        assert_eq!(rows[0].2["ce_correlationid"], correlation.as_str());
        let expected_traceparent = if id == correlated.id().unwrap() { Some(traceparent) } else { None };
        assert_eq!(rows[0].2["traceparent"].as_str(), expected_traceparent, "the follow-up of {id}");
    }
}
