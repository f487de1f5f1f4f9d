//! Feature `otel` (docs/tracing.md): one order followed across writer → relay → Kafka → inbox
//! handler → follow-up via `cx.publish` → relay → a second inbox (another group, another
//! topic) is ONE trace in OpenTelemetry's in-memory exporter, with the expected parent/child
//! chain and links:
//!
//! ```text
//! place order (the test's span)
//! └── create otel.orders          PRODUCER  (publish: the creation context, stored in traceparent)
//!     ├── send otel.orders        CLIENT    (relay; links to the creation context)
//!     └── process otel.orders     CONSUMER  (inbox `inventory`; links to the creation context)
//!         └── create otel.stock   PRODUCER  (cx.publish)
//!             ├── send otel.stock
//!             └── process otel.stock        (inbox `shipping`)
//! ```
//!
//! And: a `traceparent` the caller set is sent unchanged and is the handler span's parent (no
//! create span); a message stored with no trace context (its writer had no OpenTelemetry layer)
//! continues from the relay's send span, whose context the relay sends.
//!
//! The subscriber (fmt for errors + the OpenTelemetry layer) is the process's global default,
//! set once in this test binary (nextest runs each test in a process of its own): the relay's
//! and the inbox's spans live on tokio worker threads. Each test finds its own spans by the
//! trace of its root span.
#![cfg(feature = "otel")]

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use inbox::{Context, Handler, HandlerError, Inbox};
use opentelemetry::Value;
use opentelemetry::trace::{SpanId, SpanKind, TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tests::relay_support::{relay, spawn};
use tests::{Backend, TestDb, TestKafka};
use tokio_util::sync::CancellationToken;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use uuid::Uuid;

tests::backends!(one_order_is_one_trace_from_writer_to_the_second_inbox, explicit_or_missing_context,);

const ORDERS: &str = "otel.orders";
const STOCK: &str = "otel.stock";

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, outbox::Event)]
#[event(topic = "otel.orders", name = "order.placed")]
struct OrderPlaced {
    #[event(key)]
    order_id: Uuid,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, outbox::Event)]
#[event(topic = "otel.stock", name = "stock.reserved")]
struct StockReserved {
    #[event(key)]
    order_id: Uuid,
}

/// What a handler saw: (message id, its `traceparent`).
type Seen = Arc<Mutex<Vec<(Uuid, Option<String>)>>>;

/// Group `inventory`: reserves stock, i.e. publishes a follow-up.
struct ReserveStock(Seen);

#[inbox::async_trait]
impl<C: outbox::Database> Handler<OrderPlaced, C> for ReserveStock {
    async fn handle(&self, e: OrderPlaced, cx: &mut Context<'_, C>) -> Result<(), HandlerError> {
        cx.publish(&StockReserved { order_id: e.order_id }).await?;
        self.0.lock().unwrap().push((cx.message_id(), cx.traceparent().map(str::to_owned)));
        Ok(())
    }
}

/// Group `shipping`: records what it saw.
struct Ship(Seen);

#[inbox::async_trait]
impl<C: outbox::Database> Handler<StockReserved, C> for Ship {
    async fn handle(&self, _e: StockReserved, cx: &mut Context<'_, C>) -> Result<(), HandlerError> {
        self.0.lock().unwrap().push((cx.message_id(), cx.traceparent().map(str::to_owned)));
        Ok(())
    }
}

/// The exporter behind this process's global subscriber (installed on first use).
fn exporter() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<InMemorySpanExporter> = OnceLock::new();
    EXPORTER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::EnvFilter::new("info,librdkafka=off,rdkafka=off"))
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("tests")))
            .with(tracing_subscriber::fmt::layer().with_test_writer().with_filter(LevelFilter::ERROR));
        tracing::subscriber::set_global_default(subscriber).expect("the otel suite sets the global subscriber first");
        exporter
    })
}

fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| &kv.value)
}

fn attr_str(span: &SpanData, key: &str) -> Option<String> {
    attr(span, key).map(|v| v.as_str().into_owned())
}

fn links_to(span: &SpanData, target: &SpanData) -> bool {
    span.links.links.iter().any(|l| l.span_context.span_id() == target.span_context.span_id())
}

fn describe(spans: &[SpanData]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "{} kind={:?} trace={} span={} parent={} id={:?}",
                s.name,
                s.span_kind,
                s.span_context.trace_id(),
                s.span_context.span_id(),
                s.parent_span_id,
                attr_str(s, "messaging.message.id")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Polls the exporter until `done` holds for the spans of `trace` (or panics at the deadline).
async fn spans_of(trace: TraceId, timeout: Duration, done: impl Fn(&[SpanData]) -> bool) -> Vec<SpanData> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let spans: Vec<SpanData> = exporter()
            .get_finished_spans()
            .expect("in-memory exporter")
            .into_iter()
            .filter(|s| s.span_context.trace_id() == trace)
            .collect();
        if done(&spans) {
            return spans;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "spans of trace {trace} after {timeout:?}:\n{}",
            describe(&spans)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every finished span about message `id` (create, send, process), in any trace.
fn spans_about(id: Uuid) -> Vec<SpanData> {
    let id = id.to_string();
    exporter()
        .get_finished_spans()
        .expect("in-memory exporter")
        .into_iter()
        .filter(|s| attr_str(s, "messaging.message.id").as_deref() == Some(id.as_str()))
        .collect()
}

fn one<'a>(spans: &'a [SpanData], name: &str, id: Uuid) -> &'a SpanData {
    let id = id.to_string();
    let found: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name == name && attr_str(s, "messaging.message.id").as_deref() == Some(id.as_str()))
        .collect();
    assert_eq!(found.len(), 1, "exactly one `{name}` span for {id}:\n{}", describe(spans));
    found[0]
}

async fn wait_seen(seen: &Seen, n: usize, timeout: Duration) -> Vec<(Uuid, Option<String>)> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let now = seen.lock().unwrap().clone();
        if now.len() >= n {
            return now;
        }
        assert!(tokio::time::Instant::now() < deadline, "{} of {n} messages handled after {timeout:?}", now.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Running {
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            t.await.expect("task");
        }
    }
}

/// A relay and the two inboxes, on `db` and `kafka`.
async fn start<B: Backend>(db: &TestDb<B>, kafka: &TestKafka, inventory: &Seen, shipping: &Seen) -> Running {
    let shutdown = CancellationToken::new();
    let mut tasks = Vec::new();
    let (stop_relay, relay_task) = spawn(relay(db.pool(2).await, kafka).build().expect("relay"));
    let token = shutdown.clone();
    tasks.push(tokio::spawn(async move {
        token.cancelled().await;
        stop_relay.cancel();
        relay_task.await.expect("relay task").expect("relay");
    }));
    for (group, inbox) in [
        (
            "inventory",
            Inbox::builder(db.pool(2).await, tests::produce::inbox_kafka_config(kafka))
                .group("inventory")
                .handle(ReserveStock(inventory.clone()))
                .build()
                .expect("inbox inventory"),
        ),
        (
            "shipping",
            Inbox::builder(db.pool(2).await, tests::produce::inbox_kafka_config(kafka))
                .group("shipping")
                .handle(Ship(shipping.clone()))
                .build()
                .expect("inbox shipping"),
        ),
    ] {
        let token = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            inbox.run(token).await.unwrap_or_else(|e| panic!("inbox {group}: {e}"));
        }));
    }
    Running { shutdown, tasks }
}

async fn topics(kafka: &TestKafka) {
    kafka.create_topic(ORDERS, 1).await;
    kafka.create_topic(STOCK, 1).await;
}

async fn one_order_is_one_trace_from_writer_to_the_second_inbox<B: Backend>() {
    exporter();
    let db = TestDb::<B>::fresh().await;
    let kafka = TestKafka::new();
    topics(&kafka).await;
    let (inventory, shipping) = (Seen::default(), Seen::default());

    // The application's span around the business transaction.
    let order_id = Uuid::now_v7();
    let root = tracing::info_span!("place order", order = %order_id);
    let trace = root.context().span().span_context().trace_id();
    let order_msg = {
        let mut conn = db.conn().await;
        let publish = outbox::transaction(&mut conn, async |tx| outbox::publish(tx, &OrderPlaced { order_id }).await);
        tracing::Instrument::instrument(publish, root.clone()).await.expect("publish")
    };
    drop(root);

    let running = start(&db, &kafka, &inventory, &shipping).await;
    let shipped = wait_seen(&shipping, 1, Duration::from_secs(60)).await;
    let handled = wait_seen(&inventory, 1, Duration::from_secs(5)).await;
    let stock_msg = shipped[0].0;
    assert_eq!(handled[0].0, order_msg);

    let named = |spans: &[SpanData], name: &str, id: Uuid| {
        let id = id.to_string();
        spans.iter().any(|s| s.name == name && attr_str(s, "messaging.message.id").as_deref() == Some(id.as_str()))
    };
    let spans = spans_of(trace, Duration::from_secs(20), |s| {
        named(s, "process otel.stock", stock_msg) && named(s, "send otel.stock", stock_msg)
    })
    .await;
    running.stop().await;

    // ONE trace: every span about either message is in the root span's trace.
    for id in [order_msg, stock_msg] {
        let about = spans_about(id);
        assert!(about.len() >= 3, "create, send and process spans of {id}:\n{}", describe(&about));
        for s in &about {
            assert_eq!(
                s.span_context.trace_id(),
                trace,
                "`{}` of {id} is in another trace:\n{}",
                s.name,
                describe(&about)
            );
        }
    }

    let root = spans.iter().find(|s| s.name == "place order").expect("the root span");
    let create_o = one(&spans, "create otel.orders", order_msg);
    let send_o = one(&spans, "send otel.orders", order_msg);
    let process_o = one(&spans, "process otel.orders", order_msg);
    let create_s = one(&spans, "create otel.stock", stock_msg);
    let send_s = one(&spans, "send otel.stock", stock_msg);
    let process_s = one(&spans, "process otel.stock", stock_msg);
    let id = |s: &SpanData| s.span_context.span_id();

    assert_eq!(create_o.parent_span_id, id(root), "publish's create span is a child of the writer's span");
    assert_eq!(create_o.span_kind, SpanKind::Producer);
    for (send, create, topic) in [(send_o, create_o, ORDERS), (send_s, create_s, STOCK)] {
        assert_eq!(send.parent_span_id, id(create), "`{}` is a child of the creation context", send.name);
        assert!(links_to(send, create), "`{}` links to the creation context", send.name);
        assert_eq!(send.span_kind, SpanKind::Client, "the creation context is the writer's: CLIENT");
        assert_eq!(attr_str(send, "messaging.system").as_deref(), Some("kafka"));
        assert_eq!(attr_str(send, "messaging.operation.type").as_deref(), Some("send"));
        assert_eq!(attr_str(send, "messaging.destination.name").as_deref(), Some(topic));
        assert_eq!(attr_str(send, "messaging.destination.partition.id").as_deref(), Some("0"));
        assert_eq!(attr(send, "messaging.kafka.offset"), Some(&Value::I64(0)), "offset known after delivery");
    }
    for (process, create, group, topic) in
        [(process_o, create_o, "inventory", ORDERS), (process_s, create_s, "shipping", STOCK)]
    {
        assert_eq!(process.parent_span_id, id(create), "`{}` continues from the creation context", process.name);
        assert!(process.parent_span_is_remote, "`{}`'s parent came through Kafka", process.name);
        assert!(links_to(process, create), "`{}` links to the creation context", process.name);
        assert_eq!(process.span_kind, SpanKind::Consumer);
        assert_eq!(attr_str(process, "messaging.system").as_deref(), Some("kafka"));
        assert_eq!(attr_str(process, "messaging.operation.type").as_deref(), Some("process"));
        assert_eq!(attr_str(process, "messaging.destination.name").as_deref(), Some(topic));
        assert_eq!(attr_str(process, "messaging.consumer.group.name").as_deref(), Some(group));
        assert_eq!(attr_str(process, "messaging.destination.partition.id").as_deref(), Some("0"));
        assert_eq!(attr(process, "messaging.kafka.offset"), Some(&Value::I64(0)));
    }
    assert_eq!(create_s.parent_span_id, id(process_o), "cx.publish's create span is a child of the handler's span");

    // What the handlers saw on the wire: the creation contexts, unchanged by the relay.
    let traceparent = |s: &SpanData| format!("00-{}-{}-01", s.span_context.trace_id(), s.span_context.span_id());
    assert_eq!(handled[0].1.as_deref(), Some(traceparent(create_o).as_str()));
    assert_eq!(shipped[0].1.as_deref(), Some(traceparent(create_s).as_str()));
}

async fn explicit_or_missing_context<B: Backend>() {
    exporter();
    let db = TestDb::<B>::fresh().await;
    let kafka = TestKafka::new();
    topics(&kafka).await;
    let (inventory, shipping) = (Seen::default(), Seen::default());

    // 1. The caller's own traceparent, published inside a span of another trace: it wins.
    let explicit_trace = TraceId::from_hex(&Uuid::now_v7().simple().to_string()).expect("trace id");
    let explicit_span = SpanId::from_hex("00f067aa0ba902b7").expect("span id");
    let explicit = format!("00-{explicit_trace}-{explicit_span}-01");
    let root = tracing::info_span!("place order", order = "explicit");
    let ambient_trace = root.context().span().span_context().trace_id();
    let mut conn = db.conn().await;
    let meta = outbox::Metadata::new().traceparent(explicit.clone());
    let publish = outbox::transaction(&mut conn, async |tx| {
        outbox::publish_with(tx, &OrderPlaced { order_id: Uuid::now_v7() }, meta).await
    });
    let explicit_msg = tracing::Instrument::instrument(publish, root.clone()).await.expect("publish");
    drop(root);
    // 2. Written with no OpenTelemetry layer (a writer without one, scoped to this thread):
    //    stored without trace context, so the relay's send span is the creation context.
    let no_layer = tracing::dispatcher::set_default(&tracing::Dispatch::none());
    let bare_msg =
        outbox::transaction(&mut conn, async |tx| outbox::publish(tx, &OrderPlaced { order_id: Uuid::now_v7() }).await)
            .await
            .expect("publish");
    drop(no_layer);
    drop(conn);

    let running = start(&db, &kafka, &inventory, &shipping).await;
    let handled = wait_seen(&inventory, 2, Duration::from_secs(60)).await;
    let seen = |id: Uuid| handled.iter().find(|(m, _)| *m == id).and_then(|(_, tp)| tp.clone());
    assert_eq!(seen(explicit_msg).as_deref(), Some(explicit.as_str()), "sent unchanged");

    let process = spans_of(explicit_trace, Duration::from_secs(20), |s| !s.is_empty()).await;
    let process = one(&process, "process otel.orders", explicit_msg);
    assert_eq!(process.parent_span_id, explicit_span, "the handler continues from the caller's traceparent");
    let about = spans_about(explicit_msg);
    assert!(about.iter().all(|s| s.name != "create otel.orders"), "no create span:\n{}", describe(&about));
    assert!(about.iter().all(|s| s.span_context.trace_id() != ambient_trace), "{}", describe(&about));

    // The bare message: the handler's parent is the relay's send span (PRODUCER).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (send, process) = loop {
        let about = spans_about(bare_msg);
        let find = |name: &str| about.iter().find(|s| s.name == name).cloned();
        if let (Some(send), Some(process)) = (find("send otel.orders"), find("process otel.orders")) {
            break (send, process);
        }
        assert!(tokio::time::Instant::now() < deadline, "spans of the bare message:\n{}", describe(&about));
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    running.stop().await;
    assert_eq!(send.span_kind, SpanKind::Producer, "the send span's context is the creation context");
    assert_eq!(process.parent_span_id, send.span_context.span_id());
    assert_eq!(process.span_context.trace_id(), send.span_context.trace_id());
    let tp = seen(bare_msg).expect("the relay sent its send span's traceparent");
    assert_eq!(tp, format!("00-{}-{}-01", send.span_context.trace_id(), send.span_context.span_id()));
}
