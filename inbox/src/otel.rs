//! OpenTelemetry (feature `otel`; docs/tracing.md in the repository): the handler's span
//! continues the trace of the message's creation context, and follow-ups are its children.
//!
//! The handler's span (`inbox.handle`, named `process {topic}`, kind CONSUMER) is a child of
//! the creation context the message carries in `traceparent` / `tracestate` and links to it
//! (OpenTelemetry messaging semantic conventions: "process" spans link to the creation context;
//! with one message per span the creation context may also be the parent, which keeps a flow
//! of events in one trace). When the handler runs inside another span (a batch, or a span of
//! the application around `Inbox::run`), that ambient context is linked too. Without the
//! feature these hooks are empty and no OpenTelemetry crate is compiled.

pub(crate) use imp::{continues_trace, handled, process};

#[cfg(feature = "otel")]
mod imp {
    use opentelemetry::trace::{Status, TraceContextExt};
    use opentelemetry::{Context, KeyValue};
    use tracing::Span;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use crate::message::MessageMeta;

    fn valid(cx: &Context) -> bool {
        cx.span().span_context().is_valid()
    }

    /// Makes `span` (not yet entered) the "process" span of the message `meta` describes.
    pub(crate) fn process(span: &Span, meta: &MessageMeta<'_>) {
        if span.is_disabled() {
            return;
        }
        let name = format!("process {}", meta.topic);
        span.record("otel.name", name.as_str());
        span.record("otel.kind", "consumer");
        let attributes = [
            KeyValue::new("messaging.system", "kafka"),
            KeyValue::new("messaging.operation.type", "process"),
            KeyValue::new("messaging.operation.name", "process"),
            KeyValue::new("messaging.destination.name", meta.topic.to_owned()),
            KeyValue::new("messaging.consumer.group.name", meta.group.to_owned()),
            KeyValue::new("messaging.destination.partition.id", meta.partition.to_string()),
            KeyValue::new("messaging.kafka.offset", meta.offset),
            KeyValue::new("messaging.message.id", meta.envelope.id.to_string()),
        ];
        for kv in attributes {
            span.set_attribute(kv.key, kv.value);
        }
        if let Some(key) = meta.key.and_then(|k| std::str::from_utf8(k).ok()) {
            span.set_attribute("messaging.kafka.message.key", key.to_owned());
        }
        let creation = outbox::otel::extract(meta.envelope);
        if !valid(&creation) {
            return; // no creation context: the span stays in the ambient trace
        }
        let link = creation.span().span_context().clone();
        let ambient = Span::current().context();
        if span.set_parent(creation).is_ok() {
            span.add_link(link);
            let ambient = ambient.span().span_context().clone();
            if ambient.is_valid() {
                span.add_link_with_attributes(ambient, vec![KeyValue::new("outbox.link", "ambient")]);
            }
        }
    }

    /// Records how the handler call ended on its span: `error.type` and an error status when
    /// it failed, timed out or panicked.
    pub(crate) fn handled<E: std::fmt::Display, P, T>(span: &Span, result: &Result<Result<Result<(), E>, P>, T>) {
        let (kind, text) = match result {
            Ok(Ok(Ok(()))) => return,
            Ok(Ok(Err(e))) => ("handler_failed", e.to_string()),
            Ok(Err(_)) => ("handler_panicked", "the handler panicked".to_owned()),
            Err(_) => ("handler_timed_out", "the handler did not finish within handler_timeout".to_owned()),
        };
        span.set_attribute("error.type", kind);
        span.set_status(Status::error(text));
    }

    /// Whether the current span has an OpenTelemetry context that `publish` will capture: then
    /// a follow-up does not copy the incoming `traceparent`, it gets a child of this span.
    pub(crate) fn continues_trace() -> bool {
        valid(&Span::current().context())
    }
}

#[cfg(not(feature = "otel"))]
mod imp {
    use crate::message::MessageMeta;

    #[inline]
    pub(crate) fn process(_span: &tracing::Span, _meta: &MessageMeta<'_>) {}

    #[inline]
    pub(crate) fn handled<E, P, T>(_span: &tracing::Span, _result: &Result<Result<Result<(), E>, P>, T>) {}

    #[inline]
    pub(crate) fn continues_trace() -> bool {
        false
    }
}
