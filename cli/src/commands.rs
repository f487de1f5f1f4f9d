//! The commands that work on one database connection: `migrate`, and the operations (`status`,
//! `parked`, `dead-letters`) with the missing-migrations hint on their failures. Separate from
//! `main`, which parses the command line and dispatches, and from the relay, which runs until
//! stopped.

use inbox::ops::{DeadLetterSelection, ReplaySelection};
use outbox::Database;
use outbox::ops::{self, Selection};

use crate::Failure;
use crate::args::{DeadLetterCommand, OpsCommand, ParkedCommand, ParkedSelectionArgs};
use crate::output::{self, print_dead_letters, print_json, print_parked, print_status};

/// The sets `outbox migrate` applies and the operations' hint checks: the outbox's tables, then
/// the inbox's (the two do not depend on each other).
const SETS: [&outbox::migrations::Migrations; 2] = [&outbox::MIGRATIONS, &inbox::MIGRATIONS];

pub(crate) async fn migrate<C: Database>(conn: &mut C) -> Result<(), Failure> {
    for set in SETS {
        set.apply(conn).await?;
    }
    Ok(())
}

pub(crate) async fn operate<C: Database>(conn: &mut C, op: OpsCommand) -> Result<(), Failure> {
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
            // A relay-only service migrates only the outbox's tables: no dead letters to count.
            let inbox_tables = inbox::MIGRATIONS.missing(conn).await?.len() < inbox::MIGRATIONS.versions::<C>().len();
            let inbox = if inbox_tables { Some(inbox::ops::status(conn).await?) } else { None };
            let status = output::Status { outbox: ops::status(conn).await?, inbox };
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
