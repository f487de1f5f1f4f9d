//! A seeded, replayable generative suite for the relay: each case is a random workload
//! (concurrent writers, colliding keys, transactions with hold times and rollbacks), random relay
//! settings (batch and pool sizes down to 1, one or two relays of one name, small max_attempts,
//! a short `message.timeout.ms`) and a random fault schedule (retriable, permanent and
//! idempotence produce errors, broker outages longer than the message timeout, a relay killed
//! and restarted past its lease, `ops` retry / discard of parked rows), run against the mock
//! cluster on PostgreSQL and SQLite. After each case the topic is read back from offset 0 and
//! checked (see `tests::relay_gen_oracle::check`) and the outbox must be empty.
//!
//! `RELAY_GEN_SEED` picks the run's seed (else random; printed first, with the command that
//! replays it), `RELAY_GEN_CASES` the number of cases per backend, `RELAY_GEN_ONLY` one case of
//! the run, `RELAY_GEN_REPEAT` how many times each case runs; `RELAY_GEN_RDKAFKA_DEBUG` (e.g.
//! `eos,msg`) sets the relay producers' librdkafka `debug` (shown with
//! `RUST_LOG=librdkafka=debug`). A seed reproduces the workload, the settings and the fault
//! schedule, not the timing (commit interleaving, which batch a fault hits, librdkafka's and
//! the relay's jitter): a failing case replayed may need a few repeats to fail again; see
//! `tests::relay_gen`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use outbox::KafkaConfig;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::RDKafkaApiKey;
use tests::relay_gen::{self as rg, Case, Fault, FaultClass, Settings};
use tests::relay_gen_ops::{GenConn, left_over};
use tests::relay_gen_oracle as oracle;
use tests::relay_support as rs;
use tests::{Backend, TestConn, TestDb, TestKafka};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

tests::backends!(generative,);

const DRAIN: Duration = Duration::from_secs(120);

#[derive(Debug, Default)]
struct CaseStats {
    committed: usize,
    rolled_back: usize,
    checked: oracle::Checked,
    parked: HashSet<Uuid>,
    retried: HashSet<Uuid>,
    discarded: HashSet<Uuid>,
    faults: BTreeMap<FaultClass, u64>,
    /// The builder refused the case's settings (with this error): nothing else was run.
    refused: Option<String>,
}

#[derive(Debug, Default)]
struct Totals {
    cases: u32,
    failed: u32,
    refused: u32,
    committed: usize,
    records: usize,
    duplicates: usize,
    parked: usize,
    retried: usize,
    discarded: usize,
    faults: BTreeMap<FaultClass, u64>,
}

async fn generative<B: Backend>()
where
    B::Conn: GenConn,
{
    if TestKafka::new().mock().is_none() {
        println!("KAFKA_BROKERS is set: the generative suite injects faults through the mock cluster; skipped");
        return;
    }
    let settings = Settings::from_env(B::NAME);
    let started = Instant::now();
    let mut totals = Totals::default();
    let mut failures = Vec::new();
    let runs = (0..settings.cases).flat_map(|i| std::iter::repeat_n(i, settings.repeat as usize));
    for i in runs {
        if settings.only.is_some_and(|only| only != i) {
            continue;
        }
        let seed = settings.case_seed(i);
        let case = Case::generate(seed);
        let t = Instant::now();
        let mut stats = CaseStats::default();
        let result = run_case::<B>(&case, &mut stats).await;
        totals.cases += 1;
        totals.committed += stats.committed;
        totals.records += stats.checked.records;
        totals.duplicates += stats.checked.duplicates;
        totals.parked += stats.parked.len();
        totals.retried += stats.retried.len();
        totals.discarded += stats.discarded.len();
        for (class, n) in &stats.faults {
            *totals.faults.entry(*class).or_default() += n;
        }
        let verdict = match (&result, &stats.refused) {
            (Ok(()), None) => "ok".to_owned(),
            (Ok(()), Some(e)) => {
                totals.refused += 1;
                format!("refused by the builder ({e})")
            }
            (Err(_), _) => "FAILED".to_owned(),
        };
        println!(
            "[{}] case {i}/{} {verdict} in {:.1} s: committed={} rolled_back={} records={} dup={} parked={} \
             retried={} discarded={} (discarded but on the topic: {}) | {}",
            B::NAME,
            settings.cases,
            t.elapsed().as_secs_f64(),
            stats.committed,
            stats.rolled_back,
            stats.checked.records,
            stats.checked.duplicates,
            stats.parked.len(),
            stats.retried.len(),
            stats.discarded.len(),
            stats.checked.discarded_present,
            case.describe()
        );
        if let Err(violations) = result {
            totals.failed += 1;
            let message = format!(
                "case {i} of seed {} (case seed {seed:#x}) on {}: {}\n  {}\n  replay: {}",
                settings.seed,
                B::NAME,
                case.describe(),
                violations.join("\n  "),
                settings.replay(Some(i))
            );
            println!("{message}");
            failures.push(message);
        }
    }
    println!(
        "[{}] totals: seed {}, cases {} ({} failed, {} refused by the builder), committed {}, records checked {}, duplicates {}, parked {}, \
         retried {}, discarded {}, faults injected {:?}, elapsed {:.1} s",
        B::NAME,
        settings.seed,
        totals.cases,
        totals.failed,
        totals.refused,
        totals.committed,
        totals.records,
        totals.duplicates,
        totals.parked,
        totals.retried,
        totals.discarded,
        totals.faults,
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} of {} generative cases failed (seed {}; replay the run: {}):\n{}",
        failures.len(),
        totals.cases,
        settings.seed,
        settings.replay(None),
        failures.join("\n")
    );
}

type RelayTask = (CancellationToken, JoinHandle<outbox::Result<()>>);

/// The builder's error for settings it refuses.
struct Refused(String);

async fn start_relay<B: Backend>(db: &TestDb<B>, kafka: &TestKafka, case: &Case) -> Result<RelayTask, Refused> {
    let ms = Duration::from_millis;
    // One Produce request in flight per broker connection: librdkafka acks a failed, not
    // persisted batch implicitly when a later batch of its partition succeeds, which is right
    // against a real broker (it rejects the sequence gap) but not against the mock cluster, which
    // checks sequences only for transactional producers, appends the later batch and so loses
    // the failed one (seen with LEADER_NOT_AVAILABLE and UNKNOWN_PRODUCER_ID).
    let mut config = KafkaConfig::new(kafka.brokers())
        .set("message.timeout.ms", case.message_timeout_ms.to_string())
        .set("max.in.flight.requests.per.connection", "1");
    if let Ok(d) = std::env::var("RELAY_GEN_RDKAFKA_DEBUG") {
        config = config.set("debug", d);
    }
    let relay = rs::relay_with(db.pool(case.pool_size).await, config)
        .batch_size(case.batch_size)
        .lease(ms(case.lease_ms))
        .max_attempts(case.max_attempts)
        .backoff(ms(case.backoff_ms.0), ms(case.backoff_ms.1))
        .build()
        .map_err(|e| Refused(e.to_string()))?;
    Ok(rs::spawn(relay))
}

async fn run_case<B: Backend>(case: &Case, stats: &mut CaseStats) -> Result<(), Vec<String>>
where
    B::Conn: GenConn,
{
    let db = TestDb::<B>::fresh().await;
    let kafka = TestKafka::new();
    let mock = kafka.mock().expect("mock cluster");
    kafka.create_topic(rs::TOPIC, case.partitions).await;
    if case.notify {
        db.conn().await.enable_notify().await;
    }
    let mut relays = Vec::new();
    for _ in 0..case.relays {
        match start_relay(&db, &kafka, case).await {
            Ok(relay) => relays.push(relay),
            // Refusing a setting at build() is a valid answer, if it says which and why.
            Err(Refused(e)) if !relays.is_empty() => return Err(vec![format!("a second relay was refused: {e}")]),
            Err(Refused(e)) if e.contains("relay:") || e.contains("kafka:") => {
                stats.refused = Some(e);
                return Ok(());
            }
            Err(Refused(e)) => return Err(vec![format!("the relay builder refused these settings unclearly: {e}")]),
        }
    }
    let mut rng = StdRng::seed_from_u64(case.chaos_seed);
    let (written, chaos) =
        tokio::join!(rg::write(&db, case), chaos(&db, &kafka, mock, &mut relays, case, &mut rng, stats));
    let written = written.map_err(|e| vec![e])?;
    chaos?;
    stats.committed = written.committed.len();
    stats.rolled_back = written.rolled_back.len();

    // Drain: retry whatever is parked until the outbox is empty (nothing is discarded now).
    let mut problems = Vec::new();
    if let Err(e) = drain(&db, case, &mut relays, &mut rng, stats).await {
        problems.push(e);
    }
    for (i, (stop, task)) in relays.into_iter().enumerate() {
        stop.cancel();
        match tokio::time::timeout(Duration::from_secs(30), task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(other) => problems.push(format!("relay {i} stopped with {other:?}")),
            Err(_) => problems.push(format!("relay {i} did not stop within 30 s of shutdown")),
        }
    }
    let records = oracle::read_to_end(kafka.brokers(), rs::TOPIC, case.partitions, Duration::from_secs(60))
        .await
        .map_err(|e| vec![e])?;
    match oracle::check(&written, &stats.discarded, &records) {
        Ok(checked) => stats.checked = checked,
        Err(violations) => {
            stats.checked.records = records.len();
            // A case that could not drain misses rows by definition; its other violations count.
            let drained = problems.is_empty();
            problems.extend(violations.into_iter().filter(|v| drained || !v.contains("never reached the topic")));
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(problems) }
}

/// Waits until the outbox is empty, retrying parked rows (never discarding them). Fails after
/// [`DRAIN`], or as soon as one row failed with librdkafka's fatal error more often than the
/// injected idempotence errors explain (each can make a producer fatal once, failing the
/// batches in flight: a relay that recreates its producer gets past it).
async fn drain<B: Backend>(
    db: &TestDb<B>,
    case: &Case,
    relays: &mut Vec<RelayTask>,
    rng: &mut StdRng,
    stats: &mut CaseStats,
) -> Result<(), String>
where
    B::Conn: GenConn,
{
    let injected: usize = case
        .faults
        .iter()
        .map(|(_, f)| match f {
            Fault::ProduceErrors { class: FaultClass::Idempotence, count, .. } => *count,
            _ => 0,
        })
        .sum();
    let fatal_budget = 1 + 2 * injected;
    let mut fatal_failures: HashMap<Uuid, ((i32, bool), usize)> = HashMap::new();
    // Each injected idempotence error fails one produce request, and a key's head is produced
    // again only after its retry delay: with one key, 20-60 such errors cost up to that many
    // backoff delays on top of the drain (case 4 of seed 11690118431551227136: 366 rows left
    // after 120 s, the head at attempt 11, still working through the injected errors).
    let drain = DRAIN + Duration::from_millis(case.backoff_ms.1) * u32::try_from(injected).unwrap_or(u32::MAX);
    let deadline = Instant::now() + drain;
    loop {
        if db.count("SELECT count(*) AS n FROM outbox_messages").await == 0 {
            return Ok(());
        }
        if let Some(i) = relays.iter().position(|(_, task)| task.is_finished()) {
            let (_, task) = relays.swap_remove(i);
            return Err(format!("relay task {i} ended on its own while rows were left: {:?}", task.await));
        }
        let rows = db.conn().await.outbox_rows().await;
        for r in rows.iter().filter(|r| r.last_error.as_deref().is_some_and(|e| e.contains("Fatal"))) {
            // A new failure of this row with the fatal error: its attempts or parked state changed.
            let state = (r.attempts, r.parked_at.is_some());
            let (last, n) = fatal_failures.entry(r.id).or_insert(((-1, false), 0));
            if *last != state {
                *last = state;
                *n += 1;
            }
            if *n > fatal_budget {
                return Err(format!(
                    "the relay does not recover from a fatal producer error: after the fault schedule \
                     ended, id {} failed {n} times with {:?}, more than {fatal_budget} (twice the idempotence \
                     errors injected, plus one); {}",
                    r.id,
                    r.last_error,
                    left_over(db).await
                ));
            }
        }
        let parked = rows.iter().any(|r| r.parked_at.is_some());
        if parked {
            // A retried row is unparked with no attempts: seeing it parked again is a new failure.
            for id in resolve_parked(db, rng, stats, 1.0, false).await {
                if let Some((last, _)) = fatal_failures.get_mut(&id) {
                    *last = (0, false);
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(format!("outbox not drained within {drain:?}: {}", left_over(db).await));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the case's fault schedule while the writers write.
async fn chaos<B: Backend>(
    db: &TestDb<B>,
    kafka: &TestKafka,
    mock: &MockCluster<'static, DefaultProducerContext>,
    relays: &mut [RelayTask],
    case: &Case,
    rng: &mut StdRng,
    stats: &mut CaseStats,
) -> Result<(), Vec<String>>
where
    B::Conn: GenConn,
{
    for (gap, fault) in &case.faults {
        // The schedule's pauses: part of the fault model, not a wait for a condition.
        tokio::time::sleep(Duration::from_millis(*gap)).await;
        *stats.faults.entry(fault.class()).or_default() += 1;
        match fault {
            Fault::ProduceErrors { code, count, .. } => {
                mock.request_errors(RDKafkaApiKey::Produce, &vec![*code; *count])
            }
            Fault::Outage { ms } => {
                for b in 1..=3 {
                    mock.broker_down(b).expect("broker down");
                }
                tokio::time::sleep(Duration::from_millis(*ms)).await;
                for b in 1..=3 {
                    mock.broker_up(b).expect("broker up");
                }
            }
            Fault::Kill { relay, restart_after_ms } => {
                // Killed without releasing its lease: the other relay (if any) takes over once
                // the lease has run out; this one comes back after that.
                let (_, task) = &relays[*relay];
                task.abort();
                tokio::time::sleep(Duration::from_millis(*restart_after_ms)).await;
                relays[*relay] = start_relay(db, kafka, case)
                    .await
                    .map_err(|Refused(e)| vec![format!("restarting a relay was refused: {e}")])?;
            }
            Fault::Ops => drop(resolve_parked(db, rng, stats, 0.7, true).await),
        }
    }
    Ok(())
}

/// Lists the parked rows and, for each with probability `share`, retries it (3 in 4) or, when
/// `discard_some`, discards it (1 in 4), as an operator would with `outbox::ops`. Returns the
/// retried ids.
async fn resolve_parked<B: Backend>(
    db: &TestDb<B>,
    rng: &mut StdRng,
    stats: &mut CaseStats,
    share: f64,
    discard_some: bool,
) -> Vec<Uuid>
where
    B::Conn: GenConn,
{
    let mut conn = db.conn().await;
    let parked = conn.parked_rows().await;
    let (mut retry, mut discard) = (Vec::new(), Vec::new());
    for (id, _, _) in parked {
        stats.parked.insert(id);
        if !rng.random_bool(share) {
            continue;
        }
        if discard_some && rng.random_bool(0.25) { discard.push(id) } else { retry.push(id) }
    }
    if !retry.is_empty() {
        conn.retry_parked(&retry).await;
        stats.retried.extend(retry.iter().copied());
    }
    if !discard.is_empty() {
        // Parked rows change only here (the relay never touches them), so each was deleted.
        conn.discard_parked(&discard).await;
        stats.discarded.extend(discard);
    }
    retry
}
