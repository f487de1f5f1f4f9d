//! Crash scenario 2 (guarantees 2, 4, 5): the relay process is killed with SIGKILL 20 times at
//! random moments while it drains (each time once it holds the lease), and restarted; writers
//! keep writing. Nothing committed is lost, nothing rolled back appears, resends are counted.

use std::time::Duration;

use tests::crash::{Harness, Writers};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_killed_at_random_while_draining() {
    let mut h = Harness::new("2 relay SIGKILL", tests::crash_bins!()).await;
    let group = h.group("orders");
    // A backlog to drain, and a steady stream on top of it.
    let mut writers = h.spawn_writers(Writers {
        count: 2,
        orders_each: h.scaled(600),
        keys_each: 8,
        rollback_pct: 30,
        rate_each: None,
    });
    writers.extend(h.spawn_writers(Writers {
        count: 2,
        orders_each: u32::MAX as u64,
        keys_each: 8,
        rollback_pct: 30,
        rate_each: Some(40.0),
    }));
    let mut consumer = h.spawn_consumer("crash-consumer-a", &group);
    // Slow acknowledgements: a batch is nearly always in flight (produced, not yet marked) when
    // the kill comes, so restarted relays resend ("maybe sent") and the consumer must dedup.
    if let Some(mock) = h.kafka.mock() {
        for b in 1..=3 {
            mock.broker_round_trip_time(b, Duration::from_millis(100)).expect("round trip time");
        }
    }
    let kills = h.scaled(20);
    let mut epoch = h.lease_epoch().await;
    let mut backlogs = Vec::new();
    for _ in 0..kills {
        let mut relay = h.spawn_relay("crash-relay-a");
        epoch = h.wait_new_lease(epoch, &mut [&mut relay, &mut consumer]).await;
        let delay = h.random_ms(0, 1200);
        h.sleep_watching(delay, &mut [&mut relay, &mut consumer]).await;
        backlogs.push(h.backlog().await);
        relay.kill().await;
    }
    if let Some(mock) = h.kafka.mock() {
        for b in 1..=3 {
            mock.broker_round_trip_time(b, Duration::ZERO).expect("round trip time");
        }
    }
    println!(
        "[{}] {kills} relay kills; unpublished rows at each kill: {backlogs:?}; lease epochs used: {epoch}",
        h.scenario
    );
    h.settle_and_check(writers, true, vec![], vec![(consumer, group)]).await;
}
