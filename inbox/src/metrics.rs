//! Metric names, reported through the [`metrics`] facade: install any recorder (Prometheus,
//! StatsD, ...) in the application to collect them; without one they cost next to nothing.
//! What each metric means, its labels and unit: the metrics table in `docs/operations.md`
//! (a test checks that table against [`describe`]).

use metrics::Unit;

/// Counter: messages whose handler succeeded and whose transaction committed.
pub const HANDLED_TOTAL: &str = "inbox_handled_total";
/// Counter: messages recognised as already handled by the group.
pub const DUPLICATES_TOTAL: &str = "inbox_duplicates_total";
/// Counter: dead-letter rows committed, by reason.
pub const DEAD_LETTERED_TOTAL: &str = "inbox_dead_lettered_total";
/// Counter: unknown event types recorded as handled under the skip policy.
pub const SKIPPED_TOTAL: &str = "inbox_skipped_total";
/// Histogram: seconds spent in one handler call.
pub const HANDLER_SECONDS: &str = "inbox_handler_seconds";
/// Gauge: messages in a partition after the inbox's last committed position.
pub const LAG: &str = "inbox_lag";
/// Counter: dedup rows deleted by the retention task.
pub const PRUNED_TOTAL: &str = "inbox_pruned_total";
/// Gauge: dead letters stored for the group (read every `metrics_interval`).
pub const DEAD_LETTERS: &str = "inbox_dead_letters";

/// Describes every inbox metric (kind, unit, help text) to the installed recorder.
///
/// [`InboxBuilder::build`](crate::InboxBuilder::build) calls it; call it yourself when the
/// recorder is installed after the inbox is built. Calling it again is harmless.
pub fn describe() {
    metrics::describe_counter!(HANDLED_TOTAL, Unit::Count, "messages whose handler succeeded and committed");
    metrics::describe_counter!(
        DUPLICATES_TOTAL,
        Unit::Count,
        "messages skipped because the group had handled their id already"
    );
    metrics::describe_counter!(DEAD_LETTERED_TOTAL, Unit::Count, "dead-letter rows committed, by reason");
    metrics::describe_counter!(SKIPPED_TOTAL, Unit::Count, "unknown event types recorded as handled (skip policy)");
    metrics::describe_histogram!(HANDLER_SECONDS, Unit::Seconds, "time spent in one handler call (every attempt)");
    metrics::describe_gauge!(
        LAG,
        Unit::Count,
        "messages in the partition after the inbox's last committed position (librdkafka statistics)"
    );
    metrics::describe_counter!(PRUNED_TOTAL, Unit::Count, "dedup rows deleted by the retention task");
    metrics::describe_gauge!(DEAD_LETTERS, Unit::Count, "dead letters stored for the group");
}

/// What one committed transaction did, reported only after the commit so rolled-back work is
/// never counted.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub handled: Vec<&'static str>,
    pub duplicates: u64,
    pub skipped: u64,
    pub dead_lettered: Vec<String>,
}

impl Tally {
    pub(crate) fn report(&self, group: &str, topic: &str) {
        for event_type in &self.handled {
            metrics::counter!(HANDLED_TOTAL, "group" => group.to_owned(), "topic" => topic.to_owned(), "type" => *event_type)
                .increment(1);
        }
        if self.duplicates > 0 {
            metrics::counter!(DUPLICATES_TOTAL, "group" => group.to_owned(), "topic" => topic.to_owned())
                .increment(self.duplicates);
        }
        if self.skipped > 0 {
            metrics::counter!(SKIPPED_TOTAL, "group" => group.to_owned(), "topic" => topic.to_owned())
                .increment(self.skipped);
        }
        for reason in &self.dead_lettered {
            metrics::counter!(DEAD_LETTERED_TOTAL, "group" => group.to_owned(), "topic" => topic.to_owned(), "reason" => reason.clone())
                .increment(1);
        }
    }
}

pub(crate) fn handler_seconds(group: &str, topic: &str, event_type: &'static str, seconds: f64) {
    metrics::histogram!(HANDLER_SECONDS, "group" => group.to_owned(), "topic" => topic.to_owned(), "type" => event_type)
        .record(seconds);
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::{Arc, Mutex};

    use metrics::{
        Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString,
        Unit,
    };

    use super::*;

    /// Records every update as `name{label=value,..} value`.
    #[derive(Default, Clone)]
    pub(crate) struct Capture(Arc<Mutex<Vec<String>>>);

    struct Handle(Arc<Mutex<Vec<String>>>, String);

    impl Handle {
        fn push(&self, v: impl std::fmt::Display) {
            self.0.lock().unwrap().push(format!("{} {v}", self.1));
        }
    }
    impl CounterFn for Handle {
        fn increment(&self, v: u64) {
            self.push(v)
        }
        fn absolute(&self, v: u64) {
            self.push(v)
        }
    }
    impl GaugeFn for Handle {
        fn increment(&self, v: f64) {
            self.push(v)
        }
        fn decrement(&self, v: f64) {
            self.push(-v)
        }
        fn set(&self, v: f64) {
            self.push(v)
        }
    }
    impl HistogramFn for Handle {
        fn record(&self, _: f64) {
            self.push("observed")
        }
    }

    impl Capture {
        fn handle(&self, key: &Key) -> Arc<Handle> {
            let labels: Vec<String> = key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
            Arc::new(Handle(self.0.clone(), format!("{}{{{}}}", key.name(), labels.join(","))))
        }
        pub(crate) fn lines(&self) -> Vec<String> {
            self.0.lock().unwrap().clone()
        }
    }

    impl Recorder for Capture {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            Counter::from_arc(self.handle(key))
        }
        fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::from_arc(self.handle(key))
        }
        fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::from_arc(self.handle(key))
        }
    }

    #[test]
    fn names_and_labels() {
        let capture = Capture::default();
        metrics::with_local_recorder(&capture, || {
            Tally {
                handled: vec!["order.placed"],
                duplicates: 2,
                skipped: 1,
                dead_lettered: vec!["unknown_type".into()],
            }
            .report("inventory", "orders");
            handler_seconds("inventory", "orders", "order.placed", 0.01);
        });
        assert_eq!(
            capture.lines(),
            [
                "inbox_handled_total{group=inventory,topic=orders,type=order.placed} 1",
                "inbox_duplicates_total{group=inventory,topic=orders} 2",
                "inbox_skipped_total{group=inventory,topic=orders} 1",
                "inbox_dead_lettered_total{group=inventory,topic=orders,reason=unknown_type} 1",
                "inbox_handler_seconds{group=inventory,topic=orders,type=order.placed} observed",
            ]
        );
    }
}
