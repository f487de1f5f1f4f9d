//! `outbox::embedded::EmbeddedKafka`: starts, creates topics from event types, carries records
//! between ordinary rdkafka clients, and refuses invalid topics.

use std::time::{Duration, Instant};

use outbox::embedded::EmbeddedKafka;
use outbox::{ErrorKind, Event};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use schemars::JsonSchema;
use serde::Serialize;

#[derive(Serialize, JsonSchema, Event)]
#[event(topic = "embedded-orders", name = "order.placed")]
struct OrderPlaced {
    #[event(key)]
    order_id: uuid::Uuid,
}

#[derive(Serialize, JsonSchema, Event)]
#[event(topic = "embedded-stock", name = "stock.reserved")]
struct StockReserved {
    #[event(key)]
    order_id: uuid::Uuid,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_round_trip_through_a_topic_made_for_an_event() {
    let kafka = EmbeddedKafka::start().expect("start");
    assert_eq!(kafka.bootstrap_servers().split(',').count(), 3, "{kafka:?}");
    assert!(format!("{kafka:?}").contains(kafka.bootstrap_servers()));
    assert_eq!(kafka.kafka_config().get("bootstrap.servers"), Some(kafka.bootstrap_servers()));
    kafka.create_topic_for::<OrderPlaced>(4).expect("create topic");

    let producer: FutureProducer = kafka.kafka_config().to_client_config().create().expect("producer");
    let key = uuid::Uuid::now_v7().to_string();
    let payload = format!(r#"{{"order_id":"{key}"}}"#);
    let delivery = producer
        .send(FutureRecord::to(OrderPlaced::TOPIC).key(&key).payload(&payload), Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .expect("delivered");
    let (partition, offset) = (delivery.partition, delivery.offset);
    assert!((0..4).contains(&partition), "partition {partition} of a 4-partition topic");

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap_servers())
        .set("group.id", "embedded-test")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&[OrderPlaced::TOPIC]).expect("subscribe");
    let deadline = Instant::now() + Duration::from_secs(30);
    let received = loop {
        assert!(Instant::now() < deadline, "no record came back within 30 s");
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                break (m.partition(), m.offset(), m.key().map(<[u8]>::to_vec), m.payload().map(<[u8]>::to_vec));
            }
            Some(Err(e)) => panic!("consumer error: {e}"),
            None => {}
        }
    };
    assert_eq!(received, (partition, offset, Some(key.into_bytes()), Some(payload.into_bytes())));
}

#[test]
fn several_topics_at_once_each_created_once() {
    let kafka = EmbeddedKafka::with_brokers(1).expect("start");
    assert_eq!(kafka.bootstrap_servers().split(',').count(), 1);
    kafka
        .create_topics(&[OrderPlaced::TOPIC, StockReserved::TOPIC, OrderPlaced::TOPIC], 2)
        .expect("duplicates in the list are skipped");
    // Both exist now: creating either again is refused by the cluster.
    for topic in [OrderPlaced::TOPIC, StockReserved::TOPIC] {
        let err = kafka.create_topic(topic, 2).expect_err("topic exists");
        assert_eq!(err.kind(), ErrorKind::Kafka, "{err}");
        assert!(err.to_string().contains(topic), "{err}");
    }
}

#[test]
fn invalid_topics_and_counts_are_refused() {
    let kafka = EmbeddedKafka::with_brokers(1).expect("start");
    for (topic, partitions) in [("has space", 1), ("", 1), ("..", 1), ("nul\0byte", 1), ("fine", 0), ("fine", -3)] {
        let err = kafka.create_topic(topic, partitions).expect_err(topic);
        assert_eq!(err.kind(), ErrorKind::Config, "{topic:?}/{partitions}: {err}");
    }
    let err = EmbeddedKafka::with_brokers(0).expect_err("0 brokers");
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(err.to_string().contains("at least 1"), "{err}");
}
