//! The operations commands of the `outbox` binary on PostgreSQL (a fresh database per test,
//! created from `DATABASE_URL`): migrate, status and `status --check`, parked messages and dead
//! letters listed, retried, replayed and discarded.

mod common;

use common::{Binary, FIXTURE, TestDb, assert_usage_error};
use serde_json::Value;

#[tokio::test]
async fn migrate_status_and_repairs() {
    let db = TestDb::new().await;
    assert!(db.ok(&["migrate"]).contains("up to date"));
    assert!(db.ok(&["migrate"]).contains("up to date"), "migrating twice is a no-op");

    let status = db.json(&["status", "--json"]);
    assert_eq!(status["pending"], 0);
    assert_eq!(status["parked"], 0);
    assert_eq!(status["dead_letters"], 0);
    assert!(status["lease"].is_null(), "{status}");
    assert!(status["oldest_pending_age_secs"].is_null(), "{status}");

    db.sql(FIXTURE).await;
    let status = db.json(&["status", "--json"]);
    assert_eq!(status["pending"], 1, "{status}");
    assert_eq!(status["parked"], 1, "{status}");
    assert_eq!(status["dead_letters"], 1, "{status}");
    assert_eq!(status["per_topic"][0]["topic"], "orders", "{status}");
    assert!(status["oldest_pending_age_secs"].as_f64().is_some(), "{status}");
    assert!(db.ok(&["status"]).contains("1 parked"), "the human form too");

    let parked = db.json(&["parked", "list", "--json"]);
    let parked = parked.as_array().expect("a JSON array");
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0]["id"], "0190f6e0-0000-7000-8000-000000000001");
    assert_eq!(parked[0]["key"], "k1");
    assert_eq!(parked[0]["last_error"], "Broker: Message size too large");
    assert_eq!(db.json(&["parked", "list", "--json", "--topic", "other"]), Value::Array(vec![]));
    assert!(db.ok(&["parked", "list"]).contains("Message size too large"));

    // Retrying by id touches only the parked row, never the pending one named alongside it.
    let out = db.run(
        &["parked", "retry", "--id", "0190f6e0-0000-7000-8000-000000000001", "0190f6e0-0000-7000-8000-000000000002"],
        &[],
    );
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("un-parked 1 message"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 of the 2 given ids are not parked"));
    assert_eq!(db.json(&["parked", "list", "--json"]), Value::Array(vec![]));
    assert_eq!(db.count("SELECT count(*) AS n FROM outbox_messages WHERE attempts = 0 AND parked_at IS NULL").await, 2);

    db.sql("UPDATE outbox_messages SET parked_at = now() WHERE key = 'k1'").await;
    assert!(db.ok(&["parked", "discard", "--all", "--topic", "orders"]).contains("discarded 2 parked"));
    assert_eq!(db.count("SELECT count(*) AS n FROM outbox_messages").await, 0);

    let dead = db.json(&["dead-letters", "list", "--json", "--group", "inventory"]);
    assert_eq!(dead[0]["reason"], "handler_failed", "{dead}");
    assert_eq!(dead[0]["partition"], 2, "{dead}");
    assert_eq!(dead[0]["offset"], 41, "{dead}");
    assert!(dead[0]["replay_requested_at"].is_null(), "{dead}");
    // Replay requests mark the rows a running inbox of the group replays.
    let id = dead[0]["id"].to_string();
    let requested = "SELECT count(*) AS n FROM inbox_dead_letters WHERE replay_requested_at IS NOT NULL";
    assert!(db.ok(&["dead-letters", "replay", "--all", "--group", "other"]).contains("replay of 0"));
    assert!(db.ok(&["dead-letters", "replay", "--all", "--reason", "unknown_type"]).contains("replay of 0"));
    assert_eq!(db.count(requested).await, 0);
    let out = db.run(&["dead-letters", "replay", "--id", &id, "999999"], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("requested a replay of 1 dead letter"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 of the 2 given ids are not dead letters"));
    assert_eq!(db.count(requested).await, 1);
    let dead = db.json(&["dead-letters", "list", "--json"]);
    assert!(dead[0]["replay_requested_at"].is_string(), "{dead}");
    assert!(db.ok(&["dead-letters", "list"]).contains("REPLAY REQUESTED"));
    db.sql("UPDATE inbox_dead_letters SET replay_requested_at = NULL").await;
    let by_reason = ["dead-letters", "replay", "--all", "--group", "inventory", "--reason", "handler_failed"];
    assert!(db.ok(&by_reason).contains("replay of 1"));
    assert_eq!(db.count(requested).await, 1);
    assert!(db.ok(&["dead-letters", "discard", "--all", "--group", "other"]).contains("discarded 0"));
    assert!(db.ok(&["dead-letters", "discard", "--all", "--group", "inventory"]).contains("discarded 1"));
    assert_eq!(db.json(&["status", "--json"])["dead_letters"], 0);
    db.drop_db().await;
}

/// The "has `outbox migrate` been run" hint is read from the catalog, not from the server's
/// error text: a server answering in German (`lc_messages`, which PostgreSQL translates) gets
/// it too. Needs the de_DE.UTF-8 locale (scripts/pg.sh generates it).
#[tokio::test]
async fn an_unmigrated_database_gets_the_migrate_hint_in_any_language() {
    let db = TestDb::new().await;
    db.sql(&format!("ALTER DATABASE {} SET lc_messages = 'de_DE.UTF-8'", db.name)).await;
    let out = db.run(&["status"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("existiert nicht"), "the server answers in German: {stderr}");
    assert!(stderr.contains("has `outbox migrate` been run on this database?"), "{stderr}");
    db.drop_db().await;
}

/// `status --check` for probes: 0 healthy, 1 degraded with the reasons printed, 2 cannot tell.
#[tokio::test]
async fn status_check_exit_codes() {
    let db = TestDb::new().await;
    db.ok(&["migrate"]);
    let check = |args: &[&str]| {
        let out = db.run(&[&["status", "--check"][..], args].concat(), &[]);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        println!("status --check {args:?}: exit {:?}\n{stdout}", out.status.code());
        (out.status.code(), stdout)
    };
    // No relay has ever run: degraded.
    let (code, stdout) = check(&[]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("check: degraded: no relay holds a live lease"), "{stdout}");
    assert_eq!(check(&["--no-lease-ok"]).0, Some(0), "healthy once the lease is not required");

    // A live lease, nothing pending: healthy.
    db.sql(
        "INSERT INTO outbox_relay_leases (name, owner, epoch, expires_at) \
            VALUES ('default', gen_random_uuid(), 1, now() + interval '1 hour')",
    )
    .await;
    let (code, stdout) = check(&[]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("check: ok"), "{stdout}");

    // A pending message two minutes old and a parked one.
    db.sql(FIXTURE).await;
    db.sql("UPDATE outbox_messages SET created_at = now() - interval '2 minutes' WHERE parked_at IS NULL").await;
    let (code, stdout) = check(&[]);
    assert_eq!(code, Some(1), "older than the default 60 s: {stdout}");
    assert!(stdout.contains("the oldest pending message is 120") && stdout.contains("threshold 60.0s"), "{stdout}");
    assert_eq!(check(&["--max-pending-age-secs", "3600"]).0, Some(0), "within a longer threshold");
    let (code, stdout) = check(&["--max-pending-age-secs", "3600", "--fail-on-parked"]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("1 parked message(s)"), "{stdout}");

    // --json keeps stdout one JSON document; the verdict goes to stderr.
    let out = db.run(&["status", "--check", "--json"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let json: Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(json["parked"], 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("check: degraded: the oldest pending message"));

    // An expired lease: no relay is publishing.
    db.sql("UPDATE outbox_relay_leases SET expires_at = now() - interval '1 second'").await;
    let (code, stdout) = check(&["--max-pending-age-secs", "3600"]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("relay \"default\" is stopped or dead"), "{stdout}");

    // The database cannot be reached: cannot tell.
    let unreachable = db
        .outbox(&["status", "--check"], &[])
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:9/none")
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&unreachable.stderr);
    assert_eq!(unreachable.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot connect to the database"), "{stderr}");
    // Without --check a connection failure stays exit code 1.
    let plain = db.outbox(&["status"], &[]).env("DATABASE_URL", "postgres://nobody@127.0.0.1:9/none").output();
    assert_eq!(plain.expect("run").status.code(), Some(1));
    // Thresholds need --check.
    assert_usage_error(&db.run(&["status", "--fail-on-parked"], &[]), &["--check"]);
    db.drop_db().await;
}

/// A relay-only service migrates only the outbox's tables (`outbox::migrate`): `status` and
/// `status --check` work there, without the inbox's dead-letter count.
#[tokio::test]
async fn status_on_a_database_without_the_inbox_tables() {
    let db = TestDb::new().await;
    db.ok(&["migrate"]);
    db.sql(
        "DO $$ DECLARE t text; BEGIN
           FOR t IN SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND tablename LIKE 'inbox\\_%' LOOP
             EXECUTE format('DROP TABLE %I CASCADE', t);
           END LOOP;
         END $$;
         DELETE FROM outbox_schema_migrations WHERE version LIKE '%inbox%';",
    )
    .await;
    assert_eq!(db.count("SELECT count(*) AS n FROM pg_tables WHERE tablename LIKE 'inbox%'").await, 0);
    let status = db.json(&["status", "--json"]);
    assert_eq!(status["pending"], 0, "{status}");
    assert!(status.get("dead_letters").is_none(), "no dead-letter count without the inbox's tables: {status}");
    assert!(db.ok(&["status"]).contains("no inbox tables"));
    assert!(db.ok(&["status", "--check", "--no-lease-ok"]).contains("check: ok"));
    db.drop_db().await;
}
