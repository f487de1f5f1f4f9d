//! PostgreSQL: [`Pg`] (a fresh database on the `DATABASE_URL` server per test) and the suites'
//! SQL on an `AsyncPgConnection`.

use std::time::Duration;

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Binary, Integer, Nullable, Text};
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use uuid::Uuid;

use super::query::{DeadLetterText, FollowUpRow, N, RAW_DEAD_LETTERS, RawDeadLetterRow, TextValue, follow_up};
use super::{Backend, DeadLetterRow, Effect, OutboxRow, Pg, Store, TestConn, fresh_name};

impl Backend for Pg {
    const NAME: &'static str = "postgres";
    const MIGRATIONS: usize = outbox::POSTGRES_MIGRATIONS.len() + inbox::POSTGRES_MIGRATIONS.len();
    type Conn = AsyncPgConnection;
    type Manager = AsyncDieselConnectionManager<AsyncPgConnection>;

    async fn create() -> Store {
        let name = fresh_name();
        let mut admin = AsyncPgConnection::establish(&crate::server_url()).await.expect("connect to DATABASE_URL");
        diesel::sql_query(format!("CREATE DATABASE {name}")).execute(&mut admin).await.expect("create test database");
        let url = crate::with_database(&crate::server_url(), &name);
        Store { url, name, dir: None }
    }

    async fn connect(url: &str) -> AsyncPgConnection {
        AsyncPgConnection::establish(url).await.expect("connect to test database")
    }

    async fn pool(url: &str, size: u32) -> bb8::Pool<Self::Manager> {
        let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(url);
        bb8::Pool::builder().max_size(size).build(manager).await.expect("pool")
    }
}

#[async_trait::async_trait]
impl TestConn for AsyncPgConnection {
    const EFFECTS: &'static str = "CREATE TABLE effects (message_id uuid NOT NULL, grp text, n bigint, \
                                   attempt int, kafka_partition int, consumer text)";

    async fn count(&mut self, sql: &str) -> i64 {
        diesel::sql_query(sql).get_result::<N>(self).await.expect(sql).n
    }

    async fn exec(&mut self, sql: &str) {
        self.batch_execute(sql).await.expect(sql)
    }

    async fn insert_effect(&mut self, e: Effect<'_>) -> QueryResult<()> {
        diesel::sql_query(
            "INSERT INTO effects (message_id, grp, n, attempt, kafka_partition, consumer) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind::<diesel::sql_types::Uuid, _>(e.message_id)
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
        use diesel::sql_types::{Jsonb, Timestamptz};
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = BigInt)]
            seq: i64,
            #[diesel(sql_type = diesel::sql_types::Uuid)]
            id: Uuid,
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
            #[diesel(sql_type = Jsonb)]
            headers: serde_json::Value,
            #[diesel(sql_type = Timestamptz)]
            occurred_at: chrono::DateTime<chrono::Utc>,
            #[diesel(sql_type = Integer)]
            attempts: i32,
            #[diesel(sql_type = Nullable<Text>)]
            last_error: Option<String>,
            #[diesel(sql_type = Nullable<Timestamptz>)]
            sent_at: Option<chrono::DateTime<chrono::Utc>>,
            #[diesel(sql_type = Nullable<Timestamptz>)]
            parked_at: Option<chrono::DateTime<chrono::Utc>>,
        }
        let rows: Vec<Row> =
            diesel::sql_query("SELECT * FROM outbox_messages ORDER BY seq").load(self).await.expect("outbox rows");
        rows.into_iter()
            .map(|r| OutboxRow {
                seq: r.seq,
                id: r.id,
                topic: r.topic,
                key: r.key,
                event_type: r.event_type,
                event_version: r.event_version,
                payload: r.payload,
                headers: r.headers,
                occurred_at: r.occurred_at,
                attempts: r.attempts,
                last_error: r.last_error,
                sent_at: r.sent_at,
                parked_at: r.parked_at,
            })
            .collect()
    }

    async fn dead_letters(&mut self) -> Vec<DeadLetterRow> {
        let rows: Vec<DeadLetterText> = diesel::sql_query(
            "SELECT message_id::text AS message_id, kafka_offset, key, payload, headers::text AS headers, reason, \
             error, attempts FROM inbox_dead_letters ORDER BY kafka_offset",
        )
        .load(self)
        .await
        .expect("dead letters");
        rows.into_iter().map(Into::into).collect()
    }

    async fn raw_dead_letters(&mut self, group: &str) -> Vec<crate::inbox_support::RawDeadLetter> {
        let sql = format!("{RAW_DEAD_LETTERS}$1 ORDER BY kafka_partition, kafka_offset");
        let rows: Vec<RawDeadLetterRow> =
            diesel::sql_query(sql).bind::<Text, _>(group).load(self).await.expect("raw dead letters");
        rows.into_iter().map(Into::into).collect()
    }

    async fn outbox_insert_statements(&mut self) -> Option<i64> {
        // Distinct cmin values: one command id means one statement.
        Some(self.count("SELECT count(DISTINCT cmin::text) AS n FROM outbox_messages").await)
    }

    async fn follow_ups(&mut self, causation_id: &str) -> Vec<(String, String, serde_json::Value)> {
        let rows: Vec<FollowUpRow> = diesel::sql_query(
            "SELECT topic, event_type, headers::text AS headers FROM outbox_messages \
             WHERE headers->>'ce_causationid' = $1",
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
            "SELECT string_agg(message_id::text || ':' || n, ',' ORDER BY message_id, n) AS v \
             FROM effects WHERE grp = $1",
            "SELECT string_agg(message_id::text || '@' || topic || '/' || kafka_partition || '/' || kafka_offset, \
             ',' ORDER BY message_id) AS v FROM inbox_messages WHERE consumer_group = $1",
            "SELECT string_agg(concat_ws('|', message_id, topic, kafka_partition, kafka_offset, reason, attempts, \
             md5(payload), md5(key), headers->>'ce_id'), ',' ORDER BY kafka_partition, kafka_offset) AS v \
             FROM inbox_dead_letters WHERE consumer_group = $1",
            "SELECT string_agg(topic || '/' || kafka_partition || '=' || next_offset, ',' \
             ORDER BY topic, kafka_partition) AS v FROM inbox_offsets WHERE consumer_group = $1",
        ] {
            let row: TextValue = diesel::sql_query(sql).bind::<Text, _>(group).get_result(self).await.expect(sql);
            out.push(row.v);
        }
        out
    }

    async fn insert_aged_dedup_rows(&mut self, group: &str, count: i64, age: Duration) {
        let sql = format!(
            "INSERT INTO inbox_messages (consumer_group, message_id, topic, kafka_partition, kafka_offset, handled_at) \
             SELECT '{group}', gen_random_uuid(), 'orders', 0, g, {} FROM generate_series(1, {count}) AS g",
            Self::sql_ago(age)
        );
        self.exec(&sql).await
    }

    fn sql_ago(age: Duration) -> String {
        format!("now() - interval '{} seconds'", age.as_secs())
    }
}
