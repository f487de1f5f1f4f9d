//! Crash scenario 3 (guarantee 6): the consumer process is killed with SIGKILL 20 times at
//! random moments while it handles messages, and restarted; a relay and writers keep running.
//! Every committed message takes effect exactly once, per key in order; redeliveries are skipped.

use tests::crash::{Harness, Writers};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_killed_at_random_while_handling() {
    let mut h = Harness::new("3 consumer SIGKILL", tests::crash_bins!()).await;
    let group = h.group("orders");
    let writers = h.spawn_writers(Writers {
        count: 2,
        orders_each: u32::MAX as u64,
        keys_each: 8,
        rollback_pct: 30,
        rate_each: Some(60.0),
    });
    let mut relay = h.spawn_relay("crash-relay-a");
    let kills = h.scaled(20);
    let mut handled_at_kills = Vec::new();
    for _ in 0..kills {
        let mut consumer = h.spawn_consumer("crash-consumer-a", &group);
        // Kill only once this incarnation handles messages.
        let before = h.effects(&group).await;
        h.wait_effects_above(&group, before, &mut [&mut consumer, &mut relay]).await;
        let delay = h.random_ms(0, 800);
        h.sleep_watching(delay, &mut [&mut consumer, &mut relay]).await;
        consumer.kill().await;
        handled_at_kills.push(h.effects(&group).await - before);
    }
    println!("[{}] {kills} consumer kills; effects per incarnation: {handled_at_kills:?}", h.scenario);
    let consumer = h.spawn_consumer("crash-consumer-a", &group);
    h.settle_and_check(writers, true, vec![relay], vec![(consumer, group)]).await;
}
