//! The `outbox` command-line binary (crate `outbox-cli`): migrate, run the relay, inspect the outbox,
//! retry or discard parked messages, list, replay or discard inbox dead letters. See `cli/README.md`.
//!
//! Exit codes: 0 success, 1 runtime failure (database, Kafka), 2 invalid usage or configuration.
//! `status --check` (for probes): 0 healthy, 1 degraded (the reasons are printed), 2 cannot
//! tell (the database cannot be reached or queried, or invalid usage).
//!
//! The database is PostgreSQL or SQLite, told apart by DATABASE_URL's form (see [`Target`]).

mod args;
mod commands;
mod connect;
mod output;
mod relay;

use std::process::ExitCode;

use clap::error::{ContextKind, ContextValue, ErrorKind as ClapErrorKind};
use clap::{CommandFactory, FromArgMatches};
use outbox::ErrorKind;

use crate::args::{CheckArgs, Cli, Command, ConfigCommand, OpsCommand};
use crate::commands::{migrate, operate};
use crate::connect::{Target, connect, connect_sqlite};

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
