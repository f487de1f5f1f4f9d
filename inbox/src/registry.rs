//! Registered handlers, looked up by (topic, `ce_type`).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use outbox::Database;

use crate::handler::ErasedHandler;

pub(crate) type Route<C> = Arc<dyn ErasedHandler<C>>;

/// Dispatch table: one handler per (topic, event type).
pub(crate) struct Registry<C: Database> {
    by_topic: HashMap<&'static str, HashMap<&'static str, Route<C>>>,
}

impl<C: Database> Registry<C> {
    /// Builds the table; a second handler for the same (topic, event type) is an error that
    /// names both handlers, whatever versions they declare (the version is checked per message).
    pub(crate) fn new(handlers: Vec<Route<C>>) -> Result<Self, String> {
        let mut by_topic: HashMap<&'static str, HashMap<&'static str, Route<C>>> = HashMap::new();
        for h in handlers {
            let key = (h.topic(), h.event_type());
            let routes = by_topic.entry(key.0).or_default();
            if let Some(existing) = routes.get(key.1) {
                return Err(format!(
                    "event type `{}` on topic `{}` has two handlers: `{}` (version {}) and `{}` (version {}); \
                     register one handler per event type (it receives every version up to its own)",
                    key.1,
                    key.0,
                    existing.handler_name(),
                    existing.version(),
                    h.handler_name(),
                    h.version()
                ));
            }
            routes.insert(key.1, h);
        }
        Ok(Self { by_topic })
    }

    pub(crate) fn get(&self, topic: &str, event_type: &str) -> Option<&Route<C>> {
        self.by_topic.get(topic)?.get(event_type)
    }

    /// The topics to subscribe to: those of the registered events, sorted.
    pub(crate) fn topics(&self) -> Vec<&'static str> {
        self.by_topic.keys().copied().collect::<BTreeSet<_>>().into_iter().collect()
    }
}
