//! OpenTelemetry (feature `otel`; docs/tracing.md in the repository): W3C trace context in the
//! stored headers, a span per record the relay sends.
//!
//! Without the feature the crate-private hooks below are empty and no OpenTelemetry crate is
//! compiled. With it, and a `tracing-opentelemetry` layer in the application's subscriber:
//!
//! - [`publish`](crate::publish) opens a `create {topic}` span (kind PRODUCER) as a child of the
//!   current span and stores its context in the message's `traceparent` / `tracestate` headers:
//!   the message's *creation context* (OpenTelemetry messaging semantic conventions). A
//!   `traceparent` the caller set ([`Metadata::traceparent`](crate::Metadata::traceparent), or a
//!   `tracestate` header) wins: nothing is captured then.
//! - The relay records a `send {topic}` span per record, from handing it to the producer until
//!   Kafka acknowledges it (partition and offset) or fails it. It is a child of, and links to, the
//!   record's creation context, which is sent unchanged, so consumers continue from the writer.
//!   A record stored without one gets the send span's own context (then kind PRODUCER).

#[cfg(feature = "otel")]
pub use imp::extract;
pub(crate) use imp::{SendSpan, capture};

#[cfg(feature = "otel")]
mod imp {
    use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
    use opentelemetry::trace::{Status, TraceContextExt};
    use opentelemetry::{Context, KeyValue};
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use rdkafka::error::KafkaError;
    use rdkafka::message::{Header, OwnedHeaders};
    use tracing::Span;
    use tracing::field::Empty;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use uuid::Uuid;

    /// The W3C trace-context headers.
    const TRACEPARENT: &str = "traceparent";
    const TRACESTATE: &str = "tracestate";

    use crate::Envelope;
    use crate::db::Claimed;

    /// Writes into the stored `headers` object; an empty `tracestate` is left out.
    struct JsonInjector<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

    impl Injector for JsonInjector<'_> {
        fn set(&mut self, key: &str, value: String) {
            if !value.is_empty() {
                self.0.insert(key.to_owned(), serde_json::Value::String(value));
            }
        }
    }

    /// Reads the stored `headers` object (exact names: the writer stores them lower-case).
    struct JsonExtractor<'a>(&'a serde_json::Value);

    impl Extractor for JsonExtractor<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(serde_json::Value::as_str)
        }

        fn keys(&self) -> Vec<&str> {
            self.0.as_object().map(|m| m.keys().map(String::as_str).collect()).unwrap_or_default()
        }
    }

    /// The two trace-context values of a received envelope (header names matched in any case).
    struct EnvelopeExtractor<'a>(&'a Envelope);

    impl Extractor for EnvelopeExtractor<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            if key.eq_ignore_ascii_case(TRACEPARENT) {
                return self.0.traceparent.as_deref();
            }
            self.0.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.as_str())
        }

        fn keys(&self) -> Vec<&str> {
            let mut keys: Vec<&str> = self.0.headers.keys().map(String::as_str).collect();
            if self.0.traceparent.is_some() {
                keys.push(TRACEPARENT);
            }
            keys
        }
    }

    /// The creation context a received message carries in its `traceparent` / `tracestate`
    /// headers (W3C Trace Context), as a remote parent; an empty context when it carries none
    /// or an invalid one.
    ///
    /// The inbox continues from it around each handler; use it for consumers of your own.
    pub fn extract(envelope: &Envelope) -> Context {
        TraceContextPropagator::new().extract(&EnvelopeExtractor(envelope))
    }

    fn valid(cx: &Context) -> bool {
        cx.span().span_context().is_valid()
    }

    /// The writer's hook: stores the creation context in `headers` unless the caller set one.
    pub(crate) fn capture(headers: &mut serde_json::Value, topic: &str, id: Uuid) {
        let Some(map) = headers.as_object_mut() else { return };
        if map.keys().any(|k| k.eq_ignore_ascii_case(TRACEPARENT) || k.eq_ignore_ascii_case(TRACESTATE)) {
            return; // the caller's own trace context wins (semantic conventions: not modified)
        }
        let name = format!("create {topic}");
        let create = tracing::info_span!(
            target: "outbox::otel",
            "outbox.create",
            otel.name = name.as_str(),
            otel.kind = "producer",
            messaging.system = "kafka",
            messaging.operation.type = "create",
            messaging.operation.name = "create",
            messaging.destination.name = topic,
            messaging.message.id = %id,
        );
        let mut cx = create.context();
        if !valid(&cx) {
            // The create span is filtered out: the current span is the creation context.
            cx = Span::current().context();
        }
        if valid(&cx) {
            TraceContextPropagator::new().inject_context(&cx, &mut JsonInjector(map));
        }
    }

    /// The relay's span for one record, from `produce` to its delivery report.
    pub(crate) struct SendSpan {
        span: Span,
        /// The span's own context, when the record carried none: sent in its place.
        inject: Option<Context>,
    }

    impl SendSpan {
        /// Starts the span of `row`, a child of its creation context when it has one.
        pub(crate) fn start(row: &Claimed, ambient: &Context) -> Self {
            let name = format!("send {}", row.topic);
            let span = tracing::info_span!(
                target: "outbox::otel",
                "outbox.send",
                otel.name = name.as_str(),
                otel.kind = Empty,
                messaging.system = "kafka",
                messaging.operation.type = "send",
                messaging.operation.name = "send",
                messaging.destination.name = row.topic.as_str(),
                messaging.message.id = %row.id,
                messaging.kafka.message.key = row.key.as_deref(),
                messaging.destination.partition.id = Empty,
                messaging.kafka.offset = Empty,
                error.type = Empty,
            );
            if span.is_disabled() {
                return SendSpan { span, inject: None }; // no subscriber wants it: nothing to parse
            }
            let creation = TraceContextPropagator::new().extract(&JsonExtractor(&row.headers));
            // Semantic conventions: PRODUCER when this span's context is the creation context
            // the record carries, CLIENT when the writer's is.
            if !valid(&creation) {
                span.record("otel.kind", "producer");
                return SendSpan { inject: Some(span.context()).filter(valid), span };
            }
            span.record("otel.kind", "client");
            let link = creation.span().span_context().clone();
            if span.set_parent(creation).is_ok() {
                span.add_link(link);
                link_ambient(&span, ambient);
            }
            SendSpan { span, inject: None }
        }

        /// The record's headers, with this span's context when the record carried none.
        pub(crate) fn headers(&self, mut headers: OwnedHeaders) -> OwnedHeaders {
            if let Some(cx) = &self.inject {
                let mut pairs = Pairs(Vec::with_capacity(2));
                TraceContextPropagator::new().inject_context(cx, &mut pairs);
                for (key, value) in pairs.0 {
                    headers = headers.insert(Header { key: key.as_str(), value: Some(value.as_bytes()) });
                }
            }
            headers
        }

        /// Kafka acknowledged the record. Ends the span.
        pub(crate) fn delivered(self, partition: i32, offset: i64) {
            self.span.record("messaging.destination.partition.id", partition.to_string());
            self.span.record("messaging.kafka.offset", offset);
        }

        /// The record was not (or maybe not) delivered. Ends the span.
        pub(crate) fn failed(self, error: &KafkaError) {
            let kind = error.rdkafka_error_code().map_or_else(|| "kafka_error".to_owned(), |c| format!("{c:?}"));
            self.span.record("error.type", kind.as_str());
            self.span.set_status(Status::error(error.to_string()));
        }

        /// The producer was dropped before it reported. Ends the span.
        pub(crate) fn canceled(self) {
            self.span.record("error.type", "canceled");
            self.span.set_status(Status::error("the producer was dropped before the delivery report"));
        }
    }

    /// (name, value) pairs to inject; an empty `tracestate` is left out.
    struct Pairs(Vec<(String, String)>);

    impl Injector for Pairs {
        fn set(&mut self, key: &str, value: String) {
            if !value.is_empty() {
                self.0.push((key.to_owned(), value));
            }
        }
    }

    /// Semantic conventions: a span re-parented onto a creation context links to the ambient
    /// context it ran in, if there is one.
    pub(crate) fn link_ambient(span: &Span, ambient: &Context) {
        let ambient = ambient.span().span_context().clone();
        if ambient.is_valid() {
            span.add_link_with_attributes(ambient, vec![KeyValue::new("outbox.link", "ambient")]);
        }
    }

    /// The context of the current span, for [`link_ambient`].
    pub(crate) fn ambient() -> Context {
        Span::current().context()
    }
}

#[cfg(not(feature = "otel"))]
mod imp {
    use rdkafka::error::KafkaError;
    use rdkafka::message::OwnedHeaders;
    use uuid::Uuid;

    use crate::db::Claimed;

    #[inline]
    pub(crate) fn capture(_headers: &mut serde_json::Value, _topic: &str, _id: Uuid) {}

    /// Nothing without the feature.
    pub(crate) struct SendSpan;

    impl SendSpan {
        #[inline]
        pub(crate) fn start(_row: &Claimed, _ambient: &Context) -> Self {
            SendSpan
        }
        #[inline]
        pub(crate) fn headers(&self, headers: OwnedHeaders) -> OwnedHeaders {
            headers
        }
        #[inline]
        pub(crate) fn delivered(self, _partition: i32, _offset: i64) {}
        #[inline]
        pub(crate) fn failed(self, _error: &KafkaError) {}
        #[inline]
        pub(crate) fn canceled(self) {}
    }

    /// Stands in for OpenTelemetry's context.
    pub(crate) struct Context;

    #[inline]
    pub(crate) fn ambient() -> Context {
        Context
    }
}

pub(crate) use imp::ambient;
