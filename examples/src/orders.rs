//! `order-service`: places orders and publishes [`OrderPlaced`] through the outbox, in the same
//! transaction as the order row, and runs the relay that sends the events to Kafka.

use std::time::Duration;

use diesel::sql_types::{BigInt, Integer, Text, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use outbox::KafkaConfig;
use outbox::relay::Relay;
use rand::Rng;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

use crate::events::OrderPlaced;
use crate::service::BoxError;

/// The service's own table. The outbox's tables come from [`outbox::migrate`].
const CREATE_ORDERS: &str = "CREATE TABLE IF NOT EXISTS orders (
    id          uuid PRIMARY KEY,
    sku         text NOT NULL,
    quantity    integer NOT NULL,
    total_cents bigint NOT NULL,
    placed_at   timestamptz NOT NULL DEFAULT now()
)";

/// What is for sale, and the price in cents.
const CATALOGUE: &[(&str, i64)] = &[("widget", 999), ("gadget", 2450), ("gizmo", 150), ("sprocket", 75)];

/// How the service places orders.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderOptions {
    /// Orders placed per second (default 2: one every 500 ms).
    pub orders_per_sec: f64,
    /// Every n-th order is rolled back on purpose, after its event was published into the
    /// transaction: neither the order nor the event may ever be seen. 0 = never (default 10).
    pub rollback_one_in: u64,
    /// On shutdown, how long the relay may keep publishing what is left in the outbox before it
    /// is stopped too (default 5 s). Whatever is left is published at the next start.
    pub drain_timeout: Duration,
}

impl Default for OrderOptions {
    fn default() -> Self {
        Self { orders_per_sec: 2.0, rollback_one_in: 10, drain_timeout: Duration::from_secs(5) }
    }
}

impl OrderOptions {
    /// The defaults, with `ORDERS_PER_SEC` (a number above 0, at most 1000) when it is set.
    pub fn from_env() -> Result<Self, String> {
        let mut options = Self::default();
        if let Ok(v) = std::env::var("ORDERS_PER_SEC") {
            match v.trim().parse::<f64>() {
                Ok(rate) if rate > 0.0 && rate <= 1000.0 => options.orders_per_sec = rate,
                _ => {
                    return Err(format!(
                        "ORDERS_PER_SEC={v:?}: expected a number above 0 and at most 1000, e.g. 2 or 0.5"
                    ));
                }
            }
        }
        Ok(options)
    }
}

/// What [`run`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Orders committed, each with its `OrderPlaced` event.
    pub placed: u64,
    /// Orders rolled back on purpose (no order row, no event).
    pub rolled_back: u64,
    /// Orders that failed (e.g. the database was unreachable); nothing was stored for them.
    pub failed: u64,
    /// Events still in the outbox when the relay stopped (`None`: could not be counted).
    pub unpublished: Option<i64>,
}

/// How one order ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Committed: the order row and its event are stored.
    Placed,
    /// Rolled back on purpose: neither is stored.
    RolledBack,
}

/// Creates the outbox tables and the `orders` table (both idempotent).
pub async fn prepare(conn: &mut AsyncPgConnection) -> Result<(), BoxError> {
    outbox::migrate(conn).await?;
    diesel::sql_query(CREATE_ORDERS).execute(conn).await?;
    Ok(())
}

/// A random order from the catalogue.
pub fn random_order() -> OrderPlaced {
    let mut rng = rand::rng();
    let (sku, price) = CATALOGUE[rng.random_range(0..CATALOGUE.len())];
    let quantity = rng.random_range(1..=5);
    OrderPlaced { order_id: Uuid::now_v7(), sku: sku.to_owned(), quantity, total_cents: price * i64::from(quantity) }
}

/// Stores `order` and its event in one transaction; with `roll_back` the transaction is rolled
/// back at the end instead of committed, as if a later step of the business logic had failed.
pub async fn place_order(
    conn: &mut AsyncPgConnection,
    order: &OrderPlaced,
    roll_back: bool,
) -> Result<Outcome, BoxError> {
    // `outbox::transaction`: diesel's `transaction`, and the relay is woken right after COMMIT.
    let result = outbox::transaction(conn, async |tx| {
        diesel::sql_query("INSERT INTO orders (id, sku, quantity, total_cents) VALUES ($1, $2, $3, $4)")
            .bind::<SqlUuid, _>(order.order_id)
            .bind::<Text, _>(&order.sku)
            .bind::<Integer, _>(order.quantity)
            .bind::<BigInt, _>(order.total_cents)
            .execute(tx)
            .await?;
        // The event is stored in this transaction: it exists if and only if the order does.
        outbox::publish(tx, order).await?;
        if roll_back {
            return Err(diesel::result::Error::RollbackTransaction);
        }
        Ok(())
    })
    .await;
    match result {
        Ok(()) => Ok(Outcome::Placed),
        Err(diesel::result::Error::RollbackTransaction) => Ok(Outcome::RolledBack),
        Err(e) => Err(e.into()),
    }
}

/// Places orders until `shutdown` is cancelled while the relay publishes their events; then
/// lets the relay drain the outbox (up to [`OrderOptions::drain_timeout`]) and stops it.
///
/// Errors: invalid options or Kafka configuration (at start), or a relay that ended abnormally. A failed
/// order is logged and counted, and the service goes on.
pub async fn run(
    pool: outbox::Pool,
    kafka: KafkaConfig,
    options: OrderOptions,
    shutdown: CancellationToken,
) -> Result<Totals, BoxError> {
    if !(options.orders_per_sec > 0.0 && options.orders_per_sec <= 1000.0) {
        return Err(format!("orders_per_sec is {}: expected above 0 and at most 1000", options.orders_per_sec).into());
    }
    let relay = Relay::builder(pool.clone(), kafka).source("/order-service").build()?;
    // The relay has its own token: it keeps running after `shutdown` until the outbox is drained.
    let relay_stop = CancellationToken::new();
    let relay_task = tokio::spawn(relay.run(relay_stop.clone()));

    let mut totals = Totals::default();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / options.orders_per_sec));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        n += 1;
        let order = random_order();
        let roll_back = options.rollback_one_in != 0 && n.is_multiple_of(options.rollback_one_in);
        // Not raced against `shutdown`: an order that was started is finished.
        let outcome = match pool.get().await {
            Ok(mut conn) => place_order(&mut conn, &order, roll_back).await,
            Err(e) => Err(e.into()),
        };
        let OrderPlaced { order_id, sku, quantity, total_cents } = &order;
        let total = format!("{}.{:02}", total_cents / 100, total_cents % 100);
        match outcome {
            Ok(Outcome::Placed) => {
                totals.placed += 1;
                info!("order {order_id} placed: {quantity} x {sku}, total {total}");
            }
            Ok(Outcome::RolledBack) => {
                totals.rolled_back += 1;
                info!("order {order_id} rolled back on purpose: no order row, no event");
            }
            Err(e) => {
                totals.failed += 1;
                warn!("order {order_id} failed, nothing stored: {}", crate::service::error_chain(e.as_ref()));
            }
        }
    }

    info!("no more orders; letting the relay publish what is left in the outbox");
    totals.unpublished = drain(&pool, options.drain_timeout).await;
    relay_stop.cancel();
    relay_task.await??;
    Ok(totals)
}

/// Waits until the outbox has no pending message or `timeout` passed; then the number of
/// messages not published (pending, and parked ones, which wait for an operator).
async fn drain(pool: &outbox::Pool, timeout: Duration) -> Option<i64> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let status = match pool.get().await {
            Ok(mut conn) => outbox::ops::status(&mut conn).await.ok(),
            Err(_) => None,
        };
        let done = status.as_ref().is_some_and(|s| s.pending == 0);
        if done || tokio::time::Instant::now() >= deadline {
            return status.map(|s| s.pending + s.parked);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
