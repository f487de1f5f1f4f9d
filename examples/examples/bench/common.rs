//! Database, broker and data set-up shared by the benchmarks.

use std::time::Duration;

use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

pub struct Env {
    pub db_url: String,
    pub brokers: String,
    pub _mock: Option<MockCluster<'static, DefaultProducerContext>>,
    pub scale: f64,
    pub runs: usize,
}

impl Env {
    pub async fn new() -> Self {
        let server = std::env::var("DATABASE_URL").expect("DATABASE_URL (run scripts/bench, which starts PostgreSQL)");
        let name = format!("bench_{}", uuid::Uuid::now_v7().simple());
        let mut admin = AsyncPgConnection::establish(&server).await.expect("connect DATABASE_URL");
        diesel::sql_query(format!("CREATE DATABASE {name}")).execute(&mut admin).await.expect("create bench db");
        let db_url = with_database(&server, &name);
        let mut conn = AsyncPgConnection::establish(&db_url).await.expect("connect bench db");
        outbox::migrate(&mut conn).await.expect("migrate the outbox");
        inbox::migrate(&mut conn).await.expect("migrate the inbox");
        let (brokers, mock) = match std::env::var("KAFKA_BROKERS") {
            Ok(b) if !b.is_empty() => (b, None),
            _ => {
                let mock = MockCluster::new(1).expect("mock cluster");
                (mock.bootstrap_servers(), Some(mock))
            }
        };
        if let Some(m) = &mock {
            for t in [
                "bench",
                "bench-verify",
                "bench-e2e",
                "bench-e2e-raw",
                "bench-e2e-hand",
                "bench-inbox",
                "bench-soak",
                "orders",
            ] {
                m.create_topic(t, 6, 1).expect("topic");
            }
        }
        let scale = std::env::var("BENCH_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1.0);
        let runs = std::env::var("BENCH_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
        Env { db_url, brokers, _mock: mock, scale, runs }
    }

    pub async fn conn(&self) -> AsyncPgConnection {
        AsyncPgConnection::establish(&self.db_url).await.expect("connect")
    }

    pub async fn pool(&self, size: u32) -> outbox::Pool {
        let manager =
            diesel_async::pooled_connection::AsyncDieselConnectionManager::<AsyncPgConnection>::new(&self.db_url);
        // LIFO, as docs/relay.md recommends for the relay's and the inbox's pools: the loop gets
        // back the connection it just used instead of rotating through idle ones.
        outbox::Pool::builder()
            .max_size(size)
            .queue_strategy(bb8::QueueStrategy::Lifo)
            .build(manager)
            .await
            .expect("pool")
    }

    pub fn n(&self, base: usize) -> usize {
        ((base as f64 * self.scale) as usize).max(10)
    }

    /// The producer settings the relay uses, for the raw baseline.
    pub fn producer_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "1")
            .set("compression.type", "lz4")
            .set("queue.buffering.max.messages", "200000");
        c
    }
}

pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let root = base[scheme_end..].find('/').map_or(base, |i| &base[..scheme_end + i]);
    match query {
        Some(q) => format!("{root}/{db}?{q}"),
        None => format!("{root}/{db}"),
    }
}

/// Fills the outbox with `n` rows of ~256-byte payloads over `keys` keys, in id order.
pub async fn fill(conn: &mut AsyncPgConnection, topic: &str, n: usize, keys: usize) {
    insert_rows(conn, topic, n, keys).await;
    diesel::sql_query("VACUUM ANALYZE outbox_messages").execute(conn).await.expect("vacuum");
}

/// Like [`fill`], but in one transaction: the whole backlog becomes visible at once.
pub async fn fill_in_one_transaction(conn: &mut AsyncPgConnection, topic: &str, n: usize, keys: usize) {
    conn.transaction::<_, diesel::result::Error, _>(async |tx| {
        insert_rows(tx, topic, n, keys).await;
        Ok(())
    })
    .await
    .expect("fill transaction");
}

async fn insert_rows(conn: &mut AsyncPgConnection, topic: &str, n: usize, keys: usize) {
    // One statement per 50,000 rows keeps the fill itself fast and its WAL bounded.
    let mut done = 0usize;
    while done < n {
        let chunk = (n - done).min(50_000);
        diesel::sql_query(
            "INSERT INTO outbox_messages (id, topic, key, event_type, event_version, payload, headers, occurred_at)
             SELECT gen_random_uuid(), $1, 'key-' || (g % $2), 'bench.event', 1,
                    convert_to(json_build_object('n', g, 'pad', repeat('x', 230))::text, 'UTF8'),
                    '{}'::jsonb, now()
             FROM generate_series($3::bigint, $4::bigint) g",
        )
        .bind::<diesel::sql_types::Text, _>(topic)
        .bind::<diesel::sql_types::Integer, _>(keys as i32)
        .bind::<diesel::sql_types::BigInt, _>(done as i64)
        .bind::<diesel::sql_types::BigInt, _>((done + chunk - 1) as i64)
        .execute(conn)
        .await
        .expect("fill");
        done += chunk;
    }
}

#[derive(QueryableByName)]
struct Exists {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    e: bool,
}

pub async fn outbox_empty(conn: &mut AsyncPgConnection) -> bool {
    // A scalar subquery walks the pending index from the top: while the relay drains (in seq
    // order) the answer is its first entry, so this poll costs the server next to nothing and
    // does not compete with the relay it measures (EXISTS would drop the ORDER BY and scan).
    let r: Exists = diesel::sql_query(
        "SELECT (SELECT seq FROM outbox_messages WHERE sent_at IS NULL AND parked_at IS NULL \
         ORDER BY seq DESC LIMIT 1) IS NULL AS e",
    )
    .get_result(conn)
    .await
    .expect("exists");
    r.e
}

pub async fn wait_empty(conn: &mut AsyncPgConnection) {
    while !outbox_empty(conn).await {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub async fn truncate(conn: &mut AsyncPgConnection) {
    diesel::sql_query("TRUNCATE outbox_messages").execute(conn).await.expect("truncate");
}

/// CPU-seconds the whole machine spent busy (user, nice, system, irq, softirq over all cores;
/// not idle, iowait or steal), from /proc/stat: the bench process, its librdkafka and mock
/// broker threads and the PostgreSQL server together. `None` where /proc/stat is missing.
fn machine_busy_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
    let f: Vec<u64> = cpu.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    let [user, nice, system, _idle, _iowait, irq, softirq, ..] = f[..] else {
        return None;
    };
    let busy = user + nice + system + irq + softirq;
    // USER_HZ is 100 on every Linux architecture the bench runs on.
    Some(busy as f64 / 100.0)
}

/// Machine CPU spent since [`CpuClock::start`], per item done: the figure B1, B2 and B3 print
/// next to their raw phases.
pub struct CpuClock(Option<f64>);

impl CpuClock {
    pub fn start() -> Self {
        CpuClock(machine_busy_secs())
    }

    /// Microseconds of machine CPU per item for `items` done since `start`.
    pub fn per_item_us(&self, items: usize) -> Option<f64> {
        let used = machine_busy_secs().zip(self.0).map(|(now, then)| now - then)?;
        Some(used * 1e6 / items.max(1) as f64)
    }
}

/// How many of the machine's cores were busy at `us_per_item` µs of CPU per item and
/// `items_per_sec` items per second.
pub fn cores_busy(us_per_item: f64, items_per_sec: f64) -> f64 {
    us_per_item * items_per_sec / 1e6
}
