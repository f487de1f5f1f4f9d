//! Crash scenario 1 (guarantees 1, 3, 4, 6): 10,000 orders from 8 concurrent writer processes,
//! 30% of them failing after `outbox::publish` — explicit rollback, an error after the publish,
//! or the session terminated (pg_terminate_backend from another session) before COMMIT — while
//! a relay process and two consumer processes in different groups run. Only committed orders
//! may reach the topic and the handlers; each takes effect once per group, in key order.

use tests::crash::{Harness, Writers};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_and_rolled_back_orders_from_eight_writers() {
    let mut h = Harness::new("1 writers", tests::crash_bins!()).await;
    let (billing, shipping) = (h.group("billing"), h.group("shipping"));
    let orders_each = h.scaled(1250);
    let writers = h.spawn_writers(Writers { count: 8, orders_each, keys_each: 8, rollback_pct: 30, rate_each: None });
    let relay = h.spawn_relay("crash-relay-a");
    let a = h.spawn_consumer("crash-consumer-billing", &billing);
    let b = h.spawn_consumer("crash-consumer-shipping", &shipping);
    let report = h.settle_and_check(writers, false, vec![relay], vec![(a, billing), (b, shipping)]).await;
    // The failure paths were all taken (the oracle checked each of them).
    assert_eq!(report.committed + report.rolled_back_total(), 8 * orders_each as usize);
    assert_eq!(report.rolled_back.len(), 3, "every way of rolling back was exercised: {:?}", report.rolled_back);
}
