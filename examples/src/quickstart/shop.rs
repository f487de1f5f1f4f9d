//! The application's schema and SQL: its two tables, [`create_tables`], and the [`Shop`] trait
//! the handler and the flow write through, implemented for both connection types. Apart from
//! the flow because it is the application's side, not the SDK's.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use outbox::Database;
use outbox::sqlite::SqliteConnection;

use super::OrderPlaced;

diesel::table! {
    quickstart_orders (id) {
        id -> Text,
        run_id -> Text,
        sku -> Text,
        quantity -> Integer,
    }
}

// No primary key on purpose: a message handled twice would show up as two rows.
diesel::table! {
    quickstart_reservations (order_id) {
        order_id -> Text,
        run_id -> Text,
        sku -> Text,
        quantity -> Integer,
    }
}

const CREATE_TABLES: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS quickstart_orders \
     (id TEXT PRIMARY KEY, run_id TEXT NOT NULL, sku TEXT NOT NULL, quantity INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS quickstart_reservations \
     (order_id TEXT NOT NULL, run_id TEXT NOT NULL, sku TEXT NOT NULL, quantity INTEGER NOT NULL)",
];

/// Creates the application's tables (idempotent); the SDK's come from [`outbox::migrate`] and
/// [`inbox::migrate`].
pub async fn create_tables<C: Shop>(conn: &mut C) -> QueryResult<()> {
    for sql in CREATE_TABLES {
        diesel_async::SimpleAsyncConnection::batch_execute(conn, sql).await?;
    }
    Ok(())
}

/// The application's own SQL. Written once with diesel's DSL and implemented for both
/// connection types, so the same handler runs on PostgreSQL and SQLite.
#[async_trait::async_trait]
pub trait Shop: Database {
    async fn insert_order(&mut self, o: &OrderPlaced) -> QueryResult<()>;
    async fn reserve(&mut self, o: &OrderPlaced) -> QueryResult<()>;
    async fn reservations(&mut self, run_id: &str) -> QueryResult<Vec<String>>;
}

macro_rules! shop_for {
    ($($conn:ty),*) => {$(
        #[async_trait::async_trait]
        impl Shop for $conn {
            async fn insert_order(&mut self, o: &OrderPlaced) -> QueryResult<()> {
                diesel::insert_into(quickstart_orders::table)
                    .values((
                        quickstart_orders::id.eq(o.order_id.to_string()),
                        quickstart_orders::run_id.eq(&o.run_id),
                        quickstart_orders::sku.eq(&o.sku),
                        quickstart_orders::quantity.eq(o.quantity),
                    ))
                    .execute(self)
                    .await
                    .map(drop)
            }

            async fn reserve(&mut self, o: &OrderPlaced) -> QueryResult<()> {
                diesel::insert_into(quickstart_reservations::table)
                    .values((
                        quickstart_reservations::order_id.eq(o.order_id.to_string()),
                        quickstart_reservations::run_id.eq(&o.run_id),
                        quickstart_reservations::sku.eq(&o.sku),
                        quickstart_reservations::quantity.eq(o.quantity),
                    ))
                    .execute(self)
                    .await
                    .map(drop)
            }

            async fn reservations(&mut self, run_id: &str) -> QueryResult<Vec<String>> {
                quickstart_reservations::table
                    .filter(quickstart_reservations::run_id.eq(run_id))
                    .select(quickstart_reservations::order_id)
                    .load(self)
                    .await
            }
        }
    )*};
}
shop_for!(AsyncPgConnection, SqliteConnection);
