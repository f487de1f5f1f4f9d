//! SQLite: [`Sqlite`] (a fresh database file in a temporary directory per test) and the suites'
//! SQL on a `SqliteConnection` (text uuids and JSON, timestamps in milliseconds).

use std::time::Duration;

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Binary, Integer, Nullable, Text};
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use outbox::sqlite::SqliteConnection;

use super::query::{DeadLetterText, FollowUpRow, N, RAW_DEAD_LETTERS, RawDeadLetterRow, TextValue, follow_up};
use super::{Backend, DeadLetterRow, Effect, OutboxRow, Sqlite, Store, TempDir, TestConn, fresh_name};

impl Backend for Sqlite {
    const NAME: &'static str = "sqlite";
    const MIGRATIONS: usize = outbox::SQLITE_MIGRATIONS.len() + inbox::SQLITE_MIGRATIONS.len();
    type Conn = SqliteConnection;
    type Manager = AsyncDieselConnectionManager<SqliteConnection>;

    async fn create() -> Store {
        let name = fresh_name();
        let dir = TempDir::new(&name);
        let url = dir.path().join("test.db").to_str().expect("utf-8 temp path").to_owned();
        Store { url, name, dir: Some(dir) }
    }

    async fn connect(url: &str) -> SqliteConnection {
        outbox::sqlite::connect(url).await.expect("open test database")
    }

    async fn pool(url: &str, size: u32) -> bb8::Pool<Self::Manager> {
        outbox::sqlite::pool(url, size).await.expect("pool")
    }
}

const SQLITE_NOW_MS: &str = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";

fn from_ms(ms: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms).expect("a time in range")
}

#[async_trait::async_trait]
impl TestConn for SqliteConnection {
    const EFFECTS: &'static str = "CREATE TABLE effects (message_id TEXT NOT NULL, grp TEXT, n INTEGER, \
                                   attempt INTEGER, kafka_partition INTEGER, consumer TEXT)";

    async fn count(&mut self, sql: &str) -> i64 {
        diesel::sql_query(sql).get_result::<N>(self).await.expect(sql).n
    }

    async fn exec(&mut self, sql: &str) {
        self.batch_execute(sql).await.expect(sql)
    }

    async fn insert_effect(&mut self, e: Effect<'_>) -> QueryResult<()> {
        diesel::sql_query(
            "INSERT INTO effects (message_id, grp, n, attempt, kafka_partition, consumer) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .bind::<Text, _>(e.message_id.to_string())
        .bind::<Nullable<Text>, _>(e.grp)
        .bind::<Nullable<BigInt>, _>(e.n)
        .bind::<Nullable<Integer>, _>(e.attempt)
        .bind::<Nullable<Integer>, _>(e.kafka_partition)
        .bind::<Nullable<Text>, _>(e.consumer)
        .execute(self)
        .await
        .map(drop)
    }

    async fn outbox_rows(&mut self) -> Vec<OutboxRow> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = BigInt)]
            seq: i64,
            #[diesel(sql_type = Text)]
            id: String,
            #[diesel(sql_type = Text)]
            topic: String,
            #[diesel(sql_type = Nullable<Text>)]
            key: Option<String>,
            #[diesel(sql_type = Text)]
            event_type: String,
            #[diesel(sql_type = Integer)]
            event_version: i32,
            #[diesel(sql_type = Binary)]
            payload: Vec<u8>,
            #[diesel(sql_type = Text)]
            headers: String,
            #[diesel(sql_type = Text)]
            occurred_at: String,
            #[diesel(sql_type = Integer)]
            attempts: i32,
            #[diesel(sql_type = Nullable<Text>)]
            last_error: Option<String>,
            #[diesel(sql_type = Nullable<BigInt>)]
            sent_at: Option<i64>,
            #[diesel(sql_type = Nullable<BigInt>)]
            parked_at: Option<i64>,
        }
        let rows: Vec<Row> =
            diesel::sql_query("SELECT * FROM outbox_messages ORDER BY seq").load(self).await.expect("outbox rows");
        rows.into_iter()
            .map(|r| OutboxRow {
                seq: r.seq,
                id: r.id.parse().expect("outbox id is a uuid"),
                topic: r.topic,
                key: r.key,
                event_type: r.event_type,
                event_version: r.event_version,
                payload: r.payload,
                headers: serde_json::from_str(&r.headers).expect("outbox headers are JSON"),
                occurred_at: chrono::DateTime::parse_from_rfc3339(&r.occurred_at)
                    .expect("occurred_at is RFC 3339")
                    .with_timezone(&chrono::Utc),
                attempts: r.attempts,
                last_error: r.last_error,
                sent_at: r.sent_at.map(from_ms),
                parked_at: r.parked_at.map(from_ms),
            })
            .collect()
    }

    async fn dead_letters(&mut self) -> Vec<DeadLetterRow> {
        let rows: Vec<DeadLetterText> = diesel::sql_query(
            "SELECT message_id, kafka_offset, key, payload, headers, reason, error, attempts \
             FROM inbox_dead_letters ORDER BY kafka_offset",
        )
        .load(self)
        .await
        .expect("dead letters");
        rows.into_iter().map(Into::into).collect()
    }

    async fn raw_dead_letters(&mut self, group: &str) -> Vec<crate::inbox_support::RawDeadLetter> {
        let sql = format!("{RAW_DEAD_LETTERS}?1 ORDER BY kafka_partition, kafka_offset");
        let rows: Vec<RawDeadLetterRow> =
            diesel::sql_query(sql).bind::<Text, _>(group).load(self).await.expect("raw dead letters");
        rows.into_iter().map(Into::into).collect()
    }

    async fn outbox_insert_statements(&mut self) -> Option<i64> {
        None // SQLite keeps no per-row trace of the statement that wrote it
    }

    async fn follow_ups(&mut self, causation_id: &str) -> Vec<(String, String, serde_json::Value)> {
        let rows: Vec<FollowUpRow> = diesel::sql_query(
            "SELECT topic, event_type, headers FROM outbox_messages WHERE headers->>'ce_causationid' = ?1",
        )
        .bind::<Text, _>(causation_id)
        .load(self)
        .await
        .expect("follow-ups");
        rows.into_iter().map(follow_up).collect()
    }

    async fn inbox_snapshot(&mut self, group: &str) -> Vec<Option<String>> {
        let mut out = Vec::new();
        for sql in [
            "SELECT group_concat(message_id || ':' || n, ',' ORDER BY message_id, n) AS v \
             FROM effects WHERE grp = ?1",
            "SELECT group_concat(message_id || '@' || topic || '/' || kafka_partition || '/' || kafka_offset, \
             ',' ORDER BY message_id) AS v FROM inbox_messages WHERE consumer_group = ?1",
            "SELECT group_concat(concat_ws('|', message_id, topic, kafka_partition, kafka_offset, reason, attempts, \
             hex(payload), hex(key), headers->>'ce_id'), ',' ORDER BY kafka_partition, kafka_offset) AS v \
             FROM inbox_dead_letters WHERE consumer_group = ?1",
            "SELECT group_concat(topic || '/' || kafka_partition || '=' || next_offset, ',' \
             ORDER BY topic, kafka_partition) AS v FROM inbox_offsets WHERE consumer_group = ?1",
        ] {
            let row: TextValue = diesel::sql_query(sql).bind::<Text, _>(group).get_result(self).await.expect(sql);
            out.push(row.v);
        }
        out
    }

    async fn insert_aged_dedup_rows(&mut self, group: &str, count: i64, age: Duration) {
        let sql = format!(
            "WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < {count}) \
             INSERT INTO inbox_messages (consumer_group, message_id, topic, kafka_partition, kafka_offset, handled_at) \
             SELECT '{group}', lower(hex(randomblob(16))), 'orders', 0, i, {} FROM g",
            Self::sql_ago(age)
        );
        self.exec(&sql).await
    }

    fn sql_ago(age: Duration) -> String {
        format!("({SQLITE_NOW_MS} - {})", age.as_millis())
    }
}
