//! The `outbox` command-line binary (crate `outbox-cli`): migrate, run the relay, inspect the outbox,
//! retry or discard parked messages, list, replay or discard inbox dead letters. See `cli/README.md`.
//!
//! Exit codes: 0 success, 1 runtime failure (database, Kafka), 2 invalid usage or configuration.
//! `status --check` (for probes): 0 healthy, 1 degraded (the reasons are printed), 2 cannot
//! tell (the database cannot be reached or queried, or invalid usage).
//!
//! The database is PostgreSQL or SQLite, told apart by DATABASE_URL's form (see [`Target`]).

mod output;
mod relay;

use std::process::ExitCode;

use clap::error::{ContextKind, ContextValue, ErrorKind as ClapErrorKind};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use inbox::ops::{DeadLetterSelection, ReplaySelection};
use outbox::ops::{self, Selection};
use outbox::{Database, ErrorKind};
use uuid::Uuid;

use crate::output::{print_dead_letters, print_json, print_parked, print_status};
use crate::relay::RelayArgs;

/// Transactional outbox operations: schema migration, the relay, and repairs.
#[derive(Parser)]
#[command(name = "outbox", version, propagate_version = true)]
struct Cli {
    /// PostgreSQL connection URL, or a SQLite database: sqlite://PATH, or a PATH ending in .db,
    /// .sqlite or .sqlite3.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true, value_name = "URL")]
    database_url: Option<String>,
    /// DATABASE_URL is a transaction pooler (PgBouncer pool_mode=transaction before 1.21):
    /// connect with `outbox::pooler` (no statement outlives its transaction; the relay polls,
    /// no LISTEN). PostgreSQL only. See docs/pgbouncer.md.
    #[arg(long, env = "OUTBOX_TRANSACTION_POOLING", global = true)]
    transaction_pooling: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
enum ConfigCommand {
    /// Print the relay's default configuration as TOML (a starting point for `relay --config`).
    PrintDefault,
}

/// The commands that run one operation on one connection.
#[derive(Subcommand)]
enum OpsCommand {
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
enum ParkedCommand {
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
struct ParkedSelectionArgs {
    /// These message ids.
    #[arg(long = "id", value_name = "UUID", num_args = 1.., required_unless_present = "all", conflicts_with = "all")]
    ids: Vec<Uuid>,
    /// Every parked message (of --topic, when given).
    #[arg(long)]
    all: bool,
    /// With --all: only this topic.
    #[arg(long, requires = "all")]
    topic: Option<String>,
}

#[derive(Subcommand)]
enum DeadLetterCommand {
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
struct CheckArgs {
    /// Exit 1 when the outbox is degraded: the oldest pending message is older than
    /// --max-pending-age-secs, no relay holds a live lease, or (with --fail-on-parked) a message
    /// is parked; exit 2 when the database cannot be reached.
    #[arg(long)]
    check: bool,
    /// With --check: the oldest pending message may be this old.
    #[arg(long, default_value_t = 60, requires = "check", value_name = "SECS")]
    max_pending_age_secs: u64,
    /// With --check: any parked message is degraded.
    #[arg(long, requires = "check")]
    fail_on_parked: bool,
    /// With --check: no live relay lease is not degraded (the relay runs only now and then).
    #[arg(long, requires = "check")]
    no_lease_ok: bool,
}

/// A failure, and the exit code it maps to.
enum Failure {
    /// Invalid usage or configuration: exit code 2.
    Usage(String),
    /// A failure at run time: exit code 1.
    Runtime(String),
    /// `status --check` found the outbox degraded (the reasons are printed already): exit code 1.
    Degraded,
    /// `status --check` could not tell: exit code 2.
    CannotCheck(String),
}

impl From<outbox::Error> for Failure {
    fn from(e: outbox::Error) -> Self {
        match e.kind() {
            ErrorKind::Config => Failure::Usage(e.to_string()),
            _ => Failure::Runtime(e.to_string()),
        }
    }
}

/// The command line's definition, with the relay flags' defaults taken from the library.
fn command() -> clap::Command {
    Cli::command().mut_subcommand("relay", relay::with_defaults)
}

fn main() -> ExitCode {
    let cli = match command().try_get_matches().and_then(|m| Cli::from_arg_matches(&m)) {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::builder()
                .with_default_directive(tracing_subscriber::filter::LevelFilter::INFO.into())
                .from_env_lossy(),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(message)) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
        Err(Failure::Degraded) => ExitCode::FAILURE,
        Err(Failure::CannotCheck(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}

/// Prints clap's message (exit code 2 for errors, 0 for --help and --version), adding which
/// environment variable an invalid value came from: clap names only the flag.
fn usage_error(e: clap::Error) -> ExitCode {
    let _ = e.print();
    if !e.use_stderr() {
        return ExitCode::SUCCESS;
    }
    if matches!(e.kind(), ClapErrorKind::InvalidValue | ClapErrorKind::ValueValidation)
        && let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg)
    {
        let long = arg.split_whitespace().next().unwrap_or_default().trim_start_matches("--");
        let given_as_flag = std::env::args().any(|a| a == format!("--{long}") || a.starts_with(&format!("--{long}=")));
        if let Some(env) = env_of(&command(), long).filter(|env| !given_as_flag && std::env::var_os(env).is_some()) {
            eprintln!("note: the value comes from the environment variable {env}");
        }
    }
    ExitCode::from(2)
}

/// The environment variable behind the flag `--long`, searching every subcommand.
fn env_of(cmd: &clap::Command, long: &str) -> Option<String> {
    cmd.get_arguments()
        .find(|a| a.get_long() == Some(long))
        .and_then(|a| a.get_env())
        .map(|env| env.to_string_lossy().into_owned())
        .or_else(|| cmd.get_subcommands().find_map(|sub| env_of(sub, long)))
}

async fn run(cli: Cli) -> Result<(), Failure> {
    // What needs no database.
    match &cli.command {
        Command::Config(ConfigCommand::PrintDefault) => {
            println!("# The outbox relay's defaults (outbox::relay::RelayConfig); see docs/configuration.md.");
            println!("# listen is absent: on, except with --transaction-pooling and on SQLite.");
            print!("{}", relay::to_toml(&outbox::relay::RelayConfig::default())?);
            return Ok(());
        }
        Command::Relay(args) if args.print_config => {
            print!("{}", relay::to_toml(&relay::config(args)?)?);
            return Ok(());
        }
        _ => {}
    }
    let url = cli
        .database_url
        .ok_or_else(|| Failure::Usage("the database is not set: set DATABASE_URL or pass --database-url".into()))?;
    let target = Target::of(&url)?;
    if let Target::Sqlite(_) = target {
        if cli.transaction_pooling {
            return Err(Failure::Usage(
                "--transaction-pooling (OUTBOX_TRANSACTION_POOLING) is for PgBouncer in front of PostgreSQL, \
                 and DATABASE_URL names a SQLite database: remove the flag"
                    .into(),
            ));
        }
        // Opening a missing file would create an empty database; only `migrate` should.
        if !matches!(cli.command, Command::Migrate) {
            target.check_exists()?;
        }
    }
    match cli.command {
        Command::Migrate => {
            match &target {
                Target::Postgres(url) => migrate(&mut connect(url, cli.transaction_pooling).await?).await?,
                Target::Sqlite(url) => migrate(&mut connect_sqlite(url).await?).await?,
            }
            println!("outbox and inbox schema is up to date");
            Ok(())
        }
        Command::Relay(args) => relay::run(&target, cli.transaction_pooling, args).await,
        Command::Config(_) => Ok(()),
        Command::Ops(op) => {
            let probe = matches!(op, OpsCommand::Status { check: CheckArgs { check: true, .. }, .. });
            let result = async {
                match &target {
                    Target::Postgres(url) => operate(&mut connect(url, cli.transaction_pooling).await?, op).await,
                    Target::Sqlite(url) => operate(&mut connect_sqlite(url).await?, op).await,
                }
            }
            .await;
            // A probe: whatever stops the check is "cannot tell", never "degraded".
            result.map_err(|f| match f {
                Failure::Runtime(m) if probe => Failure::CannotCheck(m),
                other => other,
            })
        }
    }
}

/// The database DATABASE_URL names.
///
/// SQLite: `sqlite://PATH` (`sqlite:///abs/app.db`, `sqlite://app.db`), a `file:` URI, or a
/// path ending in `.db`, `.sqlite` or `.sqlite3` (without `://` or `=`, so a PostgreSQL URL or
/// `key=value` connection string never matches). Anything else is PostgreSQL.
pub(crate) enum Target {
    /// A PostgreSQL connection URL or string.
    Postgres(String),
    /// A SQLite database, as `outbox::sqlite::connect` takes it.
    Sqlite(String),
}

impl Target {
    fn of(url: &str) -> Result<Self, Failure> {
        let path_like = !url.contains("://") && !url.contains('=');
        let sqlite_ext = [".db", ".sqlite", ".sqlite3"].iter().any(|ext| url.ends_with(ext));
        if url.starts_with("sqlite:") && !url.starts_with("sqlite://") {
            Err(Failure::Usage(format!(
                "DATABASE_URL `{url}`: write a SQLite database as sqlite://PATH (sqlite:///abs/path.db, sqlite://app.db)"
            )))
        } else if url.starts_with("sqlite://") || url.starts_with("file:") || (path_like && sqlite_ext) {
            Ok(Target::Sqlite(url.to_owned()))
        } else {
            Ok(Target::Postgres(url.to_owned()))
        }
    }

    /// A SQLite file that does not exist is an error (not an empty database); `file:` URIs are
    /// left to SQLite.
    fn check_exists(&self) -> Result<(), Failure> {
        if let Target::Sqlite(url) = self {
            let path = url.strip_prefix("sqlite://").unwrap_or(url);
            if !path.starts_with("file:") && !std::path::Path::new(path).exists() {
                return Err(Failure::Runtime(format!(
                    "the SQLite database `{path}` (DATABASE_URL) does not exist; `outbox migrate` creates it"
                )));
            }
        }
        Ok(())
    }
}

/// The sets `outbox migrate` applies and the operations' hint checks: the outbox's tables, then
/// the inbox's (the two do not depend on each other).
const SETS: [&outbox::migrations::Migrations; 2] = [&outbox::MIGRATIONS, &inbox::MIGRATIONS];

async fn migrate<C: Database>(conn: &mut C) -> Result<(), Failure> {
    for set in SETS {
        set.apply(conn).await?;
    }
    Ok(())
}

async fn operate<C: Database>(conn: &mut C, op: OpsCommand) -> Result<(), Failure> {
    let result = run_op(conn, op).await;
    // A failure on a schema that lacks migrations (of either set: the operations read both
    // crates' tables) gets the hint; the schema is read from the catalog (to_regclass,
    // sqlite_master), not from the server's error text, which PostgreSQL translates
    // (lc_messages).
    if let Err(Failure::Runtime(message)) = &result {
        let (mut missing, mut total) = (0, 0);
        for set in SETS {
            match set.missing(conn).await {
                Ok(m) => missing += m.len(),
                Err(_) => return result,
            }
            total += set.versions::<C>().len();
        }
        if missing > 0 {
            return Err(Failure::Runtime(format!(
                "{message}\n(the schema lacks {missing} of {total} migrations: has `outbox migrate` been run on this database?)"
            )));
        }
    }
    result
}

async fn run_op<C: Database>(conn: &mut C, op: OpsCommand) -> Result<(), Failure> {
    match op {
        OpsCommand::Status { json, check } => {
            let status = output::Status { outbox: ops::status(conn).await?, inbox: inbox::ops::status(conn).await? };
            if json {
                print_json(&status)?
            } else {
                print_status(&status)
            }
            if check.check {
                let thresholds = outbox::health::OutboxThresholds::default()
                    .max_pending_age(std::time::Duration::from_secs(check.max_pending_age_secs))
                    .fail_on_parked(check.fail_on_parked)
                    .require_lease(!check.no_lease_ok);
                // After --json the verdict goes to stderr, so stdout stays one JSON document.
                let verdict = |line: String| if json { eprintln!("{line}") } else { println!("{line}") };
                match outbox::health::check_outbox(&status.outbox, &thresholds) {
                    Ok(()) => verdict("check: ok".into()),
                    Err(unhealthy) => {
                        for reason in unhealthy.reasons {
                            verdict(format!("check: degraded: {reason}"));
                        }
                        return Err(Failure::Degraded);
                    }
                }
            }
        }
        OpsCommand::Parked(ParkedCommand::List { topic, limit, json }) => {
            let parked = ops::list_parked(conn, limit, topic.as_deref()).await?;
            if json { print_json(&parked)? } else { print_parked(&parked) }
        }
        OpsCommand::Parked(ParkedCommand::Retry(args)) => {
            let (selection, asked) = args.selection();
            let n = ops::retry_parked(conn, selection).await?;
            println!("un-parked {n} message(s); the relay publishes them again");
            warn_unmatched(n, asked, "parked messages");
        }
        OpsCommand::Parked(ParkedCommand::Discard(args)) => {
            let (selection, asked) = args.selection();
            let n = ops::discard_parked(conn, selection).await?;
            println!("discarded {n} parked message(s)");
            warn_unmatched(n, asked, "parked messages");
        }
        OpsCommand::DeadLetters(DeadLetterCommand::List { group, limit, json }) => {
            let dead = inbox::ops::list_dead_letters(conn, group.as_deref(), limit).await?;
            if json { print_json(&dead)? } else { print_dead_letters(&dead) }
        }
        OpsCommand::DeadLetters(DeadLetterCommand::Replay { ids, group, reason, .. }) => {
            let asked = (!ids.is_empty()).then(|| distinct(&ids));
            let mut selection = if ids.is_empty() { ReplaySelection::all() } else { ReplaySelection::ids(ids) };
            if let Some(group) = group {
                selection = selection.in_group(group);
            }
            if let Some(reason) = reason {
                selection = selection.with_reason(reason);
            }
            let n = inbox::ops::request_replay(conn, &selection).await?;
            println!(
                "requested a replay of {n} dead letter(s); a running inbox of each one's group replays it within its \
                 replay poll interval (5 s by default)"
            );
            warn_unmatched(n, asked, "dead letters");
        }
        OpsCommand::DeadLetters(DeadLetterCommand::Discard { ids, group, .. }) => {
            let asked = (!ids.is_empty()).then(|| distinct(&ids));
            let selection = match group {
                Some(group) => DeadLetterSelection::Group(group),
                None => DeadLetterSelection::Ids(ids),
            };
            let n = inbox::ops::discard_dead_letters(conn, selection).await?;
            println!("discarded {n} dead letter(s)");
            warn_unmatched(n, asked, "dead letters");
        }
    }
    Ok(())
}

impl ParkedSelectionArgs {
    /// The selection, and how many ids were asked for (None for --all).
    fn selection(self) -> (Selection, Option<usize>) {
        if self.all {
            (Selection::All { topic: self.topic }, None)
        } else {
            let n = distinct(&self.ids);
            (Selection::Ids(self.ids), Some(n))
        }
    }
}

fn distinct<T: Eq + std::hash::Hash>(ids: &[T]) -> usize {
    ids.iter().collect::<std::collections::HashSet<_>>().len()
}

fn warn_unmatched(done: u64, asked: Option<usize>, what: &str) {
    if let Some(asked) = asked.filter(|&a| a as u64 > done) {
        eprintln!(
            "note: {} of the {asked} given ids are not {what} (unknown, or already handled)",
            asked as u64 - done
        );
    }
}

async fn connect(url: &str, transaction_pooling: bool) -> Result<AsyncPgConnection, Failure> {
    let conn = if transaction_pooling {
        outbox::pooler::establish(url).await
    } else {
        AsyncPgConnection::establish(url).await
    };
    conn.map_err(|e| Failure::Runtime(format!("cannot connect to the database (DATABASE_URL): {}", chain(&e))))
}

async fn connect_sqlite(url: &str) -> Result<outbox::sqlite::SqliteConnection, Failure> {
    outbox::sqlite::connect(url).await.map_err(|e| match e.kind() {
        ErrorKind::Config => Failure::Usage(format!("DATABASE_URL: {e}")),
        _ => Failure::Runtime(format!("cannot open the database (DATABASE_URL): {}", chain(&e))),
    })
}

/// An error with its sources, each once: driver errors often keep the useful part in a source.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text = format!("{text}: {s_text}");
        }
        source = s.source();
    }
    text
}
