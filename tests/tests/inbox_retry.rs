//! Transient handler errors are retried with backoff inside fresh transactions: a handler that
//! fails twice and then succeeds leaves exactly one effect, in batch and in one-message mode.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use inbox::{Context, Handler, HandlerError, Inbox};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tests::produce::{CloudEvent, TestProducer, wait_for_count};
use tests::{Backend, Effect, TestConn, TestDb, TestKafka};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

tests::backends!(transient_failures_are_retried_batch_mode, transient_failures_are_retried_one_message_mode,);

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, outbox::Event)]
#[event(topic = "payments", name = "payment.captured")]
struct PaymentCaptured {
    payment_id: Uuid,
    failures_before_success: u32,
}

/// Fails transiently `failures_before_success` times per message, writing a row every time
/// (rolled back on failure), then succeeds.
#[derive(Default)]
struct Flaky {
    calls: Mutex<HashMap<Uuid, u32>>,
}

#[inbox::async_trait]
impl<C: outbox::Database + TestConn> Handler<PaymentCaptured, C> for Arc<Flaky> {
    async fn handle(&self, e: PaymentCaptured, cx: &mut Context<'_, C>) -> Result<(), HandlerError> {
        let call = {
            let mut calls = self.calls.lock().unwrap();
            let n = calls.entry(cx.message_id()).or_default();
            *n += 1;
            *n
        };
        let (id, attempt) = (cx.message_id(), cx.attempt() as i32);
        cx.conn().insert_effect(Effect { attempt: Some(attempt), ..Effect::of(id) }).await?;
        if call <= e.failures_before_success {
            return Err(HandlerError::transient(format!("payment service busy (call {call})")));
        }
        Ok(())
    }
}

async fn fails_twice_then_succeeds<B: Backend>(batch_size: usize) {
    let db = TestDb::<B>::fresh().await;
    let kafka = TestKafka::new();
    kafka.create_topic("payments", 1).await;
    db.create_effects().await;
    let event = |failures| {
        CloudEvent::of(&PaymentCaptured { payment_id: Uuid::now_v7(), failures_before_success: failures }).partition(0)
    };
    let (before, flaky, after) = (event(0), event(2), event(0));
    TestProducer::new(&kafka).send_all(&[before.clone(), flaky.clone(), after.clone()]).await;

    let handler = Arc::new(Flaky::default());
    let shutdown = CancellationToken::new();
    let inbox = Inbox::builder(db.pool(4).await, tests::produce::inbox_kafka_config(&kafka))
        .group("billing")
        .batch_size(batch_size)
        .max_attempts(3)
        .retry_backoff(Duration::from_millis(10), Duration::from_millis(50))
        .handle(handler.clone())
        .build()
        .unwrap();
    let running = tokio::spawn(inbox.run(shutdown.clone()));
    let position =
        wait_for_count(&db, "SELECT coalesce(max(next_offset), 0) AS n FROM inbox_offsets", 3, Duration::from_secs(20))
            .await;
    shutdown.cancel();
    running.await.unwrap().unwrap();

    assert_eq!(position, 3);
    let flaky_id = flaky.id().unwrap();
    assert_eq!(handler.calls.lock().unwrap()[&flaky_id], 3, "two failures, one success");
    assert_eq!(
        db.count(&format!("SELECT count(*) AS n FROM effects WHERE message_id = '{flaky_id}'")).await,
        1,
        "failed attempts were rolled back: one effect"
    );
    assert_eq!(
        db.count(&format!("SELECT CAST(attempt AS BIGINT) AS n FROM effects WHERE message_id = '{flaky_id}'")).await
            as i32,
        3,
        "the handler saw the attempt number"
    );
    for other in [&before, &after] {
        let id = other.id().unwrap();
        assert_eq!(db.count(&format!("SELECT count(*) AS n FROM effects WHERE message_id = '{id}'")).await, 1);
    }
    assert_eq!(db.count("SELECT count(*) AS n FROM effects").await, 3);
    assert_eq!(db.count("SELECT count(*) AS n FROM inbox_dead_letters").await, 0);
}

async fn transient_failures_are_retried_batch_mode<B: Backend>() {
    fails_twice_then_succeeds::<B>(100).await;
}

async fn transient_failures_are_retried_one_message_mode<B: Backend>() {
    fails_twice_then_succeeds::<B>(1).await;
}
