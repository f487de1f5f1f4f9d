//! Backend-specific pieces of the generative relay suite (see [`crate::relay_gen`]): the
//! operator's retry / discard of parked rows, the NOTIFY switch, and a description of what is
//! left in the outbox.

use uuid::Uuid;

use crate::{Backend, TestConn, TestDb};

/// The backend-specific operations of the suite: the operator's retry / discard (`outbox::ops`,
/// the same call on both backends) and the NOTIFY switch.
#[async_trait::async_trait]
pub trait GenConn: outbox::Database {
    /// Un-parks these ids; returns how many were parked.
    async fn retry_parked(&mut self, ids: &[Uuid]) -> u64 {
        outbox::ops::retry_parked(self, outbox::ops::Selection::Ids(ids.to_vec())).await.expect("ops::retry_parked")
    }
    /// Deletes these parked ids; returns how many were parked.
    async fn discard_parked(&mut self, ids: &[Uuid]) -> u64 {
        outbox::ops::discard_parked(self, outbox::ops::Selection::Ids(ids.to_vec())).await.expect("ops::discard_parked")
    }
    /// Enables the NOTIFY trigger (PostgreSQL; a no-op on SQLite).
    async fn enable_notify(&mut self);
}

#[async_trait::async_trait]
impl GenConn for diesel_async::AsyncPgConnection {
    async fn enable_notify(&mut self) {
        outbox::set_notify(self, true).await.expect("set_notify");
    }
}

#[async_trait::async_trait]
impl GenConn for outbox::sqlite::SqliteConnection {
    async fn enable_notify(&mut self) {}
}

/// What is left in the outbox (when a case could not drain).
pub async fn left_over<B: Backend>(db: &TestDb<B>) -> String {
    let rows = db.conn().await.outbox_rows().await;
    let parked = rows.iter().filter(|r| r.parked_at.is_some()).count();
    let sample: Vec<String> = rows
        .iter()
        .take(8)
        .map(|r| {
            format!(
                "seq {} key {:?} attempts {} parked {} error {:?}",
                r.seq,
                r.key,
                r.attempts,
                r.parked_at.is_some(),
                r.last_error
            )
        })
        .collect();
    format!("{} rows left ({parked} parked), first: [{}]", rows.len(), sample.join("; "))
}
