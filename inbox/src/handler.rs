//! The [`Handler`] contract and its error type.

use std::any::Any;
use std::fmt;
use std::marker::PhantomData;

use futures_util::future::BoxFuture;
use outbox::Event;
use serde::de::DeserializeOwned;

use diesel_async::AsyncPgConnection;
use outbox::Database;

use crate::Context;

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Handles one event type inside the inbox transaction.
///
/// The inbox calls [`handle`](Handler::handle) with the decoded event and a [`Context`] whose
/// [`conn`](Context::conn) is the open transaction that also holds the message's dedup row and
/// the partition's stored position. Whatever the handler writes there commits together with
/// them, so each message id takes effect once per consumer group.
///
/// ```no_run
/// # use serde::{Deserialize, Serialize}; use schemars::JsonSchema;
/// # #[derive(Serialize, Deserialize, JsonSchema, outbox::Event)]
/// # #[event(topic = "orders", name = "order.placed")]
/// # struct OrderPlaced { #[event(key)] order_id: uuid::Uuid, total_cents: i64 }
/// use diesel_async::RunQueryDsl;
/// use inbox::{Context, Handler, HandlerError};
///
/// struct ReserveStock;
///
/// #[inbox::async_trait]
/// impl Handler<OrderPlaced> for ReserveStock {
///     async fn handle(&self, e: OrderPlaced, cx: &mut Context<'_>) -> Result<(), HandlerError> {
///         diesel::sql_query("UPDATE stock SET reserved = reserved + 1 WHERE order_id = $1")
///             .bind::<diesel::sql_types::Uuid, _>(e.order_id)
///             .execute(cx.conn())
///             .await?; // database errors are classified transient or permanent
///         Ok(())
///     }
/// }
/// ```
///
/// Errors: return [`HandlerError::transient`] for failures that may pass on retry (the message
/// is retried with backoff, up to the configured attempts) and [`HandlerError::permanent`] for
/// failures that will not (the message is dead-lettered at once). A panic is caught and
/// dead-lettered like a permanent error. Either way the transaction is rolled back first, so a
/// failed attempt leaves no effect behind.
#[async_trait::async_trait]
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an inbox handler for `{E}`",
    label = "this is not a `Handler<{E}>`",
    note = "implement it: `#[inbox::async_trait] impl inbox::Handler<{E}> for {Self} {{ async fn handle(&self, event: {E}, cx: &mut inbox::Context<'_>) -> Result<(), inbox::HandlerError> {{ .. }} }}`",
    note = "`{E}` must implement `outbox::Event` and `serde::Deserialize` (`#[derive(Serialize, Deserialize, JsonSchema, outbox::Event)]`)",
    note = "when `{Self}` handles several event types, name the one to register: `.handle::<{E}, _>(handler)`"
)]
pub trait Handler<E, C = AsyncPgConnection>: Send + Sync + 'static
where
    E: Event + DeserializeOwned + 'static,
    C: Database,
{
    /// Applies `event`. Runs inside the inbox transaction, available as [`Context::conn`].
    async fn handle(&self, event: E, cx: &mut Context<'_, C>) -> Result<(), HandlerError>;
}

/// Why a handler failed, and whether trying again may help.
///
/// ```
/// use inbox::HandlerError;
/// let e = HandlerError::transient("inventory service timed out");
/// assert!(e.is_transient());
/// let e = HandlerError::permanent(std::io::Error::other("order has no lines"));
/// assert!(!e.is_transient());
/// assert_eq!(e.to_string(), "order has no lines");
/// ```
pub struct HandlerError {
    transient: bool,
    source: Source,
}

impl HandlerError {
    /// A failure that may pass on a later attempt (timeout, lock conflict, service unavailable):
    /// the message is retried with backoff until the configured attempts are used up.
    pub fn transient(error: impl Into<Source>) -> Self {
        Self { transient: true, source: error.into() }
    }

    /// A failure that no retry will fix (invalid data, business rule violated): the message is
    /// dead-lettered at once and the partition moves on.
    pub fn permanent(error: impl Into<Source>) -> Self {
        Self { transient: false, source: error.into() }
    }

    /// Whether the inbox retries the message.
    pub fn is_transient(&self) -> bool {
        self.transient
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError").field("transient", &self.transient).field("source", &self.source).finish()
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.source, f)
    }
}

impl std::error::Error for HandlerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// Lets `query.execute(cx.conn()).await?` work in a handler. Lost connections, serialization
/// failures, deadlocks and lock timeouts are transient; constraint violations and other errors
/// are permanent.
impl From<diesel::result::Error> for HandlerError {
    fn from(e: diesel::result::Error) -> Self {
        let transient = is_transient_db_error(&e);
        Self { transient, source: Box::new(e) }
    }
}

/// Lets `cx.publish(&event).await?` work in a handler; transient as [`outbox::Error::is_transient`] says.
impl From<outbox::Error> for HandlerError {
    fn from(e: outbox::Error) -> Self {
        Self { transient: e.is_transient(), source: Box::new(e) }
    }
}

pub(crate) use outbox::is_transient_db_error;

/// A handler with its event type erased, so handlers of different events live in one registry.
pub(crate) trait ErasedHandler<C: Database>: Send + Sync {
    fn topic(&self) -> &'static str;
    fn event_type(&self) -> &'static str;
    fn version(&self) -> u32;
    fn handler_name(&self) -> &'static str;
    fn decode(&self, payload: &[u8]) -> Result<Box<dyn Any + Send + Sync>, serde_json::Error>;
    fn call<'a>(
        &'a self,
        event: Box<dyn Any + Send + Sync>,
        cx: &'a mut Context<'_, C>,
    ) -> BoxFuture<'a, Result<(), HandlerError>>;
}

pub(crate) struct Typed<E, H> {
    handler: H,
    _event: PhantomData<fn() -> E>,
}

impl<E, H> Typed<E, H> {
    pub(crate) fn new(handler: H) -> Self {
        Self { handler, _event: PhantomData }
    }
}

impl<E, H, C> ErasedHandler<C> for Typed<E, H>
where
    E: Event + DeserializeOwned + 'static,
    C: Database,
    H: Handler<E, C>,
{
    fn topic(&self) -> &'static str {
        E::TOPIC
    }

    fn event_type(&self) -> &'static str {
        E::NAME
    }

    fn version(&self) -> u32 {
        E::VERSION
    }

    fn handler_name(&self) -> &'static str {
        std::any::type_name::<H>()
    }

    fn decode(&self, payload: &[u8]) -> Result<Box<dyn Any + Send + Sync>, serde_json::Error> {
        Ok(Box::new(serde_json::from_slice::<E>(payload)?))
    }

    fn call<'a>(
        &'a self,
        event: Box<dyn Any + Send + Sync>,
        cx: &'a mut Context<'_, C>,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        match event.downcast::<E>() {
            Ok(event) => self.handler.handle(*event, cx),
            Err(_) => Box::pin(async { Err(HandlerError::permanent("inbox bug: decoded event has the wrong type")) }),
        }
    }
}
