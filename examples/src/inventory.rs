//! `inventory-service`: reserves stock for every [`OrderPlaced`], exactly once, through the inbox.

use diesel::sql_types::{Integer, Text, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use inbox::{Context, Handler, HandlerError, Inbox, KafkaConfig};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::events::OrderPlaced;
use crate::service::BoxError;

/// The consumer group of the inventory service: its Kafka `group.id` and its dedup namespace.
pub const GROUP: &str = "inventory";

/// The service's own table. `order_id` is the primary key: were an order ever handled twice,
/// the second INSERT would fail (and be dead-lettered) instead of reserving stock again.
const CREATE_STOCK_RESERVATIONS: &str = "CREATE TABLE IF NOT EXISTS stock_reservations (
    order_id    uuid PRIMARY KEY,
    sku         text NOT NULL,
    quantity    integer NOT NULL,
    message_id  uuid NOT NULL,
    reserved_at timestamptz NOT NULL DEFAULT now()
)";

/// Creates the inbox's tables and the `stock_reservations` table (both idempotent).
pub async fn prepare(conn: &mut AsyncPgConnection) -> Result<(), BoxError> {
    inbox::migrate(conn).await?;
    diesel::sql_query(CREATE_STOCK_RESERVATIONS).execute(conn).await?;
    Ok(())
}

/// Reserves the ordered quantity: one `stock_reservations` row per order.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReserveStock;

#[inbox::async_trait]
impl Handler<OrderPlaced> for ReserveStock {
    async fn handle(&self, e: OrderPlaced, cx: &mut Context<'_>) -> Result<(), HandlerError> {
        // cx.conn() is the inbox's transaction: this row, the message's dedup row and the
        // partition's position commit together, so a redelivered message changes nothing.
        diesel::sql_query(
            "INSERT INTO stock_reservations (order_id, sku, quantity, message_id) VALUES ($1, $2, $3, $4)",
        )
        .bind::<SqlUuid, _>(e.order_id)
        .bind::<Text, _>(&e.sku)
        .bind::<Integer, _>(e.quantity)
        .bind::<SqlUuid, _>(cx.message_id())
        .execute(cx.conn())
        .await?;
        // Logged before the commit: should the transaction fail, the message is handled again
        // and this line appears twice, but the reservation is stored once. `parent: None` keeps
        // the inbox's spans (group, topic, partition, offset, message id, ...) off this line.
        info!(
            parent: None,
            "reserving {} x {} for order {} (message {}, partition {}, offset {})",
            e.quantity,
            e.sku,
            e.order_id,
            cx.message_id(),
            cx.partition(),
            cx.offset()
        );
        Ok(())
    }
}

/// Handles `OrderPlaced` events from `kafka` as consumer group `group` (the service uses
/// [`GROUP`]) until `shutdown` is cancelled.
pub async fn run(
    pool: outbox::Pool,
    kafka: impl Into<KafkaConfig>,
    group: &str,
    shutdown: CancellationToken,
) -> Result<(), inbox::Error> {
    Inbox::builder(pool, kafka).group(group).handle(ReserveStock).build()?.run(shutdown).await
}

/// The number of rows in `stock_reservations`.
pub async fn reservations(conn: &mut AsyncPgConnection) -> Result<i64, BoxError> {
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let c: Count = diesel::sql_query("SELECT count(*) AS n FROM stock_reservations").get_result(conn).await?;
    Ok(c.n)
}
