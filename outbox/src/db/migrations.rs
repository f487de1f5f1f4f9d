//! The migration runner's statements ([`outbox::migrate`](crate::migrate) and the start-up
//! check), implemented in `postgres.rs` and `sqlite.rs`. Crate-private.

use crate::Result;

/// The migration runner's statements, one implementation per backend.
#[async_trait::async_trait]
pub trait MigrationStore: Send {
    /// How many migrations this build has for the backend.
    const MIGRATION_COUNT: usize;

    /// Applies the migrations this database lacks (nothing when it is current).
    async fn migrate_schema(&mut self) -> Result<()>;

    /// The migrations of this build not applied to this database (all of them when it was
    /// never migrated), in order.
    async fn missing_migrations(&mut self) -> Result<Vec<&'static str>>;
}
