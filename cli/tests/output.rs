//! What the `outbox` binary prints for a human: text that producers and brokers control escaped
//! in its tables, and invalid options refused with exit code 2 and the reason.

mod common;

use common::{Binary, TestDb, assert_usage_error};

/// Text that producers and brokers control (dead-letter errors and reasons, topics, parked keys
/// and errors) never reaches the terminal as control sequences.
#[tokio::test]
async fn hostile_text_is_escaped_in_tables() {
    let db = TestDb::new().await;
    db.ok(&["migrate"]);
    // ESC [2J (clear screen), a carriage return, a right-to-left override, a BEL.
    db.sql(
        "INSERT INTO outbox_messages (id, topic, key, event_type, event_version, payload, occurred_at, attempts, \
                                      last_error, parked_at)
         VALUES ('0190f6e0-0000-7000-8000-000000000003', 'orders', E'k\\x1b[2Jx', 'order.placed', 1, '\\x', now(),
                 1, E'too large\\rFAKE', now());
         INSERT INTO inbox_dead_letters (consumer_group, message_id, topic, kafka_partition, kafka_offset, reason, \
                                         error, attempts)
         VALUES ('inventory', NULL, E'orders\\x07', 0, 1, E'unknown_type\\x1b]0;pwned\\x07', \
                 E'no handler for \\u202Eevil\\x1b[31m', 1);",
    )
    .await;
    for args in [&["dead-letters", "list"][..], &["parked", "list"][..], &["status"][..]] {
        let out = db.ok(args);
        for bad in ['\x1b', '\r', '\x07', '\u{202e}'] {
            assert!(!out.contains(bad), "outbox {args:?} printed {bad:?} raw: {out:?}");
        }
    }
    let dead = db.ok(&["dead-letters", "list"]);
    assert!(dead.contains("\\u{1b}[31m") && dead.contains("\\u{202e}evil"), "escaped, still readable: {dead}");
    assert!(db.ok(&["parked", "list"]).contains("too large\\u{d}FAKE"));
    // JSON keeps the exact text (serde escapes it).
    let json = db.json(&["dead-letters", "list", "--json"]);
    assert_eq!(json[0]["topic"], "orders\u{7}");
    db.drop_db().await;
}

#[tokio::test]
async fn invalid_options_exit_with_code_2_and_say_why() {
    let db = TestDb::new().await;
    let brokers = ("KAFKA_BROKERS", "127.0.0.1:9");
    // Not a number, from the environment: the flag and the variable are named.
    let out = db.run(&["relay"], &[brokers, ("OUTBOX_BATCH_SIZE", "lots")]);
    assert_usage_error(&out, &["invalid value 'lots'", "--batch-size", "OUTBOX_BATCH_SIZE"]);
    // Not a boolean, as a flag.
    let out = db.run(&["relay", "--listen", "maybe"], &[brokers]);
    assert_usage_error(&out, &["invalid value 'maybe'", "--listen", "possible values: true, false"]);
    // Well-formed but rejected by the relay's own checks.
    let out = db.run(&["relay"], &[brokers, ("OUTBOX_BATCH_SIZE", "0")]);
    assert_usage_error(&out, &["batch_size 0 is out of range"]);
    let out = db.run(&["relay", "--backoff-base-ms", "400000"], &[brokers]);
    assert_usage_error(&out, &["backoff base"]);
    let out = db.run(&["relay"], &[brokers, ("KAFKA_ACKS", "1")]);
    assert_usage_error(&out, &["acks=1", "refused"]);
    let out = db.run(&["relay"], &[]);
    assert_usage_error(&out, &["KAFKA_BROKERS is not set"]);
    // Selections.
    assert_usage_error(&db.run(&["parked", "retry"], &[]), &["--id"]);
    assert_usage_error(&db.run(&["parked", "discard", "--id", "not-a-uuid"], &[]), &["not-a-uuid"]);
    assert_usage_error(&db.run(&["dead-letters", "discard", "--all"], &[]), &["--group"]);
    assert_usage_error(&db.run(&["dead-letters", "replay"], &[]), &["--id"]);
    assert_usage_error(&db.run(&["dead-letters", "replay", "--group", "inventory"], &[]), &["--all"]);
    let mut no_db = db.outbox(&["status"], &[]);
    no_db.env_remove("DATABASE_URL");
    assert_usage_error(&no_db.output().expect("run"), &["DATABASE_URL"]);
    db.drop_db().await;
}
