//! The command line's definition: the clap types for every command, subcommand and flag (the
//! relay's flags are in [`crate::relay`]). Kept apart from what runs the commands, so the whole
//! surface a user types can be read in one place.

use clap::{Args, Parser, Subcommand};
use uuid::Uuid;

use crate::relay::RelayArgs;

/// Transactional outbox operations: schema migration, the relay, and repairs.
#[derive(Parser)]
#[command(name = "outbox", version, propagate_version = true)]
pub(crate) struct Cli {
    /// PostgreSQL connection URL, or a SQLite database: sqlite://PATH, or a PATH ending in .db,
    /// .sqlite or .sqlite3.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true, value_name = "URL")]
    pub(crate) database_url: Option<String>,
    /// DATABASE_URL is a transaction pooler (PgBouncer pool_mode=transaction before 1.21):
    /// connect with `outbox::pooler` (no statement outlives its transaction; the relay polls,
    /// no LISTEN). PostgreSQL only. See docs/pgbouncer.md.
    #[arg(long, env = "OUTBOX_TRANSACTION_POOLING", global = true)]
    pub(crate) transaction_pooling: bool,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Create or upgrade the outbox and inbox tables (applying twice is a no-op).
    Migrate,
    /// Publish the outbox to Kafka until SIGINT or SIGTERM.
    ///
    /// Kafka settings come from KAFKA_BROKERS and every other KAFKA_<PROPERTY> variable
    /// (KAFKA_SECURITY_PROTOCOL becomes security.protocol). The relay options are the library's
    /// defaults (shown), then the --config file, then each flag, which falls back to the
    /// environment variable shown. See docs/configuration.md.
    Relay(RelayArgs),
    /// Relay configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    #[command(flatten)]
    Ops(OpsCommand),
}

/// `outbox config`: needs no database.
#[derive(Subcommand)]
pub(crate) enum ConfigCommand {
    /// Print the relay's default configuration as TOML (a starting point for `relay --config`).
    PrintDefault,
}

/// The commands that run one operation on one connection.
#[derive(Subcommand)]
pub(crate) enum OpsCommand {
    /// Pending and parked counts per topic, the relay lease, inbox dead letters.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        check: CheckArgs,
    },
    /// Messages the relay parked after repeated or permanent delivery failures.
    #[command(subcommand)]
    Parked(ParkedCommand),
    /// Inbox messages that were refused or whose handler kept failing.
    #[command(subcommand, name = "dead-letters")]
    DeadLetters(DeadLetterCommand),
}

#[derive(Subcommand)]
pub(crate) enum ParkedCommand {
    /// List parked messages, oldest first.
    List {
        /// Only this topic.
        #[arg(long)]
        topic: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Publish parked messages again, with a fresh set of attempts; their keys' held messages follow.
    Retry(ParkedSelectionArgs),
    /// Delete parked messages without publishing them; their keys' held messages are released.
    Discard(ParkedSelectionArgs),
}

#[derive(Args)]
pub(crate) struct ParkedSelectionArgs {
    /// These message ids.
    #[arg(long = "id", value_name = "UUID", num_args = 1.., required_unless_present = "all", conflicts_with = "all")]
    pub(crate) ids: Vec<Uuid>,
    /// Every parked message (of --topic, when given).
    #[arg(long)]
    pub(crate) all: bool,
    /// With --all: only this topic.
    #[arg(long, requires = "all")]
    pub(crate) topic: Option<String>,
}

#[derive(Subcommand)]
pub(crate) enum DeadLetterCommand {
    /// List dead letters, newest first.
    List {
        /// Only this consumer group.
        #[arg(long)]
        group: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Ask the running inboxes to replay dead letters: each is handled again from its stored
    /// record by an inbox of its group (within its replay poll interval, 5 s by default), exactly
    /// once; one that fails again stays with its new error. See docs/dead-letters.md.
    Replay {
        /// These dead-letter ids (the ID column of `list`).
        #[arg(long = "id", value_name = "ID", num_args = 1.., required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<i64>,
        /// Every dead letter (of --group and with --reason, when given).
        #[arg(long)]
        all: bool,
        /// With --all: only this consumer group.
        #[arg(long, requires = "all")]
        group: Option<String>,
        /// With --all: only this reason (e.g. unsupported_version).
        #[arg(long, requires = "all")]
        reason: Option<String>,
    },
    /// Delete dead letters (they will not be replayed).
    Discard {
        /// These dead-letter ids (the ID column of `list`).
        #[arg(long = "id", value_name = "ID", num_args = 1.., required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<i64>,
        /// Every dead letter of --group.
        #[arg(long, requires = "group")]
        all: bool,
        /// With --all: the consumer group.
        #[arg(long, requires = "all")]
        group: Option<String>,
    },
}

/// `status --check`: a probe's verdict on the outbox.
#[derive(Args)]
pub(crate) struct CheckArgs {
    /// Exit 1 when the outbox is degraded: the oldest pending message is older than
    /// --max-pending-age-secs, no relay holds a live lease, or (with --fail-on-parked) a message
    /// is parked; exit 2 when the database cannot be reached.
    #[arg(long)]
    pub(crate) check: bool,
    /// With --check: the oldest pending message may be this old.
    #[arg(long, default_value_t = 60, requires = "check", value_name = "SECS")]
    pub(crate) max_pending_age_secs: u64,
    /// With --check: any parked message is degraded.
    #[arg(long, requires = "check")]
    pub(crate) fail_on_parked: bool,
    /// With --check: no live relay lease is not degraded (the relay runs only now and then).
    #[arg(long, requires = "check")]
    pub(crate) no_lease_ok: bool,
}
