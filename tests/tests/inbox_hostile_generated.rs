//! Seeded hostile records. Each case is one Kafka record built from raw bytes — header keys
//! that are not UTF-8, values with 0x00, empty or 100 KB values, headers without a value,
//! duplicated CloudEvents attributes, a missing or invalid `ce_id`, random, truncated,
//! oversized or absent payloads, control characters in ids — interleaved with good messages
//! over two partitions, on both backends, in batch and one-message mode.
//!
//! Oracle: nothing panics; no partition is stuck (the stored positions reach the end of the
//! log); every record is either handled exactly once (with its one follow-up) or
//! dead-lettered with a reason (the predicted one where the input decides it); every good
//! record is handled; and a dead letter stores exactly what arrived: key, payload and raw
//! header bytes compared byte for byte with what was produced.
//!
//! `HOSTILE_SEED=<u64>` replays a run (the seed is printed first and in every assertion),
//! `HOSTILE_CASES=<n>` sets the number of records per test (default 120).

use std::collections::BTreeMap;
use std::time::Duration;

use inbox::{Context, Handler, HandlerError, Inbox};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tests::inbox_support::{RawDeadLetter, decode_raw_headers, raw_dead_letters, run_until_positions};
use tests::produce::{CloudEvent, TestProducer};
use tests::raw::RawRecord;
use tests::{Backend, Effect, TestConn, TestDb, TestKafka};
use uuid::Uuid;

tests::backends!(hostile_records_batch_mode, hostile_records_one_message_mode);

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, outbox::Event)]
#[event(topic = "orders", name = "order.placed")]
struct OrderPlaced {
    #[event(key)]
    order_id: Uuid,
    n: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, outbox::Event)]
#[event(topic = "stock", name = "stock.reserved")]
struct StockReserved {
    #[event(key)]
    order_id: Uuid,
}

struct Reserve;

#[inbox::async_trait]
impl<C: outbox::Database + TestConn> Handler<OrderPlaced, C> for Reserve {
    async fn handle(&self, e: OrderPlaced, cx: &mut Context<'_, C>) -> Result<(), HandlerError> {
        let id = cx.message_id();
        cx.conn().insert_effect(Effect::of(id)).await?;
        cx.publish(&StockReserved { order_id: e.order_id }).await?;
        Ok(())
    }
}

const MAX_PAYLOAD: usize = 4096;
const PARTITIONS: i32 = 2;

/// What the input decides about a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Handled,
    Dead(&'static str),
}

struct Case {
    kind: &'static str,
    record: RawRecord,
    expect: Expect,
}

struct Seed {
    seed: u64,
    cases: usize,
}

impl Seed {
    fn from_env() -> Self {
        let seed = std::env::var("HOSTILE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
        let cases = std::env::var("HOSTILE_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(120);
        Seed { seed, cases }
    }

    fn replay(&self) -> String {
        format!(
            "HOSTILE_SEED={} HOSTILE_CASES={} (replay: HOSTILE_SEED={} HOSTILE_CASES={} cargo nextest run -p tests \
             --all-features --test inbox_hostile_generated)",
            self.seed, self.cases, self.seed, self.cases
        )
    }
}

fn uuid(rng: &mut StdRng) -> Uuid {
    uuid::Builder::from_random_bytes(rng.random()).into_uuid()
}

fn bytes(rng: &mut StdRng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.random()).collect()
}

fn rbytes(rng: &mut StdRng, len: std::ops::Range<usize>) -> Vec<u8> {
    let len = rng.random_range(len);
    bytes(rng, len)
}

/// A header value worth trying: with 0x00, empty, absent, huge, or random bytes.
fn nasty_value(rng: &mut StdRng) -> Option<Vec<u8>> {
    match rng.random_range(0..6) {
        0 => None,
        1 => Some(Vec::new()),
        2 => Some(b"a\0b\0".to_vec()),
        3 => Some({
            let n = rng.random_range(1..4);
            vec![0; n]
        }),
        4 if rng.random_bool(0.3) => Some(bytes(rng, 100 * 1024)),
        _ => Some(rbytes(rng, 1..64)),
    }
}

/// A good record of a fresh id; `n` is the case number.
fn good(rng: &mut StdRng, n: u64) -> RawRecord {
    let mut event = CloudEvent::of(&OrderPlaced { order_id: uuid(rng), n });
    // A fixed time, so a replayed seed produces the same bytes.
    event = event.with_id(uuid(rng)).header("ce_time", "2026-01-01T00:00:00.000000Z");
    RawRecord::from_event(&event, rng.random_range(0..PARTITIONS))
}

fn set(record: &mut RawRecord, key: &str, value: Option<Vec<u8>>) {
    record.headers.retain(|(k, _)| k != key.as_bytes());
    record.headers.push((key.as_bytes().to_vec(), value));
}

fn case(rng: &mut StdRng, n: u64) -> Case {
    let mut r = good(rng, n);
    // Noise any record may carry: extension headers (UTF-8 keys, nasty values).
    for _ in 0..rng.random_range(0..3) {
        let key = format!("x-{}", rng.random_range(0..1000));
        r.headers.push((key.into_bytes(), nasty_value(rng)));
    }
    let kinds = 13;
    let pick = if rng.random_bool(0.4) { 0 } else { rng.random_range(1..kinds) };
    let (kind, expect) = match pick {
        0 => ("good", Expect::Handled),
        1 => {
            let mut key = rbytes(rng, 1..8);
            key.retain(|b| *b != 0);
            key.push(0xff); // never UTF-8
            let at = rng.random_range(0..=r.headers.len());
            r.headers.insert(at, (key, nasty_value(rng)));
            ("key_not_utf8", Expect::Dead("malformed_headers"))
        }
        2 => {
            r.headers.retain(|(k, _)| k != b"ce_id");
            ("missing_id", Expect::Dead("missing_id"))
        }
        3 => {
            let mut v = rbytes(rng, 0..40);
            v.insert(0, b'z');
            set(&mut r, "ce_id", Some(v));
            ("invalid_id", Expect::Dead("invalid_id"))
        }
        4 => {
            let known_last = rng.random_bool(0.5);
            let (first, last): (&[u8], &[u8]) =
                if known_last { (b"order.cancelled", b"order.placed") } else { (b"order.placed", b"order.cancelled") };
            r.headers.retain(|(k, _)| k != b"ce_type");
            r.headers.push((b"ce_type".to_vec(), Some(first.to_vec())));
            r.headers.push((b"ce_type".to_vec(), Some(last.to_vec())));
            ("duplicate_type", if known_last { Expect::Handled } else { Expect::Dead("unknown_type") })
        }
        5 => {
            let last = uuid(rng).to_string().into_bytes();
            r.headers.push((b"ce_id".to_vec(), Some(last)));
            ("duplicate_id", Expect::Handled)
        }
        6 => {
            let mut p = rbytes(rng, 0..2000);
            p.insert(0, b'#');
            r.payload = Some(p);
            ("random_payload", Expect::Dead("malformed_payload"))
        }
        7 => {
            let p = r.payload.take().unwrap_or_default();
            let cut = rng.random_range(1..p.len());
            r.payload = Some(p[..cut].to_vec());
            ("truncated_payload", Expect::Dead("malformed_payload"))
        }
        8 => {
            let mut p = r.payload.take().unwrap_or_default();
            let extra = rng.random_range(1..20_000);
            p.resize(MAX_PAYLOAD + extra, b' ');
            r.payload = Some(p);
            ("oversized_payload", Expect::Dead("payload_too_large"))
        }
        9 => {
            r.payload = None;
            ("no_payload", Expect::Dead("malformed_payload"))
        }
        10 => {
            let control = rng.random_range(1..32);
            let v = [b"flow".as_slice(), &[0, control], b"-id"].concat();
            set(&mut r, "ce_correlationid", Some(v));
            set(&mut r, "traceparent", Some(b"00-\x01-\x7f".to_vec()));
            ("control_bytes_in_ids", Expect::Handled)
        }
        11 => {
            set(&mut r, "ce_type", Some(b"order\0placed".to_vec()));
            ("nul_in_type", Expect::Dead("unknown_type"))
        }
        _ => {
            r.headers.push((b"x-huge".to_vec(), Some(bytes(rng, 100 * 1024))));
            ("huge_header", Expect::Handled)
        }
    };
    if rng.random_bool(0.1) {
        r.key = if rng.random_bool(0.5) { None } else { Some(rbytes(rng, 1..32)) };
    }
    Case { kind, record: r, expect }
}

/// The id the inbox handles a record under: the last `ce_id` header, when it is a UUID.
fn effective_id(r: &RawRecord) -> Option<Uuid> {
    let (_, v) = r.headers.iter().rev().find(|(k, _)| k.eq_ignore_ascii_case(b"ce_id"))?;
    Uuid::try_parse(std::str::from_utf8(v.as_deref()?).ok()?).ok()
}

async fn hostile_records<B: Backend>(batch_size: usize) {
    let seed = Seed::from_env();
    let replay = seed.replay();
    println!("inbox_hostile_generated ({}, batch_size {batch_size}): {replay}", B::NAME);
    let mut rng = StdRng::seed_from_u64(seed.seed);
    let cases: Vec<Case> = (0..seed.cases as u64).map(|n| case(&mut rng, n)).collect();

    let db = TestDb::<B>::fresh().await;
    let kafka = TestKafka::new();
    kafka.create_topic("orders", PARTITIONS).await;
    db.create_effects().await;
    let producer = TestProducer::new(&kafka);
    let mut at: BTreeMap<(i32, i64), usize> = BTreeMap::new();
    for (i, c) in cases.iter().enumerate() {
        at.insert((c.record.partition, producer.send_raw(&c.record).await), i);
    }
    let inbox = Inbox::builder(db.pool(4).await, tests::produce::inbox_kafka_config(&kafka))
        .group("hostile")
        .batch_size(batch_size)
        .max_payload_bytes(MAX_PAYLOAD)
        .max_attempts(2)
        .retry_backoff(Duration::from_millis(10), Duration::from_millis(50))
        .handle(Reserve)
        .build()
        .unwrap();
    let reached = run_until_positions(&db, vec![(inbox, cases.len() as i64)], Duration::from_secs(60)).await;
    assert_eq!(reached, [cases.len() as i64], "no partition stuck: stored positions reach the log end; {replay}");

    let dead: BTreeMap<(i32, i64), RawDeadLetter> =
        raw_dead_letters(&db, "hostile").await.into_iter().map(|d| ((d.kafka_partition, d.kafka_offset), d)).collect();
    let mut by_reason: BTreeMap<String, usize> = BTreeMap::new();
    let (mut handled, mut checked) = (0, 0);
    for (&(partition, offset), &i) in &at {
        let Case { kind, record, expect } = &cases[i];
        let what = format!("case {i} ({kind}) at {partition}@{offset}; {replay}");
        let id = effective_id(record);
        let effects = match id {
            Some(id) => db.count(&format!("SELECT count(*) AS n FROM effects WHERE message_id = '{id}'")).await,
            None => 0,
        };
        match (dead.get(&(partition, offset)), effects) {
            (None, 1) => {
                handled += 1;
                let id = id.unwrap_or_default().to_string();
                let follow_ups = db.conn().await.follow_ups(&id).await;
                assert_eq!(follow_ups.len(), 1, "a handled record publishes one follow-up: {what}");
                assert!(*expect == Expect::Handled, "handled, expected {expect:?}: {what}");
            }
            (Some(d), 0) => {
                *by_reason.entry(d.reason.clone()).or_default() += 1;
                assert!(!d.reason.is_empty() && !d.error.is_empty(), "a dead letter says why: {what}");
                if let Expect::Dead(reason) = expect {
                    assert_eq!(d.reason, *reason, "{what}");
                } else {
                    panic!("dead-lettered as {} ({}), expected to be handled: {what}", d.reason, d.error);
                }
                assert_eq!(d.message_id, id.map(|id| id.to_string()), "the id is kept when valid: {what}");
                assert_eq!(d.key, record.key, "dead letter key, byte for byte: {what}");
                assert_eq!(d.payload, record.payload, "dead letter payload, byte for byte: {what}");
                let raw = d.raw_headers.as_deref().map(decode_raw_headers);
                assert_eq!(raw, Some(Some(record.headers.clone())), "dead letter raw headers, byte for byte: {what}");
                assert!(!d.error.contains('\0'), "no NUL in the error text: {what}");
            }
            (d, n) => panic!("record neither handled once nor dead-lettered: effects {n}, dead letter {d:?}: {what}"),
        }
        checked += 1;
    }
    assert_eq!(dead.len() + handled, cases.len(), "no stray dead letters; {replay}");
    let good = cases.iter().filter(|c| c.kind == "good").count();
    println!(
        "inbox_hostile_generated ({}, batch_size {batch_size}): cases {}, seed {}, records checked {checked}, \
         handled {handled} (good {good}), dead-lettered {}, by reason {by_reason:?}",
        B::NAME,
        cases.len(),
        seed.seed,
        dead.len()
    );
}

async fn hostile_records_batch_mode<B: Backend>() {
    hostile_records::<B>(100).await;
}

async fn hostile_records_one_message_mode<B: Backend>() {
    hostile_records::<B>(1).await;
}
