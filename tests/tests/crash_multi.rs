//! Crash scenario 6 (guarantees 2, 4, 6 with several processes): two relays (one lease) and two
//! consumers (one group) run while writers write; at random moments a random one of them is
//! killed with SIGKILL and restarted. Takeovers, fencing and rebalances lose and double nothing.
//! The relays keep sent rows (`AfterSend::Keep`), so that mode is covered too.

use rand::Rng;
use tests::crash::{Harness, Writers};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_and_two_consumers_killed_at_random() {
    let mut h = Harness::new("6 two relays, two consumers", tests::crash_bins!()).await;
    // Relays keep sent rows here (AfterSend::Keep): the other scenarios cover the default, Delete.
    h.keep_sent = true;
    let group = h.group("orders");
    let writers = h.spawn_writers(Writers {
        count: 2,
        orders_each: u32::MAX as u64,
        keys_each: 8,
        rollback_pct: 30,
        rate_each: Some(60.0),
    });
    let slots = ["crash-relay-a", "crash-relay-b", "crash-consumer-a", "crash-consumer-b"];
    let mut procs = vec![
        h.spawn_relay(slots[0]),
        h.spawn_relay(slots[1]),
        h.spawn_consumer(slots[2], &group),
        h.spawn_consumer(slots[3], &group),
    ];
    let kills = h.scaled(20);
    let mut killed = [0u32; 4];
    for _ in 0..kills {
        let pause = h.random_ms(300, 2000);
        h.sleep_watching(pause, &mut procs.iter_mut().collect::<Vec<_>>()).await;
        let i = h.rng.random_range(0..slots.len());
        procs.remove(i).kill().await;
        let fresh = if i < 2 { h.spawn_relay(slots[i]) } else { h.spawn_consumer(slots[i], &group) };
        procs.insert(i, fresh);
        killed[i] += 1;
    }
    println!(
        "[{}] kills: {}; lease epochs used: {}",
        h.scenario,
        slots.iter().zip(killed).map(|(s, n)| format!("{s} {n}")).collect::<Vec<_>>().join(", "),
        h.lease_epoch().await
    );
    let consumers = procs.split_off(2).into_iter().map(|c| (c, group.clone())).collect();
    h.settle_and_check(writers, true, procs, consumers).await;
}
