//! The statements of [`crate::ops`] (the operator's dead-letter commands), one implementation
//! per backend (`postgres.rs`, `sqlite.rs` beside this file); the functions of `crate::ops` are
//! the control flow, written once, and reach them through [`sql`]. Beside the inbox's other
//! statements (`crate::store`), on the same tables.

use diesel::QueryResult;
use outbox::db::Backend;
use outbox::{Database, Error, ErrorKind, Result};

use super::DeadLetter;

/// The statements behind `inbox::ops`, one implementation per backend.
#[async_trait::async_trait]
pub(crate) trait Sql: Send {
    /// Rows of `inbox_dead_letters`, all groups.
    async fn ops_dead_letter_total(&mut self) -> QueryResult<i64>;
    /// Dead letters newest first, at most `limit`, of `group` when given.
    async fn ops_list_dead_letters(&mut self, group: Option<&str>, limit: i64) -> Result<Vec<DeadLetter>>;
    /// Deletes the dead letters among `ids` (when given) of `group` (when given).
    async fn ops_discard_dead_letters(&mut self, ids: Option<&[i64]>, group: Option<&str>) -> QueryResult<usize>;
    /// Sets `replay_requested_at` on the dead letters of `group`, among `ids`, with `reason`
    /// (each when given). Returns how many.
    async fn ops_request_replay(
        &mut self,
        group: Option<&str>,
        ids: Option<&[i64]>,
        reason: Option<&str>,
    ) -> QueryResult<usize>;
}

/// The operations' statements for `conn`'s backend; a configuration error for a backend this
/// build has no statements for (`outbox/sqlite` without `inbox/sqlite`).
pub(crate) fn sql<C: Database>(conn: &mut C) -> Result<&mut dyn Sql> {
    match conn.backend() {
        Backend::Postgres(conn) => Ok(conn),
        #[cfg(feature = "sqlite")]
        Backend::Sqlite(conn) => Ok(conn),
        #[allow(unreachable_patterns)]
        _ => Err(Error::other(
            ErrorKind::Config,
            format!(
                "inbox::ops: the inbox crate was built without support for {} (enable its `sqlite` feature)",
                C::NAME
            ),
            None,
        )),
    }
}
