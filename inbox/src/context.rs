//! What a handler gets besides its event: the transaction and the message's metadata.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use diesel_async::AsyncPgConnection;
use outbox::{Database, Envelope, Event, Metadata};
use uuid::Uuid;

use crate::message::MessageMeta;

/// The handler's view of the inbox transaction and of the message it is handling.
///
/// ```no_run
/// # use serde::{Deserialize, Serialize}; use schemars::JsonSchema;
/// # #[derive(Serialize, Deserialize, JsonSchema, outbox::Event)]
/// # #[event(topic = "orders", name = "order.placed")]
/// # struct OrderPlaced { #[event(key)] order_id: uuid::Uuid }
/// # #[derive(Serialize, Deserialize, JsonSchema, outbox::Event)]
/// # #[event(topic = "stock", name = "stock.reserved")]
/// # struct StockReserved { #[event(key)] order_id: uuid::Uuid }
/// use inbox::{Context, Handler, HandlerError};
///
/// struct ReserveStock;
///
/// #[inbox::async_trait]
/// impl Handler<OrderPlaced> for ReserveStock {
///     async fn handle(&self, e: OrderPlaced, cx: &mut Context<'_>) -> Result<(), HandlerError> {
///         tracing::info!(id = %cx.message_id(), attempt = cx.attempt(), "reserving stock");
///         // ... writes through cx.conn() ...
///         // The follow-up event commits with this message's dedup row: published exactly once.
///         cx.publish(&StockReserved { order_id: e.order_id }).await?;
///         Ok(())
///     }
/// }
/// ```
pub struct Context<'a, C: Database = AsyncPgConnection> {
    conn: &'a mut C,
    meta: &'a MessageMeta<'a>,
}

impl<'a, C: Database> Context<'a, C> {
    pub(crate) fn new(conn: &'a mut C, meta: &'a MessageMeta<'a>) -> Self {
        Self { conn, meta }
    }

    /// The open inbox transaction: the same one that holds this message's dedup row and the
    /// partition's stored position. Write the handler's effects here; do not commit or roll
    /// it back yourself (nested `conn.transaction(..)` calls become savepoints and are fine).
    pub fn conn(&mut self) -> &mut C {
        self.conn
    }

    /// The message id (`ce_id`): the dedup key, together with the consumer group.
    pub fn message_id(&self) -> Uuid {
        self.meta.envelope.id
    }

    /// The consumer group handling the message.
    pub fn group(&self) -> &str {
        self.meta.group
    }

    /// The Kafka topic the message came from.
    pub fn topic(&self) -> &str {
        self.meta.topic
    }

    /// The Kafka partition the message came from.
    pub fn partition(&self) -> i32 {
        self.meta.partition
    }

    /// The message's Kafka offset.
    pub fn offset(&self) -> i64 {
        self.meta.offset
    }

    /// The Kafka key (aggregate id) as bytes, if the message has one.
    pub fn key(&self) -> Option<&[u8]> {
        self.meta.key
    }

    /// The Kafka key as text, if it is present and valid UTF-8.
    pub fn key_str(&self) -> Option<&str> {
        self.meta.key.and_then(|k| std::str::from_utf8(k).ok())
    }

    /// Which attempt this is: 1 the first time, 2 on the first retry, ...
    pub fn attempt(&self) -> u32 {
        self.meta.attempt
    }

    /// The event type (`ce_type`).
    pub fn event_type(&self) -> &str {
        &self.meta.envelope.event_type
    }

    /// The payload's schema version (`ce_typeversion`): at most the handler's
    /// [`Event::VERSION`], possibly older.
    pub fn version(&self) -> u32 {
        self.meta.envelope.version
    }

    /// The producing service (`ce_source`).
    pub fn source(&self) -> &str {
        &self.meta.envelope.source
    }

    /// When the event was stored by its producer (`ce_time`).
    pub fn time(&self) -> DateTime<Utc> {
        self.meta.envelope.time
    }

    /// The correlation id (`ce_correlationid`), if the message has one.
    pub fn correlation_id(&self) -> Option<&str> {
        self.meta.envelope.correlation_id.as_deref()
    }

    /// The causation id (`ce_causationid`): the id of the message that caused this one.
    pub fn causation_id(&self) -> Option<&str> {
        self.meta.envelope.causation_id.as_deref()
    }

    /// The W3C `traceparent` of the producer's span, if it sent one.
    pub fn traceparent(&self) -> Option<&str> {
        self.meta.envelope.traceparent.as_deref()
    }

    /// Every header that is not part of the CloudEvents envelope (e.g. `tenant`).
    pub fn headers(&self) -> &BTreeMap<String, String> {
        &self.meta.envelope.headers
    }

    /// The whole parsed envelope.
    pub fn envelope(&self) -> &Envelope {
        self.meta.envelope
    }

    /// Metadata for a follow-up event: causation id = this message's id; correlation id carried
    /// over (or, when this message has none, this message's id, which starts the flow); the
    /// trace context carried over. Add headers to it and pass it to [`publish_with`](Self::publish_with).
    ///
    /// With the `otel` feature and an OpenTelemetry layer in the subscriber, the incoming
    /// `traceparent` is not copied: `publish` then stores a child of the handler's span (the
    /// `create` span, see docs/tracing.md), so the follow-up continues this message's trace.
    ///
    /// Incoming ids are copied only when they are valid header text: at most 1,024 bytes and
    /// no control characters (0x00 included, which PostgreSQL cannot store). An invalid
    /// correlation id is dropped as if absent (the flow restarts at this message's id), an
    /// invalid `traceparent` is dropped, each with a warning; the handler still runs.
    pub fn follow_up(&self) -> Metadata {
        let env = self.meta.envelope;
        let correlation = valid_id(env.id, "ce_correlationid", env.correlation_id.as_deref())
            .map_or_else(|| env.id.to_string(), str::to_owned);
        let meta = Metadata::new().causation_id(env.id.to_string()).correlation_id(correlation);
        if crate::otel::continues_trace() {
            return meta; // feature `otel`: `publish` stores a child of the handler's span instead
        }
        match valid_id(env.id, "traceparent", env.traceparent.as_deref()) {
            Some(tp) => meta.traceparent(tp),
            None => meta,
        }
    }

    /// Stores a follow-up event in the outbox, in this transaction, with
    /// [`follow_up`](Self::follow_up) metadata. It commits if and only if this message's effects
    /// do, so a redelivered message never publishes it twice. Returns the new message id.
    pub async fn publish<E: Event>(&mut self, event: &E) -> outbox::Result<Uuid> {
        let meta = self.follow_up();
        outbox::publish_with(self.conn, event, meta).await
    }

    /// [`publish`](Self::publish) with metadata of your own; start from
    /// [`follow_up`](Self::follow_up) to keep the causation chain.
    pub async fn publish_with<E: Event>(&mut self, event: &E, meta: Metadata) -> outbox::Result<Uuid> {
        outbox::publish_with(self.conn, event, meta).await
    }
}

/// `value` if it may be copied into an outgoing header (see [`Context::follow_up`]).
fn valid_id<'v>(message_id: Uuid, header: &str, value: Option<&'v str>) -> Option<&'v str> {
    let value = value?;
    if value.len() <= 1024 && !value.chars().any(char::is_control) {
        return Some(value);
    }
    tracing::warn!(
        %message_id,
        header,
        value = %outbox::raw_headers::escape(value.as_bytes()),
        "inbox: incoming header not copied to the follow-up: longer than 1,024 bytes or holds control characters"
    );
    None
}

impl std::fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("message", self.meta).finish_non_exhaustive()
    }
}
