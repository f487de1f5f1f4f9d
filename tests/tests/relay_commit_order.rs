//! Guarantees 1 and 3: transactions that commit in a different order than their ids were
//! assigned, some rolling back, while the relay runs: every committed message is delivered,
//! no rolled-back message is ever produced. (On SQLite writers take turns, so commits cannot
//! overtake each other there; the rollbacks and the pipelined windows are still exercised.)

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use diesel_async::AsyncConnection;
use rand::{Rng, SeedableRng};
use tests::relay_support::{self as rs, Happened};
use tests::{Backend, TestDb, TestKafka};
use uuid::Uuid;

tests::backends!(out_of_order_commits_and_rollbacks,);

async fn out_of_order_commits_and_rollbacks<B: Backend>() {
    let db = TestDb::<B>::fresh().await;
    let kafka = TestKafka::new();
    kafka.create_topic(rs::TOPIC, 4).await;
    // Small batches: many pipelined windows, so late commits land inside in-flight ranges.
    let relay =
        rs::relay(db.pool(4).await, &kafka).batch_size(8).poll_interval(Duration::from_millis(10)).build().unwrap();
    let (stop, task) = rs::spawn(relay);

    let seed: u64 = std::env::var("TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    println!("seed {seed} (TEST_SEED={seed} replays it)");
    let committed = Arc::new(Mutex::new(Vec::<Vec<Uuid>>::new()));
    let rolled_back = Arc::new(Mutex::new(HashSet::<Uuid>::new()));
    let writers: Vec<_> = (0..8u64)
        .map(|w| {
            let url = db.url.clone();
            let (committed, rolled_back) = (committed.clone(), rolled_back.clone());
            tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ w);
                let mut conn = B::connect(&url).await;
                let mut mine = Vec::new();
                for i in 0..60u64 {
                    // Each writer owns its keys, so "write order per key" is well defined.
                    let event = Happened::new(format!("w{w}-k{}", i % 3), w * 1000 + i);
                    let delay = Duration::from_millis(rng.random_range(0..40));
                    let roll_back = rng.random_bool(0.3);
                    let mut id = None;
                    let result = conn
                        .transaction::<(), outbox::Error, _>(async |tx| {
                            id = Some(outbox::publish(tx, &event).await?);
                            // Hold the transaction open: ids assigned earlier commit later.
                            tokio::time::sleep(delay).await;
                            if roll_back {
                                return Err(outbox::Error::from(diesel::result::Error::RollbackTransaction));
                            }
                            Ok(())
                        })
                        .await;
                    let id = id.unwrap();
                    match result {
                        Ok(()) => mine.push(id),
                        Err(_) => {
                            rolled_back.lock().unwrap().insert(id);
                        }
                    }
                }
                committed.lock().unwrap().push(mine);
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let committed: Vec<Uuid> = committed.lock().unwrap().concat();
    let rolled_back = rolled_back.lock().unwrap().clone();
    rs::wait_drained(&db, Duration::from_secs(60)).await;
    let records = rs::read_topic(&kafka, committed.len()).await;
    stop.cancel();
    task.await.unwrap().unwrap();
    let report = rs::check_delivery(&records, &committed, &rolled_back);
    println!("committed {}, rolled back {}, on topic {report:?}", committed.len(), rolled_back.len());
    assert!(!rolled_back.is_empty() && committed.len() > 200);
}
