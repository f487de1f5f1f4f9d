//! B1: relay drain of a backlog vs raw produce + raw SQL claim/delete of the same rows.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use diesel::QueryableByName;
use diesel::sql_types::{Array, BigInt, Bytea, Nullable, Text};
use diesel_async::RunQueryDsl;
use futures_util::future::join_all;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

use crate::common::{self, Env};
use crate::stats::Figure;

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = BigInt)]
    seq: i64,
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    id: uuid::Uuid,
    #[diesel(sql_type = Nullable<Text>)]
    key: Option<String>,
    #[diesel(sql_type = Bytea)]
    payload: Vec<u8>,
}

/// Messages per second, and µs of machine CPU per message while draining.
async fn sdk_drain(env: &Env, topic: &str, n: usize, batch: usize) -> (f64, Option<f64>) {
    let mut conn = env.conn().await;
    common::truncate(&mut conn).await;
    // The relay starts idle (connected, producer id fetched, LISTENing), as in production;
    // the backlog appears in one commit and the clock runs from that commit to the last mark.
    let relay = outbox::relay::Relay::builder(env.pool(4).await, outbox::KafkaConfig::new(&env.brokers))
        .batch_size(batch)
        .build()
        .expect("relay");
    let stop = CancellationToken::new();
    let task = tokio::spawn(relay.run(stop.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    common::fill_in_one_transaction(&mut conn, topic, n, 100).await;
    let started = Instant::now();
    let cpu = common::CpuClock::start();
    common::wait_empty(&mut conn).await;
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu.per_item_us(n);
    stop.cancel();
    task.await.expect("relay task").expect("relay");
    (n as f64 / secs, cpu)
}

async fn raw_produce(env: &Env, rows: &[Row]) -> (f64, Option<f64>) {
    let producer: FutureProducer = env.producer_config().create().expect("producer");
    // Warm up (connection, metadata, idempotent producer id) outside the timed part, as the
    // relay's producer is warmed up by its first batch of the untimed verification runs.
    producer
        .send(FutureRecord::<str, str>::to("bench-e2e").payload("warm-up"), Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .expect("warm-up");
    let time_of_rows = chrono::Utc::now();
    let started = Instant::now();
    let cpu = common::CpuClock::start();
    let mut futures = Vec::with_capacity(rows.len());
    for r in rows {
        // The relay's own encoder (what it writes for an event stored with these fields).
        let h = outbox::Envelope {
            id: r.id,
            event_type: "bench.event".into(),
            version: 1,
            source: "outbox".into(),
            time: time_of_rows,
            correlation_id: None,
            causation_id: None,
            traceparent: None,
            headers: Default::default(),
        }
        .to_kafka_headers();
        let mut rec = FutureRecord::to("bench").payload(&r.payload[..]).headers(h);
        if let Some(k) = &r.key {
            rec = rec.key(k.as_str());
        }
        futures.push(producer.send_result(rec).map_err(|(e, _)| e).expect("enqueue"));
    }
    for d in join_all(futures).await {
        d.expect("delivery").expect("delivered");
    }
    (rows.len() as f64 / started.elapsed().as_secs_f64(), cpu.per_item_us(rows.len()))
}

async fn raw_sql(env: &Env, n: usize, batch: usize) -> (f64, Option<f64>) {
    let mut conn = env.conn().await;
    common::truncate(&mut conn).await;
    common::fill(&mut conn, "bench", n, 100).await;
    let started = Instant::now();
    let cpu = common::CpuClock::start();
    loop {
        let rows: Vec<Row> =
            diesel::sql_query("SELECT seq, id, key, payload FROM outbox_messages ORDER BY seq LIMIT $1")
                .bind::<BigInt, _>(batch as i64)
                .load(&mut conn)
                .await
                .expect("claim");
        if rows.is_empty() {
            break;
        }
        let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
        diesel::sql_query("DELETE FROM outbox_messages WHERE seq = ANY($1)")
            .bind::<Array<BigInt>, _>(seqs)
            .execute(&mut conn)
            .await
            .expect("delete");
    }
    (n as f64 / started.elapsed().as_secs_f64(), cpu.per_item_us(n))
}

/// Per-key order of the verification run's topic: counts records whose `n` is lower than the
/// previous `n` of the same key (first occurrences only).
fn reorders(env: &Env, topic: &str, expected: usize) -> (usize, usize) {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &env.brokers)
        .set("group.id", format!("verify-{}", uuid::Uuid::now_v7()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut last: HashMap<Vec<u8>, i64> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    let (mut count, mut bad) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.len() < expected && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            count += 1;
            let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or_default()).unwrap_or_default();
            let n = v["n"].as_i64().unwrap_or(-1);
            if !seen.insert(n) {
                continue;
            }
            let key = m.key().unwrap_or_default().to_vec();
            if last.insert(key, n).is_some_and(|prev| prev > n) {
                bad += 1;
            }
        }
    }
    assert_eq!(seen.len(), expected, "verification run: records missing on the topic");
    (count, bad)
}

pub async fn run(env: &Env) -> Vec<Figure> {
    let n = env.n(100_000);
    let batch: usize = std::env::var("BENCH_BATCH").ok().and_then(|s| s.parse().ok()).unwrap_or(2000);
    let (mut sdk, mut produce, mut sql, mut combined) = (vec![], vec![], vec![], vec![]);
    let mut cpu: Vec<(f64, f64, f64)> = vec![];
    for run in 0..env.runs {
        // Raw produce of exactly the rows the relay will send, loaded up front.
        let mut conn = env.conn().await;
        common::truncate(&mut conn).await;
        common::fill(&mut conn, "bench", n, 100).await;
        let rows: Vec<Row> = diesel::sql_query("SELECT seq, id, key, payload FROM outbox_messages ORDER BY seq")
            .load(&mut conn)
            .await
            .expect("load");
        let (p, p_cpu) = raw_produce(env, &rows).await;
        drop(rows);
        let (s, s_cpu) = raw_sql(env, n, batch).await;
        let (r, r_cpu) = sdk_drain(env, "bench", n, batch).await;
        let c = 1.0 / (1.0 / p + 1.0 / s);
        eprintln!("B1 run {run}: relay {r:.0}/s, raw produce {p:.0}/s, raw SQL {s:.0}/s, combined raw {c:.0}/s");
        // Machine CPU per message in each phase (µs), and how many of the cores were busy.
        if let (Some(pc), Some(sc), Some(rc)) = (p_cpu, s_cpu, r_cpu) {
            let busy = common::cores_busy;
            eprintln!(
                "B1 run {run} CPU per message: relay {rc:.1} µs ({:.2} cores busy), raw produce {pc:.1} µs ({:.2}), \
                 raw SQL {sc:.1} µs ({:.2}), raw sum {:.1} µs",
                busy(rc, r),
                busy(pc, p),
                busy(sc, s),
                pc + sc
            );
            cpu.push((rc, busy(rc, r), pc + sc));
        }
        sdk.push(r);
        produce.push(p);
        sql.push(s);
        combined.push(c);
    }
    sdk_drain(env, "bench-verify", n, batch).await;
    let (records, bad) = reorders(env, "bench-verify", n);
    let mut order_note = format!("verification drain: {records} records, {bad} per-key reorderings");
    if !cpu.is_empty() {
        let median_of = |f: fn(&(f64, f64, f64)) -> f64| crate::stats::median(&cpu.iter().map(f).collect::<Vec<_>>());
        order_note += &format!(
            "; machine CPU per message (median): relay {:.1} µs with {:.2} of the cores busy, raw produce + raw SQL {:.1} µs",
            median_of(|c| c.0),
            median_of(|c| c.1),
            median_of(|c| c.2)
        );
    }
    eprintln!("B1 {order_note}");
    vec![
        Figure {
            id: "B1",
            what: format!("relay drain, {n} × 256 B, 100 keys, batch {batch}"),
            unit: "msg/s",
            sdk: sdk.clone(),
            baseline: combined,
            higher_is_better: true,
            target: "≥ 0.9 × combined raw".into(),
            ratio_bound: Some(0.9),
            note: order_note,
        },
        Figure {
            id: "B1a",
            what: "raw produce alone (reference)".into(),
            unit: "msg/s",
            sdk: sdk.clone(),
            baseline: produce,
            higher_is_better: true,
            target: "–".into(),
            ratio_bound: None,
            note: String::new(),
        },
        Figure {
            id: "B1b",
            what: "raw SQL claim+delete alone (reference)".into(),
            unit: "msg/s",
            sdk,
            baseline: sql,
            higher_is_better: true,
            target: "–".into(),
            ratio_bound: None,
            note: String::new(),
        },
    ]
}
