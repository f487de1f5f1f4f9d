//! Crash scenario 4 (guarantees 2, 5, 6): the relay's and the consumer's database sessions are
//! terminated with pg_terminate_backend again and again (found by their application_name)
//! while they work. Both processes must survive it and lose or double nothing.

use std::time::{Duration, Instant};

use rand::Rng;
use tests::crash::{Harness, Writers};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_and_consumer_sessions_terminated_repeatedly() {
    let mut h = Harness::new("4 sessions terminated", tests::crash_bins!()).await;
    let group = h.group("orders");
    let writers = h.spawn_writers(Writers {
        count: 2,
        orders_each: u32::MAX as u64,
        keys_each: 8,
        rollback_pct: 30,
        rate_each: Some(60.0),
    });
    let mut relay = h.spawn_relay("crash-relay-a");
    let mut consumer = h.spawn_consumer("crash-consumer-a", &group);
    let before = h.effects(&group).await;
    h.wait_effects_above(&group, before, &mut [&mut relay, &mut consumer]).await;
    let run_for = Duration::from_secs(h.scaled(20));
    let started = Instant::now();
    let (mut relay_sessions, mut consumer_sessions) = (0, 0);
    while started.elapsed() < run_for {
        let pause = h.random_ms(50, 500);
        h.sleep_watching(pause, &mut [&mut relay, &mut consumer]).await;
        match h.rng.random_range(0..3) {
            0 => relay_sessions += h.terminate_sessions("crash-relay-").await,
            1 => consumer_sessions += h.terminate_sessions("crash-consumer-").await,
            _ => {
                relay_sessions += h.terminate_sessions("crash-relay-").await;
                consumer_sessions += h.terminate_sessions("crash-consumer-").await;
            }
        }
    }
    println!(
        "[{}] terminated {relay_sessions} relay and {consumer_sessions} consumer sessions in {run_for:?}",
        h.scenario
    );
    assert!(relay_sessions > 0 && consumer_sessions > 0, "no session was terminated: the scenario tested nothing");
    h.settle_and_check(writers, true, vec![relay], vec![(consumer, group)]).await;
}
