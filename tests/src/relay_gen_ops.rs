//! Backend-specific pieces of the generative relay suite (see [`crate::relay_gen`]): the
//! operator's retry / discard of parked rows, the NOTIFY switch, and a description of what is
//! left in the outbox.

use uuid::Uuid;

use crate::{Backend, TestConn, TestDb};

/// The backend-specific operations of the suite: `outbox::ops` retry / discard on PostgreSQL,
/// the same statements by hand on SQLite (the ops API is PostgreSQL-only).
#[async_trait::async_trait]
pub trait GenConn: Send {
    /// Un-parks these ids; returns how many were parked.
    async fn retry_parked(&mut self, ids: &[Uuid]) -> u64;
    /// Deletes these parked ids; returns how many were parked.
    async fn discard_parked(&mut self, ids: &[Uuid]) -> u64;
    /// Enables the NOTIFY trigger (PostgreSQL; a no-op on SQLite).
    async fn enable_notify(&mut self);
}

#[async_trait::async_trait]
impl GenConn for diesel_async::AsyncPgConnection {
    async fn retry_parked(&mut self, ids: &[Uuid]) -> u64 {
        outbox::ops::retry_parked(self, outbox::ops::Selection::Ids(ids.to_vec())).await.expect("ops::retry_parked")
    }
    async fn discard_parked(&mut self, ids: &[Uuid]) -> u64 {
        outbox::ops::discard_parked(self, outbox::ops::Selection::Ids(ids.to_vec())).await.expect("ops::discard_parked")
    }
    async fn enable_notify(&mut self) {
        outbox::set_notify(self, true).await.expect("set_notify");
    }
}

fn id_list(ids: &[Uuid]) -> String {
    ids.iter().map(|id| format!("'{id}'")).collect::<Vec<_>>().join(",")
}

#[async_trait::async_trait]
impl GenConn for outbox::sqlite::SqliteConnection {
    async fn retry_parked(&mut self, ids: &[Uuid]) -> u64 {
        let sql = format!(
            "UPDATE outbox_messages SET parked_at = NULL, attempts = 0, next_attempt_at = 0 \
             WHERE parked_at IS NOT NULL AND id IN ({})",
            id_list(ids)
        );
        diesel_async::RunQueryDsl::execute(diesel::sql_query(sql), self).await.expect("retry parked") as u64
    }
    async fn discard_parked(&mut self, ids: &[Uuid]) -> u64 {
        let sql = format!("DELETE FROM outbox_messages WHERE parked_at IS NOT NULL AND id IN ({})", id_list(ids));
        diesel_async::RunQueryDsl::execute(diesel::sql_query(sql), self).await.expect("discard parked") as u64
    }
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
