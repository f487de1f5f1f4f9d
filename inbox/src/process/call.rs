//! Calling a handler inside the inbox transaction, and reading what came back: the handler's
//! error chain, a panic's message, and whether a database error means the transaction is
//! aborted or the connection is lost. Separate from the two modes because both call handlers
//! the same way (and the dead-letter replay reads errors the same way).

use std::panic::AssertUnwindSafe;
use std::time::Instant;

use futures_util::FutureExt;
use outbox::Database;
use rdkafka::message::Message;
use tracing::Instrument;

use super::{Failure, Item, Processor, transaction_depth};
use crate::classify::Plan;
use crate::context::Context;
use crate::message::MessageMeta;
use crate::metrics::handler_seconds;
use crate::store::store;

impl<C: Database> Processor<'_, C> {
    /// Calls the message's handler inside the open transaction; returns its event type.
    /// Calls the message's handler inside the open transaction `token` names, bounded by the
    /// handler timeout, then checks the transaction is still that one and usable; returns the
    /// event type.
    pub(super) async fn call_handler(
        &self,
        conn: &mut C,
        item: &mut Item<C>,
        attempt: u32,
        token: i64,
        verify: bool,
    ) -> Result<&'static str, Failure> {
        let Plan::Handle { envelope, route, decoded } = &mut item.plan else {
            return Err(Failure::new(false, "handler_failed", "inbox bug: no handler for this message"));
        };
        let event = match decoded.take() {
            Some(event) => event,
            // A retry: the first call consumed the decoded event. Same bytes, same result.
            None => route
                .decode(item.msg.payload().unwrap_or_default())
                .map_err(|e| Failure::new(false, "handler_failed", format!("payload no longer decodes: {e}")))?,
        };
        let envelope: &outbox::Envelope = envelope;
        let route = &*route;
        let meta = MessageMeta {
            group: &self.shared.options.group,
            topic: self.topic,
            partition: self.partition,
            offset: item.msg.offset(),
            key: item.msg.key(),
            envelope,
            attempt,
        };
        let span = tracing::info_span!(
            "inbox.handle",
            group = %self.shared.options.group,
            topic = self.topic,
            partition = self.partition,
            offset = item.msg.offset(),
            message_id = %envelope.id,
            event_type = %envelope.event_type,
            attempt,
            otel.name = tracing::field::Empty,
            otel.kind = tracing::field::Empty,
        );
        // Feature `otel`: continue the producer's trace (docs/tracing.md).
        crate::otel::process(&span, &meta);
        let started = Instant::now();
        let timeout = self.shared.options.handler_timeout;
        let result = {
            let mut cx = Context::new(conn, &meta);
            let call = AssertUnwindSafe(route.call(event, &mut cx)).catch_unwind().instrument(span.clone());
            tokio::time::timeout(timeout, call).await
        };
        crate::otel::handled(&span, &result);
        handler_seconds(&self.shared.options.group, self.topic, route.event_type(), started.elapsed().as_secs_f64());
        let result = match result {
            Ok(result) => result,
            Err(_) => {
                return Err(Failure {
                    exhausted: "handler_timed_out",
                    abandoned: true,
                    ..Failure::new(
                        true,
                        "handler_timed_out",
                        format!("the handler did not finish within {timeout:?} (handler_timeout)"),
                    )
                });
            }
        };
        // Whatever the handler returned: is the transaction still ours, open and usable?
        let mut session_lost = false;
        let state = if transaction_depth(conn) != Some(1) {
            Err(Failure::ended_transaction("through the connection's transaction manager"))
        } else if !verify && matches!(result, Ok(Ok(()))) {
            Ok(()) // checked by the caller's next statement (batch mode)
        } else {
            match store(&mut *conn).same_transaction(token).await {
                Ok(true) => Ok(()),
                Ok(false) => Err(Failure::ended_transaction("a raw COMMIT or ROLLBACK")),
                // The handler failed: its own error says more than the aborted transaction. But a
                // connection that no longer answers was lost (the server ended the session: shut
                // down, restarted, pg_terminate_backend): retrying on another connection may pass,
                // whatever the handler's error says, in whichever language the server speaks.
                Err(e) if !matches!(result, Ok(Ok(()))) => {
                    session_lost = connection_lost(&e);
                    Ok(())
                }
                Err(e) if server_rejected(&e) => Err(Failure::aborted_transaction(&e)),
                Err(e) => Err(Failure::new(true, "handler_failed", format!("the database connection failed: {e}"))),
            }
        };
        state?;
        match result {
            Ok(Ok(())) => Ok(route.event_type()),
            Ok(Err(e)) => Err(Failure::new(e.is_transient() || session_lost, "handler_failed", error_chain(&e))),
            Err(panic) => Err(Failure::new(false, "handler_panicked", panic_message(panic.as_ref()))),
        }
    }
}

/// The server answered the check with an error (a live connection refusing a statement that
/// cannot fail on its own): the transaction is aborted. diesel-async maps SQLSTATE 25P02
/// (`in_failed_sql_transaction`) to `DatabaseErrorKind::Unknown` without exposing the code, so
/// the inbox goes by this shape, never by the (localised) message text. Connection failures
/// are not the handler's.
pub(crate) fn server_rejected(e: &diesel::result::Error) -> bool {
    use diesel::result::{DatabaseErrorKind, Error};
    matches!(e, Error::DatabaseError(kind, _)
        if !matches!(kind, DatabaseErrorKind::UnableToSendCommand | DatabaseErrorKind::ClosedConnection))
}

/// The statement never got an answer: the connection is gone (diesel-async reports a closed
/// tokio-postgres connection as `UnableToSendCommand`, an error without SQLSTATE).
pub(crate) fn connection_lost(e: &diesel::result::Error) -> bool {
    use diesel::result::{DatabaseErrorKind, Error};
    matches!(e, Error::DatabaseError(DatabaseErrorKind::UnableToSendCommand | DatabaseErrorKind::ClosedConnection, _))
}

pub(crate) fn error_chain(e: &crate::HandlerError) -> String {
    use std::error::Error as _;
    let mut out = e.to_string();
    // HandlerError displays its source; start the chain below it.
    let mut next = e.source().and_then(|s| s.source());
    while let Some(s) = next {
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}

pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic payload".to_owned());
    format!("the handler panicked: {text}")
}
