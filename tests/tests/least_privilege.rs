//! Least privilege (PostgreSQL only): the roles of docs/roles.sql with the grants of
//! docs/grants.sql, exactly as shipped. The schema owner migrates; the writer, the relay, the
//! consumer and the operator then each run as their own login and do their whole job (publish,
//! relay to Kafka with a parked and held key, discard the parked message, consume with dedup,
//! a dead letter and pruning), while every statement on another component's tables is refused
//! with SQLSTATE 42501. A component started without one of its grants reports the permission
//! error (see `relay_without_its_lease_grant_fails_at_start_up`).
//!
//! Roles are cluster-wide and suites run in parallel on one server, so each test renames the
//! shipped roles with a prefix of its own (whole identifiers only; see `rename_roles`).

use std::collections::HashSet;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use diesel::QueryableByName;
use diesel::sql_types::Text;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use inbox::ops::{DeadLetterSelection, ReplaySelection};
use inbox::{Context, Handler, HandlerError, Inbox};
use outbox::ops::{self, Selection};
use outbox::relay::AfterSend;
use tests::inbox_support::run_until_positions;
use tests::produce::{CloudEvent, TestProducer, inbox_kafka_config};
use tests::relay_support::{self as rs, Happened};
use tests::{Backend, Pg, TestDb, TestKafka};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const ROLES_SQL: &str = include_str!("../../docs/roles.sql");
const GRANTS_SQL: &str = include_str!("../../docs/grants.sql");

/// The role names the shipped SQL uses.
const SHIPPED: [&str; 5] = ["outbox_owner", "outbox_writer", "outbox_relay", "inbox_consumer", "outbox_operator"];

/// The shipped roles under a prefix of this test, with a login each, over one fresh database.
struct Roles {
    db: TestDb<Pg>,
    prefix: String,
}

impl Roles {
    /// A fresh, empty database; docs/roles.sql run by the administrator (the suites' superuser),
    /// and LOGIN for each role (trust authentication on the throwaway server: no password).
    async fn create() -> Roles {
        let db = TestDb::<Pg>::empty().await;
        let prefix = format!("lp{}", &Uuid::now_v7().simple().to_string()[24..]);
        let roles = Roles { db, prefix };
        roles.admin_exec(&roles.rename(ROLES_SQL)).await;
        for r in SHIPPED {
            roles.admin_exec(&format!("ALTER ROLE {} LOGIN", roles.name(r))).await;
        }
        roles
    }

    /// `shipped` (e.g. `outbox_relay`) as this test names it.
    fn name(&self, shipped: &str) -> String {
        format!("{}_{}", self.prefix, shipped)
    }

    fn rename(&self, sql: &str) -> String {
        rename_roles(sql, &|ident| SHIPPED.contains(&ident).then(|| self.name(ident)))
    }

    /// The test database's URL with `user=<role>`.
    fn url(&self, shipped: &str) -> String {
        as_user(&self.db.url, &self.name(shipped))
    }

    async fn conn(&self, shipped: &str) -> AsyncPgConnection {
        Pg::connect(&self.url(shipped)).await
    }

    async fn pool(&self, shipped: &str, size: u32) -> bb8::Pool<<Pg as Backend>::Manager> {
        Pg::pool(&self.url(shipped), size).await
    }

    async fn admin_exec(&self, sql: &str) {
        self.db.exec(sql).await
    }

    /// `outbox::migrate` and `inbox::migrate` as the owner, then docs/grants.sql as the owner
    /// (the documented order).
    async fn migrate_and_grant(&self) {
        let mut owner = self.conn("outbox_owner").await;
        outbox::migrate(&mut owner).await.expect("migrate the outbox as the schema owner");
        inbox::migrate(&mut owner).await.expect("migrate the inbox as the schema owner");
        diesel_async::SimpleAsyncConnection::batch_execute(&mut owner, &self.rename(GRANTS_SQL))
            .await
            .expect("docs/grants.sql as the schema owner");
    }
}

/// Replaces whole SQL identifiers (`[A-Za-z0-9_]+`, inside quotes too) for which `map` has a
/// replacement; `outbox_relay_leases` is not `outbox_relay`.
fn rename_roles(sql: &str, map: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut ident = String::new();
    let flush = |ident: &mut String, out: &mut String| {
        match map(ident) {
            Some(r) => out.push_str(&r),
            None => out.push_str(ident),
        }
        ident.clear();
    };
    for c in sql.chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            ident.push(c);
        } else {
            flush(&mut ident, &mut out);
            out.push(c);
        }
    }
    flush(&mut ident, &mut out);
    out
}

/// `postgres://user@host/db` with another user (and no password: trust authentication).
fn as_user(url: &str, user: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a postgres:// URL");
    let host_start = match rest.find('@') {
        Some(at) if rest.find('/').is_none_or(|slash| at < slash) => at + 1,
        _ => 0,
    };
    format!("{scheme}://{user}@{}", &rest[host_start..])
}

/// What the SDK logs at warn and above while a test runs, on this test's thread only
/// (`tracing::subscriber::set_default` on a current-thread runtime: every task the test spawns
/// runs on it).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("warn,librdkafka=off,rdkafka=off"))
            .with_ansi(false)
            .with_writer(self.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;

    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

/// Runs `sql` as the connection's role and returns its SQLSTATE ("00000" when it succeeded)
/// with the server's message. diesel does not expose the SQLSTATE, so the statement runs inside
/// `lp_sqlstate` (created by the administrator, SECURITY INVOKER: the caller's privileges).
async fn sqlstate(conn: &mut AsyncPgConnection, sql: &str) -> (String, String) {
    #[derive(QueryableByName)]
    struct State {
        #[diesel(sql_type = Text)]
        state: String,
    }
    let s: State = diesel::sql_query("SELECT lp_sqlstate($1) AS state")
        .bind::<Text, _>(sql)
        .get_result(conn)
        .await
        .expect("lp_sqlstate");
    let (code, message) = s.state.split_once(' ').unwrap_or((&s.state, ""));
    (code.to_owned(), message.to_owned())
}

const SQLSTATE_FN: &str = "
CREATE FUNCTION lp_sqlstate(stmt text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE stmt;
    RETURN '00000 ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ' ' || SQLERRM;
END
$$";

/// Records every message id it is called for.
struct Seen(Arc<Mutex<Vec<Uuid>>>);

#[inbox::async_trait]
impl Handler<Happened, AsyncPgConnection> for Seen {
    async fn handle(&self, _e: Happened, cx: &mut Context<'_, AsyncPgConnection>) -> Result<(), HandlerError> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(cx.message_id());
        Ok(())
    }
}

/// Polls `sql` (a one-value `... AS n` query, run as the administrator) until it returns
/// exactly `want`, or panics after `timeout`.
async fn wait_exactly(db: &TestDb<Pg>, sql: &str, want: i64, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let n = db.count(sql).await;
        if n == want {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{sql}: {n}, expected {want} within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn each_component_does_its_whole_job_as_its_own_role() {
    let logs = Logs::default();
    let _guard = logs.install();
    let roles = Roles::create().await;
    roles.migrate_and_grant().await;
    let db = &roles.db;
    // NOTIFY on: the owner's switch (ALTER TABLE); the relay LISTENs as its own role and the
    // trigger fires in the writer's inserts.
    outbox::set_notify(&mut roles.conn("outbox_owner").await, true).await.expect("set_notify as the owner");
    // Every role may call migrate at start-up: a no-op on a current schema.
    for r in ["outbox_writer", "outbox_relay", "inbox_consumer", "outbox_operator"] {
        let mut conn = roles.conn(r).await;
        outbox::migrate(&mut conn).await.unwrap_or_else(|e| panic!("outbox::migrate as {r}: {e}"));
        inbox::migrate(&mut conn).await.unwrap_or_else(|e| panic!("inbox::migrate as {r}: {e}"));
    }
    println!("migrate as each service role on a current schema: ok (no-op)");

    let kafka = TestKafka::new();
    kafka.create_topic(rs::TOPIC, 3).await;

    // The writer: 30 events over 10 keys, then on key `kp` one record too large for the
    // producer, followed by two more that must wait behind it.
    let mut writer = roles.conn("outbox_writer").await;
    let mut delivered = Vec::new();
    for i in 0..30u64 {
        let e = Happened::new(format!("k{}", i % 10), i);
        delivered
            .push(writer.transaction::<_, outbox::Error, _>(async |tx| outbox::publish(tx, &e).await).await.unwrap());
    }
    let mut poison = Happened::new("kp", 100);
    poison.pad = "y".repeat(64 * 1024);
    let poison =
        writer.transaction::<_, outbox::Error, _>(async |tx| outbox::publish(tx, &poison).await).await.unwrap();
    let behind: Vec<Happened> = (101..103).map(|n| Happened::new("kp", n)).collect();
    let held =
        writer.transaction::<_, outbox::Error, _>(async |tx| outbox::publish_all(tx, &behind).await).await.unwrap();
    println!("writer published {} events as {}", delivered.len() + 1 + held.len(), roles.name("outbox_writer"));

    // The relay: keeps sent rows for 1 ms (mark sent, then the retention cleanup deletes them),
    // parks the oversized record, holds its key's later rows, renews its lease, LISTENs.
    let config = outbox::KafkaConfig::new(kafka.brokers()).set("message.max.bytes", "32768");
    let relay = rs::relay_with(roles.pool("outbox_relay", 4).await, config)
        .max_attempts(3)
        .after_send(AfterSend::Keep { retention: Duration::from_millis(1) })
        .cleanup(Duration::from_millis(100), 100)
        .metrics_interval(Duration::from_millis(100))
        .build()
        .unwrap();
    let (stop_relay, relay_task) = rs::spawn(relay);
    let records = rs::read_topic(&kafka, delivered.len()).await;
    let forbidden: HashSet<Uuid> = held.iter().copied().chain([poison]).collect();
    let report = rs::check_delivery(&records, &delivered, &forbidden);
    println!("relay as {}: other keys delivered: {report:?}", roles.name("outbox_relay"));
    wait_exactly(
        db,
        "SELECT count(*) AS n FROM outbox_messages WHERE parked_at IS NOT NULL",
        1,
        Duration::from_secs(20),
    )
    .await;
    wait_exactly(db, "SELECT count(*) AS n FROM outbox_messages WHERE held", 2, Duration::from_secs(20)).await;

    // The operator: status, the parked message, and its discard (which releases the held rows).
    let mut operator = roles.conn("outbox_operator").await;
    let status = ops::status(&mut operator).await.expect("status as the operator");
    assert_eq!(status.parked, 1, "{status:?}");
    assert!(status.lease.as_ref().is_some_and(|l| l.owner.is_some()), "{status:?}");
    let parked = ops::list_parked(&mut operator, 10, None).await.expect("list parked as the operator");
    assert_eq!(parked.iter().map(|m| m.id).collect::<Vec<_>>(), vec![poison]);
    // Retrying would only park it again (it stays too large); a retry of another topic runs the
    // same UPDATE and touches nothing.
    let none = Selection::All { topic: Some("lp.no.such.topic".into()) };
    assert_eq!(ops::retry_parked(&mut operator, none).await.expect("retry as the operator"), 0);
    assert_eq!(ops::discard_parked(&mut operator, Selection::Ids(vec![poison])).await.expect("discard"), 1);
    println!(
        "operator as {}: status parked={} lease epoch={:?}; discarded the parked message",
        roles.name("outbox_operator"),
        status.parked,
        status.lease.as_ref().map(|l| l.epoch)
    );

    // The relay sends the released rows, then the cleanup deletes every sent row.
    let all: Vec<Uuid> = delivered.iter().chain(&held).copied().collect();
    let records = rs::read_topic(&kafka, all.len()).await;
    let report = rs::check_delivery(&records, &all, &HashSet::from([poison]));
    wait_exactly(db, "SELECT count(*) AS n FROM outbox_messages", 0, Duration::from_secs(20)).await;
    stop_relay.cancel();
    relay_task.await.unwrap().expect("relay run");
    println!("relay: held key released and delivered, sent rows cleaned up: {report:?}");

    // The consumer: everything on the topic, plus a copy of a delivered message (same id, a
    // duplicate) and a message of a type nobody handles (a dead letter).
    let producer = TestProducer::new(&kafka);
    producer.send(&CloudEvent::of(&Happened::new("k0", 0)).with_id(delivered[0])).await;
    producer.send(&CloudEvent::of(&Happened::new("ku", 1)).header("ce_type", "nobody.handles.this")).await;
    let on_topic =
        kafka.read_all(rs::TOPIC, records.len() + 2, Duration::from_secs(20), Duration::from_millis(300)).await;
    let group = "lp-consumer";
    let seen = Arc::new(Mutex::new(Vec::new()));
    let consumer = Inbox::builder(roles.pool("inbox_consumer", 4).await, inbox_kafka_config(&kafka))
        .group(group)
        .handle(Seen(seen.clone()))
        .build()
        .unwrap();
    let reached = run_until_positions(db, vec![(consumer, on_topic.len() as i64)], Duration::from_secs(30)).await;
    assert_eq!(reached, vec![on_topic.len() as i64], "every record consumed");
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let distinct: HashSet<Uuid> = seen.iter().copied().collect();
    assert_eq!(seen.len(), distinct.len(), "no message handled twice");
    assert_eq!(distinct, all.iter().copied().collect::<HashSet<_>>(), "every published message handled once");
    assert_eq!(db.count("SELECT count(*) AS n FROM inbox_dead_letters").await, 1);
    println!(
        "consumer as {}: {} records, {} handled once each, 1 dead letter",
        roles.name("inbox_consumer"),
        on_topic.len(),
        distinct.len()
    );

    // The operator lists the dead letter and asks for a replay; the consumer's replay fails again
    // (still no handler for its type) and records that on the row; the operator discards it.
    let dead = inbox::ops::list_dead_letters(&mut operator, Some(group), 10).await.expect("list dead letters");
    assert_eq!(dead.iter().map(|d| d.reason.as_str()).collect::<Vec<_>>(), vec!["unknown_type"]);
    let requested = inbox::ops::request_replay(&mut operator, &ReplaySelection::all().in_group(group)).await;
    assert_eq!(requested.expect("request a replay"), 1);
    let replayer = Inbox::builder(roles.pool("inbox_consumer", 2).await, inbox_kafka_config(&kafka))
        .group(group)
        .handle(Seen(Arc::new(Mutex::new(Vec::new()))))
        .build()
        .unwrap()
        .replayer();
    let report = replayer.replay(&ReplaySelection::all()).await.expect("replay as inbox_consumer");
    assert_eq!((report.handled, report.failed), (0, 1));
    let dead = inbox::ops::list_dead_letters(&mut operator, Some(group), 10).await.expect("list dead letters");
    assert_eq!((dead[0].attempts, dead[0].replay_requested_at), (1, None), "the failed replay was recorded");
    assert_eq!(
        inbox::ops::discard_dead_letters(&mut operator, DeadLetterSelection::Group(group.into())).await.unwrap(),
        1
    );

    // The consumer prunes its dedup rows once they are older than its window.
    let pruning = Inbox::builder(roles.pool("inbox_consumer", 2).await, inbox_kafka_config(&kafka))
        .group(group)
        .handle(Seen(Arc::new(Mutex::new(Vec::new()))))
        .dedup_window(Duration::from_millis(1))
        .prune_interval(Duration::from_millis(100))
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    let running = tokio::spawn(pruning.run(stop.clone()));
    wait_exactly(db, "SELECT count(*) AS n FROM inbox_messages", 0, Duration::from_secs(20)).await;
    stop.cancel();
    running.await.unwrap().expect("inbox run");
    println!("operator discarded the dead letter; consumer pruned its dedup rows");

    // Nothing along the way was refused (the LISTEN session, the orphan sweep, the gauges,
    // the cleanup and the pruning only log their errors).
    let text = logs.text();
    assert!(!text.contains("permission denied") && !text.contains("must be owner"), "refused along the way:\n{text}");
}

#[tokio::test]
async fn a_component_cannot_touch_another_components_tables() {
    let roles = Roles::create().await;
    roles.migrate_and_grant().await;
    roles.admin_exec(SQLSTATE_FN).await;
    // One row in each table, so a statement that got through would show.
    roles
        .admin_exec(
            "INSERT INTO outbox_messages (id, topic, key, event_type, event_version, payload, occurred_at) \
               VALUES (gen_random_uuid(), 't', 'k', 'e', 1, 'x', now());
             INSERT INTO outbox_relay_leases (name, owner, epoch, expires_at) VALUES ('default', gen_random_uuid(), 1, now());
             INSERT INTO inbox_messages (consumer_group, message_id, topic, kafka_partition, kafka_offset) \
               VALUES ('g', gen_random_uuid(), 't', 0, 0);
             INSERT INTO inbox_offsets (consumer_group, topic, kafka_partition, next_offset) VALUES ('g', 't', 0, 1);
             INSERT INTO inbox_dead_letters (consumer_group, topic, kafka_partition, kafka_offset, reason, error, attempts) \
               VALUES ('g', 't', 0, 0, 'r', 'e', 0)",
        )
        .await;
    const EVENT: &str = "INSERT INTO outbox_messages (id, topic, key, event_type, event_version, payload, headers, \
                         occurred_at) VALUES (gen_random_uuid(), 't', 'k', 'e', 1, 'x', '{}', now())";
    // Each role: what it may do (a harmless form of its own statements) and what it may not.
    let allowed: &[(&str, &[&str])] = &[
        ("outbox_writer", &[EVENT]),
        (
            "outbox_relay",
            &[
                "SELECT * FROM outbox_messages",
                "UPDATE outbox_messages SET sent_at = sent_at, held = held WHERE false",
                "DELETE FROM outbox_messages WHERE false",
                "SELECT * FROM outbox_relay_leases FOR SHARE",
                "SELECT hashtextextended('k', 0)",
                "LISTEN outbox_messages",
            ],
        ),
        (
            "inbox_consumer",
            &[
                "SELECT message_id FROM inbox_messages",
                "DELETE FROM inbox_messages WHERE false",
                "SELECT * FROM inbox_offsets",
                "UPDATE inbox_offsets SET next_offset = next_offset WHERE false",
                "INSERT INTO inbox_dead_letters (consumer_group, topic, kafka_partition, kafka_offset, reason, error, \
                 attempts) VALUES ('g', 't', 0, 1, 'r', 'e', 0)",
                "SELECT * FROM inbox_dead_letters WHERE false FOR UPDATE SKIP LOCKED",
                "UPDATE inbox_dead_letters SET reason = 'r', error = 'e', attempts = attempts + 1, \
                 replay_requested_at = NULL WHERE false",
                "DELETE FROM inbox_dead_letters WHERE false",
            ],
        ),
        (
            "outbox_operator",
            &[
                "SELECT * FROM outbox_messages",
                "UPDATE outbox_messages SET parked_at = NULL, held = false WHERE false",
                "SELECT * FROM outbox_relay_leases",
                "SELECT * FROM inbox_dead_letters",
                "DELETE FROM inbox_dead_letters WHERE false",
                "UPDATE inbox_dead_letters SET replay_requested_at = now() WHERE false",
            ],
        ),
    ];
    let every_role_refused: &[&str] = &[
        "CREATE TABLE lp_sneaky (x int)",
        "ALTER TABLE outbox_messages ENABLE TRIGGER outbox_messages_notify",
        "DROP TABLE inbox_offsets",
        "INSERT INTO outbox_schema_migrations (version) VALUES ('99999999999999_sneaky')",
    ];
    let refused: &[(&str, &[&str])] = &[
        (
            "outbox_writer",
            &[
                "SELECT id FROM outbox_messages",
                "UPDATE outbox_messages SET sent_at = now()",
                "DELETE FROM outbox_messages",
                "INSERT INTO outbox_messages (id, topic, event_type, event_version, payload, occurred_at, sent_at) \
                 VALUES (gen_random_uuid(), 't', 'e', 1, 'x', now(), now())",
                "SELECT * FROM outbox_relay_leases",
                "UPDATE outbox_relay_leases SET owner = NULL",
                "SELECT * FROM inbox_messages",
                "SELECT * FROM inbox_offsets",
                "SELECT * FROM inbox_dead_letters",
            ],
        ),
        (
            "outbox_relay",
            &[
                EVENT,
                "UPDATE outbox_messages SET payload = 'forged'",
                "UPDATE outbox_messages SET topic = 'elsewhere'",
                "DELETE FROM outbox_relay_leases",
                "SELECT * FROM inbox_messages",
                "SELECT * FROM inbox_offsets",
                "SELECT * FROM inbox_dead_letters",
                "INSERT INTO inbox_messages (consumer_group, message_id, topic, kafka_partition, kafka_offset) \
                 VALUES ('g', gen_random_uuid(), 't', 0, 0)",
            ],
        ),
        (
            "inbox_consumer",
            &[
                "SELECT * FROM outbox_messages",
                EVENT,
                "SELECT * FROM outbox_relay_leases",
                "UPDATE inbox_dead_letters SET payload = 'forged'",
                "UPDATE inbox_dead_letters SET consumer_group = 'elsewhere'",
                "UPDATE inbox_messages SET kafka_offset = 0",
                "DELETE FROM inbox_offsets",
            ],
        ),
        (
            "outbox_operator",
            &[
                EVENT,
                "UPDATE outbox_messages SET payload = 'forged'",
                "UPDATE outbox_messages SET sent_at = now()",
                "UPDATE outbox_relay_leases SET owner = NULL",
                "SELECT * FROM inbox_messages",
                "SELECT * FROM inbox_offsets",
                "INSERT INTO inbox_dead_letters (consumer_group, topic, kafka_partition, kafka_offset, reason, error, \
                 attempts) VALUES ('g', 't', 0, 2, 'r', 'e', 0)",
                "UPDATE inbox_dead_letters SET payload = 'forged'",
                "UPDATE inbox_dead_letters SET reason = 'forged'",
            ],
        ),
    ];
    for (role, statements) in allowed {
        let mut conn = roles.conn(role).await;
        for sql in *statements {
            let (code, message) = sqlstate(&mut conn, sql).await;
            assert_eq!(code, "00000", "{role} must be allowed `{sql}`: {message}");
        }
        println!("{role}: {} own statements allowed", statements.len());
    }
    let mut denials = 0;
    for (role, statements) in refused {
        let mut conn = roles.conn(role).await;
        for sql in statements.iter().chain(every_role_refused) {
            let (code, message) = sqlstate(&mut conn, sql).await;
            assert_eq!(code, "42501", "{role} must be refused `{sql}`, got {code} {message}");
            println!("{role}: 42501 {message}  <- {sql}");
            denials += 1;
        }
    }
    println!("{denials} statements refused with 42501");
    // Nothing got through: the admin still sees the original rows.
    let db = &roles.db;
    assert_eq!(db.count("SELECT count(*) AS n FROM outbox_messages WHERE sent_at IS NULL AND topic = 't'").await, 2);
    assert_eq!(db.count("SELECT count(*) AS n FROM outbox_relay_leases WHERE owner IS NOT NULL").await, 1);
    assert_eq!(db.count("SELECT count(*) AS n FROM inbox_offsets").await, 1);
    assert_eq!(db.count("SELECT count(*) AS n FROM inbox_dead_letters").await, 2);

    // What the SDK's own calls report when a role reaches past its grants.
    let err = ops::status(&mut roles.conn("outbox_writer").await).await.expect_err("the writer reads no status");
    println!("ops::status as the writer: {err}");
    assert!(err.to_string().contains("permission denied for table outbox_messages"), "{err}");
    let err = ops::list_parked(&mut roles.conn("inbox_consumer").await, 10, None).await.expect_err("consumer");
    println!("ops::list_parked as the consumer: {err}");
    assert!(err.to_string().contains("permission denied for table outbox_messages"), "{err}");
    let err = outbox::set_notify(&mut roles.conn("outbox_relay").await, true).await.expect_err("owner only");
    println!("outbox::set_notify as the relay: {err}");
    assert!(err.to_string().contains("must be owner of table outbox_messages"), "{err}");
}

#[tokio::test]
async fn migrate_as_a_service_role_needs_the_owner_only_while_migrations_are_pending() {
    let roles = Roles::create().await;
    // Nothing migrated yet: a service role cannot apply the migrations and says so, from the
    // catalog's answer (no CREATE on the schema) before any statement is refused.
    let err = outbox::migrate(&mut roles.conn("outbox_relay").await).await.expect_err("not the owner");
    println!("outbox::migrate as the relay before the owner migrated: {err}");
    let text = err.to_string();
    assert!(text.contains("outbox::migrate: 2 of 2 migrations are not applied"), "{text}");
    assert!(text.contains("lacks CREATE on schema ") && text.contains("run migrate as the schema owner"), "{text}");
    let err = inbox::migrate(&mut roles.conn("inbox_consumer").await).await.expect_err("not the owner");
    println!("inbox::migrate as the consumer before the owner migrated: {err}");
    let text = err.to_string();
    assert!(text.contains("inbox::migrate: 3 of 3 migrations are not applied"), "{text}");
    assert!(text.contains("run migrate as the schema owner"), "{text}");
    let tables = "SELECT count(*) AS n FROM pg_tables WHERE tablename LIKE 'outbox%' OR tablename LIKE 'inbox%'";
    assert_eq!(roles.db.count(tables).await, 0);
    // The owner applied the outbox's set only: the inbox's is pending, and the version table
    // exists now, but the consumer may not INSERT into it nor CREATE in the schema.
    outbox::migrate(&mut roles.conn("outbox_owner").await).await.expect("migrate the outbox as the owner");
    roles.admin_exec(&format!("GRANT SELECT ON outbox_schema_migrations TO {}", roles.name("inbox_consumer"))).await;
    let err = inbox::migrate(&mut roles.conn("inbox_consumer").await).await.expect_err("not the owner");
    println!("inbox::migrate as the consumer with only the outbox's set applied: {err}");
    let text = err.to_string();
    assert!(text.contains(" and INSERT on outbox_schema_migrations"), "{text}");
    roles.migrate_and_grant().await;
    outbox::migrate(&mut roles.conn("outbox_relay").await).await.expect("a no-op on a current schema");
    inbox::migrate(&mut roles.conn("outbox_relay").await).await.expect("a no-op on a current schema");
    // The migrations table: only the owner writes it.
    let applied = roles.db.count("SELECT count(*) AS n FROM outbox_schema_migrations").await;
    assert_eq!(applied, (outbox::POSTGRES_MIGRATIONS.len() + inbox::POSTGRES_MIGRATIONS.len()) as i64);
    // Without even SELECT on it (grants of an older docs/grants.sql), the error names the fix.
    roles.admin_exec(&format!("REVOKE SELECT ON outbox_schema_migrations FROM {}", roles.name("outbox_writer"))).await;
    for err in [
        outbox::migrate(&mut roles.conn("outbox_writer").await).await.expect_err("cannot read the versions"),
        inbox::migrate(&mut roles.conn("outbox_writer").await).await.expect_err("cannot read the versions"),
    ] {
        println!("migrate as the writer without SELECT on outbox_schema_migrations: {err}");
        assert!(err.to_string().contains("grant SELECT on outbox_schema_migrations"), "{err}");
    }
}

/// A relay whose role lacks one grant (UPDATE on its lease table) is started: `Relay::run`
/// returns the server's permission error, naming the table, instead of retrying it.
#[tokio::test]
async fn relay_without_its_lease_grant_fails_at_start_up() {
    let logs = Logs::default();
    let _guard = logs.install();
    let roles = Roles::create().await;
    roles.migrate_and_grant().await;
    roles.admin_exec(&format!("REVOKE UPDATE ON outbox_relay_leases FROM {}", roles.name("outbox_relay"))).await;
    let kafka = TestKafka::new();
    kafka.create_topic(rs::TOPIC, 1).await;
    let relay = rs::relay(roles.pool("outbox_relay", 2).await, &kafka).build().unwrap();
    // A missing grant is not transient: start-up fails with it instead of retrying.
    let outcome = tokio::time::timeout(Duration::from_secs(60), relay.run(CancellationToken::new()))
        .await
        .unwrap_or_else(|_| panic!("Relay::run kept retrying; logs:\n{}", logs.text()));
    let e = outcome.expect_err("Relay::run returned Ok without its lease grant");
    println!("relay without UPDATE on outbox_relay_leases: Relay::run returned: {e}");
    assert!(e.to_string().contains("permission denied for table outbox_relay_leases"), "{e}");
}

/// The same for the consumer: no SELECT on inbox_offsets (read when a partition is assigned).
#[tokio::test]
async fn consumer_without_its_offsets_grant_reports_the_permission_error() {
    let logs = Logs::default();
    let _guard = logs.install();
    let roles = Roles::create().await;
    roles.migrate_and_grant().await;
    roles.admin_exec(&format!("REVOKE SELECT ON inbox_offsets FROM {}", roles.name("inbox_consumer"))).await;
    let kafka = TestKafka::new();
    kafka.create_topic(rs::TOPIC, 1).await;
    TestProducer::new(&kafka).send(&CloudEvent::of(&Happened::new("k", 1))).await;
    let consumer = Inbox::builder(roles.pool("inbox_consumer", 2).await, inbox_kafka_config(&kafka))
        .group("lp-denied")
        .handle(Seen(Arc::new(Mutex::new(Vec::new()))))
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(consumer.run(stop.clone()));
    let wanted = "permission denied for table inbox_offsets";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let reported = loop {
        if task.is_finished() {
            break format!("Inbox::run returned: {:?}", task.await.unwrap());
        }
        if let Some(line) = logs.text().lines().find(|l| l.contains(wanted)) {
            stop.cancel();
            task.await.unwrap().expect("the inbox stops on shutdown");
            break format!("logged: {line}");
        }
        assert!(tokio::time::Instant::now() < deadline, "no permission error within 30 s; logs:\n{}", logs.text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("consumer without SELECT on inbox_offsets: {reported}");
    assert!(reported.contains(wanted), "{reported}");
}

/// A release behind: the relay's held-keys migration reverted (its down.sql) and unrecorded.
async fn revert_held_keys(roles: &Roles) {
    roles.admin_exec(include_str!("../../outbox/migrations/postgres/00000000000004_relay_held_keys/down.sql")).await;
    roles.admin_exec("DELETE FROM outbox_schema_migrations WHERE version = '00000000000004_relay_held_keys'").await;
}

/// Sets the session's search_path (as the application's pool would, or `ALTER ROLE ... SET`).
async fn set_search_path(conn: &mut AsyncPgConnection, path: &str) {
    diesel_async::SimpleAsyncConnection::batch_execute(conn, &format!("SET search_path = {path}"))
        .await
        .expect("SET search_path");
}

/// The tables are in `public`, a migration is pending, and the session's search_path puts
/// another existing, writable schema first: applying would create a second, empty set of tables
/// there (and the services would switch to it). Migrate refuses, naming both schemas; nothing is
/// created. The start-up check reads the tables the search path finds, as the services do.
#[tokio::test]
async fn migrate_refuses_a_search_path_that_puts_another_schema_before_the_tables() {
    let roles = Roles::create().await;
    roles.migrate_and_grant().await;
    revert_held_keys(&roles).await;
    roles.admin_exec(&format!("CREATE SCHEMA app AUTHORIZATION {}", roles.name("outbox_owner"))).await;
    let mut owner = roles.conn("outbox_owner").await;
    set_search_path(&mut owner, "app, public").await;
    let outcome = outbox::migrate(&mut owner).await;
    println!("outbox::migrate with search_path app, public and the tables in public: {outcome:?}");
    let err = outcome.expect_err("the version table is not in the first schema");
    let text = err.to_string();
    assert!(text.contains("outbox_schema_migrations is in schema public, but schema app comes first"), "{text}");
    assert!(text.contains("put public first in the search_path"), "{text}");
    assert_eq!(roles.db.count("SELECT count(*) AS n FROM pg_tables WHERE schemaname = 'app'").await, 0);
    // The start-up check (what a relay runs) reads the tables the search path finds, as the
    // relay's statements do: no placement error, just the migration reverted above.
    roles.admin_exec(&format!("GRANT USAGE ON SCHEMA app TO {}", roles.name("outbox_relay"))).await;
    let mut relay = roles.conn("outbox_relay").await;
    set_search_path(&mut relay, "app, public").await;
    let missing = outbox::MIGRATIONS.missing(&mut relay).await.expect("the start-up check");
    assert_eq!(missing, ["00000000000004_relay_held_keys"], "the tables in public, as the search path finds them");
    // With the tables' schema first, it applies.
    set_search_path(&mut owner, "public, app").await;
    outbox::migrate(&mut owner).await.expect("migrate with public first");
    assert_eq!(roles.db.count("SELECT count(*) AS n FROM pg_tables WHERE schemaname = 'app'").await, 0);
}

/// A role without USAGE on the tables' schema: PostgreSQL leaves that schema out of its search
/// path, so the tables look absent. Migrate and the start-up check say so rather than "not
/// applied"; a search path naming no existing schema is reported as such.
#[tokio::test]
async fn migrate_names_a_missing_usage_on_the_schema_rather_than_pending_migrations() {
    let roles = Roles::create().await;
    roles.migrate_and_grant().await;
    let relay = roles.name("outbox_relay");
    roles.admin_exec(&format!("REVOKE USAGE ON SCHEMA public FROM PUBLIC, {relay}")).await;
    let outcome = outbox::migrate(&mut roles.conn("outbox_relay").await).await;
    println!("outbox::migrate as the relay without USAGE on public: {outcome:?}");
    let text = outcome.expect_err("no USAGE").to_string();
    assert!(text.contains(&format!("role {relay} has no USAGE on schema public")), "{text}");
    assert!(!text.contains("not applied"), "{text}");
    let err = outbox::MIGRATIONS.missing(&mut roles.conn("outbox_relay").await).await.expect_err("no USAGE");
    assert!(err.to_string().contains("no USAGE on schema public"), "{err}");
    let mut owner = roles.conn("outbox_owner").await;
    set_search_path(&mut owner, "nosuch").await;
    let text = outbox::migrate(&mut owner).await.expect_err("no schema on the search path").to_string();
    println!("outbox::migrate with search_path nosuch: {text}");
    assert!(text.contains("no schema of role ") && text.contains("search_path (nosuch) exists"), "{text}");
}

/// A role that may CREATE in the schema and write the version table, but does not own the
/// tables a pending migration alters, is told so before anything runs, naming the tables and
/// their owner (not the server's "must be owner of table ..." halfway through).
#[tokio::test]
async fn migrate_names_the_tables_a_pending_migration_would_alter_but_the_role_does_not_own() {
    let roles = Roles::create().await;
    roles.migrate_and_grant().await;
    revert_held_keys(&roles).await;
    let deployer = format!("{}_deployer", roles.prefix);
    roles
        .admin_exec(&format!(
            "CREATE ROLE {deployer} LOGIN; GRANT USAGE, CREATE ON SCHEMA public TO {deployer}; \
             GRANT SELECT, INSERT ON outbox_schema_migrations TO {deployer}"
        ))
        .await;
    let outcome = outbox::migrate(&mut Pg::connect(&as_user(&roles.db.url, &deployer)).await).await;
    println!("outbox::migrate as a role with CREATE that owns no table: {outcome:?}");
    let text = outcome.expect_err("not the tables' owner").to_string();
    let owner = roles.name("outbox_owner");
    assert!(text.contains("1 of 2 migrations are not applied (00000000000004_relay_held_keys)"), "{text}");
    assert!(text.contains(&format!("outbox_messages (owner {owner})")), "{text}");
    assert!(!text.contains("must be owner"), "{text}");
    // A member of the owner may.
    roles.admin_exec(&format!("GRANT {owner} TO {deployer}")).await;
    outbox::migrate(&mut Pg::connect(&as_user(&roles.db.url, &deployer)).await).await.expect("a member of the owner");
}
