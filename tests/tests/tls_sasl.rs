//! TLS for real: the relay and an inbox talk `security.protocol=SSL` to a tansu broker through a
//! certificate this test generates (a CA of its own and a server certificate for 127.0.0.1).
//!
//! What proves what (docs/brokers.md): the TLS handshake is between librdkafka (OpenSSL, the
//! crates' `ssl-vendored` build) and Debian's stunnel, which terminates TLS in front of tansu
//! (tansu 0.6.0's own `--cert`/`--key` cannot both be given); tansu advertises stunnel's address,
//! so every connection, bootstrap and broker alike, goes through TLS.
//!
//! SASL is not here: the tansu build that installs in seconds keeps no SCRAM users, and the
//! crates.io build that does (SQLite storage) takes 20-40 minutes to compile (docs/brokers.md).
//!
//! An untrusted certificate (no `ssl.ca.location`) gives a clear error in the first round
//! (librdkafka's error, surfaced in the SDK's log), never a silent hang.

use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use inbox::{Context, Handler, HandlerError, Inbox};
use outbox::KafkaConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use tests::kafka::TansuBroker;
use tests::relay_support::{self as rs, Happened};
use tests::tls::{Stunnel, TestCerts, free_port};
use tests::{Effect, TestConn, TestDb};
use tokio_util::sync::CancellationToken;

/// Everything the process logged (the SDK's tracing and librdkafka's log through it).
static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    let filter = "warn,outbox=info,inbox=info,librdkafka=debug,rdkafka=debug";
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_ansi(false)
        .with_writer(|| Capture)
        .try_init();
}

/// Where the log is now; [`lines_since`] reads what came after.
fn log_mark() -> usize {
    LOGS.lock().unwrap_or_else(|p| p.into_inner()).len()
}

fn lines_since(mark: usize) -> Vec<String> {
    let logs = LOGS.lock().unwrap_or_else(|p| p.into_inner());
    String::from_utf8_lossy(&logs[mark.min(logs.len())..]).lines().map(str::to_owned).collect()
}

/// tansu behind stunnel (TLS with the generated certificate).
struct SecureBroker {
    certs: TestCerts,
    tansu: TansuBroker,
    stunnel: Stunnel,
    tls_address: String,
}

impl SecureBroker {
    /// tansu (the wheel's build, in-memory storage, no authentication) behind stunnel.
    fn start_tls() -> Self {
        let certs = TestCerts::generate();
        let tls_address = format!("127.0.0.1:{}", free_port());
        let tansu =
            TansuBroker::start_advertising(Some(&tls_address), &[]).unwrap_or_else(|e| panic!("start tansu: {e}"));
        let stunnel = Self::stunnel(&certs, &tls_address, &tansu);
        SecureBroker { certs, tansu, stunnel, tls_address }
    }

    fn stunnel(certs: &TestCerts, tls_address: &str, tansu: &TansuBroker) -> Stunnel {
        let port = tls_address.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port");
        Stunnel::start(certs, port, tansu.address()).unwrap_or_else(|e| panic!("start stunnel: {e}"))
    }

    /// The client settings a user writes for a TLS cluster (docs/brokers.md shows the same).
    fn config(&self, trust_the_ca: bool) -> KafkaConfig {
        let cfg = KafkaConfig::new(&self.tls_address)
            .set("security.protocol", "SSL")
            // librdkafka's own account of the handshake.
            .set("debug", "security");
        match trust_the_ca {
            true => cfg.set("ssl.ca.location", self.certs.ca().display().to_string()),
            false => cfg,
        }
    }

    async fn create_topic(&self, topic: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> =
            self.config(true).to_client_config().create().expect("admin client");
        let topics = [NewTopic::new(topic, partitions, TopicReplication::Fixed(1))];
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for result in admin.create_topics(&topics, &options).await.expect("create topic over SASL_SSL") {
            result.unwrap_or_else(|(name, code)| panic!("create topic {name}: {code}"));
        }
    }
}

struct RecordIt;

#[inbox::async_trait]
impl<C: outbox::Database + TestConn> Handler<Happened, C> for RecordIt {
    async fn handle(&self, e: Happened, cx: &mut Context<'_, C>) -> Result<(), HandlerError> {
        let id = cx.message_id();
        cx.conn().insert_effect(Effect { n: Some(e.n as i64), ..Effect::of(id) }).await?;
        Ok(())
    }
}

/// Relays 40 events and handles them with an inbox, both through `broker`, and prints the
/// evidence of the handshakes from both ends.
async fn relay_and_inbox(broker: &SecureBroker) {
    let db = TestDb::new().await;
    db.create_effects().await;
    let mark = log_mark();
    broker.create_topic(rs::TOPIC, 2).await;
    let ids = rs::write_events(&db, 40, 8, 10).await;

    let relay = rs::relay_with(db.pool(4).await, broker.config(true)).build().expect("relay");
    let (stop_relay, relay_task) = rs::spawn(relay);
    let inbox = Inbox::builder(db.pool(4).await, broker.config(true))
        .group(format!("tls-{}", uuid::Uuid::now_v7().simple()))
        .handle(RecordIt)
        .build()
        .expect("inbox");
    let stop_inbox = CancellationToken::new();
    let inbox_task = tokio::spawn(inbox.run(stop_inbox.clone()));

    rs::wait_drained(&db, Duration::from_secs(60)).await;
    let handled = tests::produce::wait_for_count(
        &db,
        "SELECT count(DISTINCT message_id) AS n FROM effects",
        ids.len() as i64,
        Duration::from_secs(60),
    )
    .await;
    stop_relay.cancel();
    stop_inbox.cancel();
    relay_task.await.expect("relay task").expect("relay run");
    inbox_task.await.expect("inbox task").expect("inbox run");
    assert_eq!(handled, ids.len() as i64, "every relayed event was handled");
    let effects = db.count("SELECT count(*) AS n FROM effects").await;
    assert_eq!(effects, ids.len() as i64, "each event took effect once");

    // The evidence, from both ends of each connection.
    let lines = lines_since(mark);
    let stunnel_log = broker.stunnel.log();
    let accepted: Vec<&str> = stunnel_log.lines().filter(|l| l.contains("TLS accepted")).collect();
    let tls_client: Vec<&String> =
        lines.iter().filter(|l| l.contains("SSLVERIFY") && l.contains("certificate verified")).collect();
    assert!(!accepted.is_empty(), "stunnel logged no TLS handshake:\n{stunnel_log}");
    assert!(!tls_client.is_empty(), "librdkafka logged no TLS connection:\n{}", lines.join("\n"));
    println!("handshake done: stunnel accepted {} TLS connections: {}", accepted.len(), accepted[0].trim());
    println!("handshake done: librdkafka: {}", tls_client[0].trim());
    println!(
        "events relayed and handled: {} written, all on the topic and handled once each, over SSL to {} (stunnel) -> {} (tansu)",
        ids.len(),
        broker.tls_address,
        broker.tansu.address()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn relay_and_inbox_over_tls() {
    capture_logs();
    relay_and_inbox(&SecureBroker::start_tls()).await;
}

/// Runs a relay and an inbox with `cfg` for at most 30 s each and returns the first log line
/// (after `mark`) that names the failure (`needle`), checking that nothing was sent or handled.
/// Runs a relay with `cfg` and a start-up timeout of 5 s: `run` must return an error naming
/// `needle` (no silent retry loop), and nothing may be marked sent; then an inbox, whose first
/// round must log it. Returns the two texts.
async fn first_round_error(db: &TestDb, cfg: KafkaConfig, needle: &str) -> (String, String) {
    const PATIENT: Duration = Duration::from_secs(5);
    // Only a bound for a `run` that retries forever.
    const HANG: Duration = Duration::from_secs(60);
    let written = rs::write_events(db, 5, 1, 5).await;
    let relay = rs::relay_with(db.pool(2).await, cfg.clone()).startup_timeout(PATIENT).build().expect("relay");
    let outcome = tokio::time::timeout(HANG, relay.run(CancellationToken::new()))
        .await
        .expect("Relay::run kept retrying past its start-up timeout");
    let relay_error = outcome.expect_err("Relay::run returned Ok").to_string();
    assert!(relay_error.contains(needle), "{relay_error}");
    let sent = db.count("SELECT count(*) AS n FROM outbox_messages WHERE sent_at IS NOT NULL").await;
    assert_eq!(sent, 0, "nothing may be marked sent: {} written", written.len());

    // The inbox: the same failure named in its first round's log (its start-up probe does not
    // see librdkafka's reason yet, see docs/brokers.md), and a clean stop.
    let mark = log_mark();
    let inbox = Inbox::builder(db.pool(2).await, cfg)
        .group(format!("bad-{}", uuid::Uuid::now_v7().simple()))
        .handle(RecordIt)
        .build()
        .expect("inbox");
    let stop = CancellationToken::new();
    let task = tokio::spawn(inbox.run(stop.clone()));
    let inbox_error = wait_for_line(mark, needle, &task).await;
    stop.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(30), task).await;
    assert!(stopped.is_ok(), "the inbox did not stop within 30 s of its cancellation");
    (relay_error, inbox_error)
}

/// The first log line after `mark` containing `needle`, polled for 30 s; or the task's own error
/// if it returned one first (the clearer outcome: `run` failing at start-up).
async fn wait_for_line<T: std::fmt::Debug>(mark: usize, needle: &str, task: &tokio::task::JoinHandle<T>) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(line) = lines_since(mark).into_iter().find(|l| l.contains(needle)) {
            return line;
        }
        assert!(!task.is_finished(), "the task ended before any error naming {needle:?} was logged");
        assert!(
            tokio::time::Instant::now() < deadline,
            "no error naming {needle:?} within 30 s (a silent hang); the log said:\n{}",
            lines_since(mark).join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn untrusted_certificate_is_a_clear_error_in_the_first_round() {
    capture_logs();
    let broker = SecureBroker::start_tls();
    let db = TestDb::new().await;
    db.create_effects().await;
    broker.create_topic(rs::TOPIC, 1).await;
    let (relay, inbox) = first_round_error(&db, broker.config(false), "certificate verify failed").await;
    println!("untrusted certificate, relay: {}", relay.trim());
    println!("untrusted certificate, inbox: {}", inbox.trim());
}
