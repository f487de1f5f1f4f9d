//! The outbox writer against real databases, PostgreSQL and SQLite: a message is stored if and
//! only if its business transaction commits (guarantee 1).

use diesel_async::AsyncConnection;
use outbox::{ErrorKind, Metadata};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tests::backend::OutboxRow;
use tests::{Backend, TestConn, TestDb};
use uuid::Uuid;

tests::backends!(
    commit_stores_one_row_with_every_column,
    explicit_rollback_stores_nothing,
    error_returned_inside_the_transaction_stores_nothing,
    rolled_back_savepoint_keeps_only_the_outer_event,
    outside_a_transaction_is_a_typed_error_and_writes_nothing,
    thousand_events_in_one_statement_keep_call_order,
    mixed_batch_and_publish_in_one_transaction,
    reserved_header_names_are_refused_before_writing,
    migrations_applied_twice_succeed,
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, outbox::Event)]
#[event(topic = "orders", name = "order.placed", version = 3)]
struct OrderPlaced {
    #[event(key)]
    order_id: Uuid,
    total_cents: i64,
    lines: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, outbox::Event)]
#[event(topic = "audit")]
struct Audited {
    what: String,
}

async fn rows<B: Backend>(db: &TestDb<B>) -> Vec<OutboxRow> {
    db.conn().await.outbox_rows().await
}

fn order(n: i64) -> OrderPlaced {
    OrderPlaced { order_id: Uuid::now_v7(), total_cents: n, lines: vec![format!("line-{n}"), "ü ✓".into()] }
}

async fn commit_stores_one_row_with_every_column<B: Backend>() {
    let db = TestDb::<B>::fresh().await;
    let mut conn = db.conn().await;
    let event = order(4200);
    let before = chrono::Utc::now();
    let meta = Metadata::new().correlation_id("corr-1").causation_id("cause-1").header("tenant", "acme");
    let id =
        conn.transaction::<_, outbox::Error, _>(async |tx| outbox::publish_with(tx, &event, meta).await).await.unwrap();

    let rows = rows(&db).await;
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(r.id, id);
    assert_eq!(r.id.get_version_num(), 7, "message ids are UUIDv7");
    assert_eq!(r.topic, "orders");
    assert_eq!(r.key.as_deref(), Some(event.order_id.to_string().as_str()));
    assert_eq!(r.event_type, "order.placed");
    assert_eq!(r.event_version, 3);
    assert_eq!(r.payload, serde_json::to_vec(&event).unwrap(), "payload is the serialised bytes, untouched");
    assert_eq!(serde_json::from_slice::<OrderPlaced>(&r.payload).unwrap(), event);
    assert_eq!(
        r.headers,
        serde_json::json!({"ce_correlationid": "corr-1", "ce_causationid": "cause-1", "tenant": "acme"})
    );
    assert!(r.occurred_at >= before - chrono::Duration::seconds(1) && r.occurred_at <= chrono::Utc::now());
    assert_eq!((r.attempts, r.last_error.as_deref(), r.sent_at, r.parked_at), (0, None, None, None));
    assert!(r.seq > 0);
}

async fn explicit_rollback_stores_nothing<B: Backend>() {
    let db = TestDb::<B>::fresh().await;
    let mut conn = db.conn().await;
    // diesel-async's manual transaction API: begin, publish, roll back.
    use diesel_async::TransactionManager;
    type Tm<B> = <<B as Backend>::Conn as AsyncConnection>::TransactionManager;
    Tm::<B>::begin_transaction(&mut conn).await.unwrap();
    outbox::publish(&mut conn, &order(1)).await.unwrap();
    Tm::<B>::rollback_transaction(&mut conn).await.unwrap();
    assert_eq!(db.count("SELECT count(*) AS n FROM outbox_messages").await, 0);
}

async fn error_returned_inside_the_transaction_stores_nothing<B: Backend>() {
    let db = TestDb::<B>::fresh().await;
    let mut conn = db.conn().await;
    let result = conn
        .transaction::<(), diesel::result::Error, _>(async |tx| {
            outbox::publish(tx, &order(1)).await?;
            outbox::publish(tx, &order(2)).await?;
            Err(diesel::result::Error::RollbackTransaction)
        })
        .await;
    assert!(result.is_err());
    assert_eq!(db.count("SELECT count(*) AS n FROM outbox_messages").await, 0);
}

async fn rolled_back_savepoint_keeps_only_the_outer_event<B: Backend>() {
    let db = TestDb::<B>::fresh().await;
    let mut conn = db.conn().await;
    let outer = conn
        .transaction::<Uuid, diesel::result::Error, _>(async |tx| {
            let outer = outbox::publish(tx, &order(1)).await?;
            let inner = tx
                .transaction::<(), diesel::result::Error, _>(async |sp| {
                    outbox::publish(sp, &order(2)).await?;
                    Err(diesel::result::Error::RollbackTransaction)
                })
                .await;
            assert!(inner.is_err());
            Ok(outer)
        })
        .await
        .unwrap();
    let rows = rows(&db).await;
    assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), vec![outer]);
}

async fn outside_a_transaction_is_a_typed_error_and_writes_nothing<B: Backend>() {
    let db = TestDb::<B>::fresh().await;
    let mut conn = db.conn().await;
    let err = outbox::publish(&mut conn, &order(1)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotInTransaction);
    assert!(!err.is_transient());
    let err = outbox::publish_all(&mut conn, &[order(1), order(2)]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotInTransaction);
    let mut batch = outbox::Batch::new();
    batch.push(&order(3)).unwrap();
    assert_eq!(batch.publish(&mut conn).await.unwrap_err().kind(), ErrorKind::NotInTransaction);
    assert_eq!(db.count("SELECT count(*) AS n FROM outbox_messages").await, 0);
}

async fn thousand_events_in_one_statement_keep_call_order<B: Backend>() {
    let db = TestDb::<B>::fresh().await;
    let mut conn = db.conn().await;
    let events: Vec<OrderPlaced> = (0..1000).map(order).collect();
    let ids = conn.transaction::<_, outbox::Error, _>(async |tx| outbox::publish_all(tx, &events).await).await.unwrap();
    let rows = rows(&db).await;
    assert_eq!(rows.len(), 1000);
    assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), ids, "seq order = call order");
    for (row, event) in rows.iter().zip(&events) {
        assert_eq!(serde_json::from_slice::<OrderPlaced>(&row.payload).unwrap(), *event);
    }
    // PostgreSQL: distinct cmin values; one command id means one statement. SQLite keeps no
    // trace of the statement that wrote a row, so there the check is PostgreSQL's alone.
    if let Some(commands) = conn.outbox_insert_statements().await {
        assert_eq!(commands, 1, "all 1,000 rows come from one INSERT statement");
    }
}

async fn mixed_batch_and_publish_in_one_transaction<B: Backend>() {
    let db = TestDb::<B>::fresh().await;
    let mut conn = db.conn().await;
    let (a, b) = (order(7), Audited { what: "x".into() });
    conn.transaction::<_, outbox::Error, _>(async |tx| {
        let mut batch = outbox::Batch::new();
        batch.push(&a)?;
        batch.push_with(&b, Metadata::new().correlation_id("c"))?;
        batch.publish(tx).await
    })
    .await
    .unwrap();
    let rows = rows(&db).await;
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[0].topic.as_str(), rows[1].topic.as_str()), ("orders", "audit"));
    assert_eq!(rows[1].event_type, "Audited", "name defaults to the struct's name");
    assert_eq!(rows[1].event_version, 1, "version defaults to 1");
    assert_eq!(rows[1].key, None);
}

async fn reserved_header_names_are_refused_before_writing<B: Backend>() {
    let db = TestDb::<B>::fresh().await;
    let mut conn = db.conn().await;
    let err = conn
        .transaction::<_, outbox::Error, _>(async |tx| {
            outbox::publish_with(tx, &order(1), Metadata::new().header("ce_id", "forged")).await
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert_eq!(db.count("SELECT count(*) AS n FROM outbox_messages").await, 0);
}

async fn migrations_applied_twice_succeed<B: Backend>() {
    let db = TestDb::<B>::fresh().await; // migrated once already
    let mut conn = db.conn().await;
    outbox::migrate(&mut conn).await.unwrap();
    inbox::migrate(&mut conn).await.unwrap();
    outbox::migrate(&mut conn).await.unwrap();
    inbox::migrate(&mut conn).await.unwrap();
    assert_eq!(db.count("SELECT count(*) AS n FROM outbox_schema_migrations").await, B::MIGRATIONS as i64);
    // Concurrent first-time migration of a fresh (empty) database from several instances, half
    // of them applying the inbox's set first: the sets do not depend on each other.
    let fresh = TestDb::<B>::empty().await;
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let url = fresh.url.clone();
            tokio::spawn(async move {
                let mut c = B::connect(&url).await;
                if i % 2 == 0 {
                    outbox::migrate(&mut c).await?;
                    inbox::migrate(&mut c).await
                } else {
                    inbox::migrate(&mut c).await?;
                    outbox::migrate(&mut c).await
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(fresh.count("SELECT count(*) AS n FROM outbox_schema_migrations").await, B::MIGRATIONS as i64);
}

/// Each publish is one round trip: the writer's INSERTs stay in the connection's statement cache
/// (a statement diesel-async does not cache is parsed and planned again before every run). Seen
/// from the session's own `pg_prepared_statements`.
#[tokio::test]
async fn postgres_writer_statements_are_prepared_once_per_connection() {
    use diesel_async::RunQueryDsl;
    let db = TestDb::<tests::backend::Pg>::fresh().await;
    let mut conn = db.conn().await;
    for i in 0..3 {
        conn.transaction::<_, outbox::Error, _>(async |tx| {
            outbox::publish(tx, &order(i)).await?;
            outbox::publish_all(tx, &[order(i), order(i + 1)]).await?;
            outbox::publish(tx, &Audited { what: "no key".into() }).await?;
            Ok(())
        })
        .await
        .unwrap();
    }
    #[derive(diesel::QueryableByName)]
    struct Stmt {
        #[diesel(sql_type = diesel::sql_types::Text)]
        statement: String,
    }
    let all: Vec<Stmt> =
        diesel::sql_query("SELECT statement FROM pg_prepared_statements").load(&mut conn).await.unwrap();
    let inserts: Vec<&str> = all
        .iter()
        .map(|s| s.statement.trim())
        .filter(|s| s.starts_with("INSERT INTO") && s.contains("outbox_messages"))
        .collect();
    // One statement for a single event (with or without a key), one for any batch.
    assert_eq!(inserts.len(), 2, "writer INSERTs cached on this connection: {inserts:#?}");
    assert_eq!(rows(&db).await.len(), 12);
}

/// A new SQLite database opened while another connection writes to it: SQLite answers the switch
/// to WAL with `database is locked` at once, without calling the busy handler, so `connect` failed
/// whatever `busy_timeout` said (several instances starting on one new database, each switching
/// it while another does; seen in CI as a failed concurrent migration). `connect` now waits.
#[tokio::test]
async fn sqlite_a_new_database_opened_while_another_connection_writes_waits_for_the_writer() {
    use diesel_async::SimpleAsyncConnection;
    let db = TestDb::<tests::Sqlite>::empty().await;
    // A plain connection (no SDK settings: the file stays in rollback-journal mode) holding the
    // write lock, as the connection that switches a new database to WAL does for a moment.
    let mut writer = outbox::sqlite::SqliteConnection::establish(&db.url).await.unwrap();
    writer.batch_execute("CREATE TABLE held (x INTEGER); BEGIN IMMEDIATE;").await.unwrap();

    let url = db.url.clone();
    let opening = tokio::spawn(async move { outbox::sqlite::connect(&url).await });
    let held = std::time::Duration::from_millis(300);
    tokio::time::sleep(held).await;
    assert!(
        !opening.is_finished(),
        "connect returned while the write lock was held: {:?}",
        opening.await.unwrap().map(|_| ())
    );
    writer.batch_execute("COMMIT").await.unwrap();
    let mut conn = opening.await.unwrap().expect("connect waits for the lock instead of failing");

    #[derive(diesel::QueryableByName)]
    struct Mode {
        #[diesel(sql_type = diesel::sql_types::Text)]
        journal_mode: String,
    }
    let mode: Mode =
        diesel_async::RunQueryDsl::get_result(diesel::sql_query("PRAGMA journal_mode"), &mut conn).await.unwrap();
    assert_eq!(mode.journal_mode, "wal");
}
