//! The relay's configuration in the `outbox` binary: the library's defaults, then the
//! configuration file, then the flags and their environment variables; file errors refused with
//! exit code 2 and the field named; the defaults the binary prints and shows in `--help`.

mod common;

use std::time::Duration;

use common::{Binary, TestDb, assert_usage_error, command};

/// A relay configuration file in a fresh temporary directory; removed on drop.
struct ConfigFile {
    dir: std::path::PathBuf,
    path: std::path::PathBuf,
}

impl ConfigFile {
    fn new(toml: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("outbox-cli-config-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        let path = dir.join("relay.toml");
        std::fs::write(&path, toml).expect("write the configuration file");
        ConfigFile { dir, path }
    }

    fn path(&self) -> &str {
        self.path.to_str().expect("a UTF-8 temporary path")
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `outbox relay --print-config`, parsed (it needs no database or broker).
fn effective_config(args: &[&str], env: &[(&str, &str)]) -> outbox::relay::RelayConfig {
    let mut all = vec!["relay", "--print-config"];
    all.extend_from_slice(args);
    let out = command("", &all, env).output().expect("run the outbox binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "outbox {all:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    toml::from_str(&stdout).unwrap_or_else(|e| panic!("--print-config printed no RelayConfig ({e}): {stdout}"))
}

/// The configuration is the library's defaults, then the file, then the flags and their
/// environment variables.
#[test]
fn a_config_file_is_applied_and_flags_override_it() {
    use outbox::relay::{AfterSend, RelayConfig};
    let file = ConfigFile::new(
        "name = \"from-file\"\nbatch_size = 250\npoll_interval = \"250ms\"\nmetrics_interval = \"1m\"\n\
         after_send = { mode = \"keep\", retention = \"7days\" }\n[retry]\nbase = \"1s\"\nmax = \"2m\"\n",
    );
    let defaults = RelayConfig::default();
    assert_eq!(effective_config(&[], &[]), defaults);

    let from_file = effective_config(&["--config", file.path()], &[]);
    assert_eq!(from_file.name, "from-file");
    assert_eq!(from_file.batch_size, 250);
    assert_eq!(from_file.poll_interval, Duration::from_millis(250));
    assert_eq!(from_file.metrics_interval, Duration::from_secs(60));
    assert_eq!(from_file.after_send, AfterSend::Keep { retention: Duration::from_secs(7 * 24 * 3600) });
    assert_eq!(from_file.retry, outbox::RetryPolicy::new(Duration::from_secs(1), Duration::from_secs(120)));
    assert_eq!(from_file.lease, defaults.lease, "what the file leaves out keeps its default");

    // A flag and an environment variable override the file; the file's other values stay.
    let overridden = effective_config(
        &["--batch-size", "7", "--backoff-max-ms", "90000"],
        &[("OUTBOX_CONFIG", file.path()), ("OUTBOX_RELAY_NAME", "from-env")],
    );
    assert_eq!((overridden.name.as_str(), overridden.batch_size), ("from-env", 7));
    assert_eq!(overridden.retry.base, Duration::from_secs(1));
    assert_eq!(overridden.retry.max, Duration::from_secs(90));
    assert_eq!(overridden.poll_interval, Duration::from_millis(250));
}

/// The file's values reach the relay that runs: it publishes under the file's name until SIGTERM.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_runs_with_the_config_file() {
    let db = TestDb::new().await;
    let mock = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
    mock.create_topic("orders", 1, 1).expect("create topic");
    let brokers = mock.bootstrap_servers();
    db.ok(&["migrate"]);
    db.sql(
        "INSERT INTO outbox_messages (id, topic, key, event_type, event_version, payload, occurred_at)
         SELECT gen_random_uuid(), 'orders', 'k' || (i % 3), 'order.placed', 1, convert_to('{}', 'UTF8'), now()
         FROM generate_series(1, 5) AS i",
    )
    .await;
    let file = ConfigFile::new("name = \"from-file\"\npoll_interval = \"50ms\"\nlease = \"3s\"\n");
    let (args, env) = (["relay", "--config", file.path()], [("KAFKA_BROKERS", brokers.as_str())]);
    common::relay_drains_then_stops_on_sigterm(&db, &args, &env, "from-file", async || {
        db.count("SELECT count(*) AS n FROM outbox_messages").await
    })
    .await;
    db.drop_db().await;
}

/// A configuration file that cannot be used stops the relay before it connects (exit code 2),
/// naming the file and what is wrong in it.
#[tokio::test]
async fn config_file_errors_exit_with_code_2_and_name_the_field() {
    let db = TestDb::new().await;
    let brokers = ("KAFKA_BROKERS", "127.0.0.1:9");
    let unknown = ConfigFile::new("name = \"x\"\npoll_interval_ms = 100\n");
    let out = db.run(&["relay", "--config", unknown.path()], &[brokers]);
    assert_usage_error(&out, &[unknown.path(), "line 2", "unknown field `poll_interval_ms`", "expected one of"]);
    let duration = ConfigFile::new("poll_interval = \"fast\"\n");
    let out = db.run(&["relay", "--config", duration.path()], &[brokers]);
    assert_usage_error(
        &out,
        &[duration.path(), "poll_interval", "invalid value: string \"fast\", expected a duration"],
    );
    let retry = ConfigFile::new("[retry]\nbase = \"1s\"\n");
    let out = db.run(&["relay", "--config", retry.path()], &[brokers]);
    assert_usage_error(&out, &["missing field `max`"]);
    // Well-formed but refused by the relay's checks, like the same value given as a flag.
    let invalid = ConfigFile::new("batch_size = 0\n");
    let out = db.run(&["relay", "--config", invalid.path()], &[brokers]);
    assert_usage_error(&out, &["batch_size 0 is out of range"]);
    let out = db.run(&["relay", "--config", "/nonexistent/relay.toml"], &[brokers]);
    assert_usage_error(&out, &["--config /nonexistent/relay.toml", "cannot read it"]);
    db.drop_db().await;
}

/// `outbox config print-default` needs no database and prints `RelayConfig::default()`.
#[test]
fn the_printed_default_config_parses_back_into_the_default() {
    let mut cmd = command("", &["config", "print-default"], &[]);
    cmd.env_remove("DATABASE_URL");
    let out = cmd.output().expect("run the outbox binary");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("utf-8 output");
    let parsed: outbox::relay::RelayConfig =
        toml::from_str(&text).unwrap_or_else(|e| panic!("the printed default does not parse ({e}): {text}"));
    assert_eq!(parsed, outbox::relay::RelayConfig::default(), "{text}");
}

/// Each relay flag's `[default: ...]` in `--help` is the library's default, so the two cannot
/// drift apart again.
#[test]
fn relay_help_shows_the_library_defaults() {
    let out = command("", &["relay", "--help"], &[]).output().expect("run the outbox binary");
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).expect("utf-8 help");
    // The help of each flag: from its `--flag` line to the next flag's.
    let flag_help = |flag: &str| -> String {
        let start = help.find(&format!("      {flag} ")).unwrap_or_else(|| panic!("{flag} is not in the help: {help}"));
        let rest = &help[start + flag.len()..];
        let end = rest.find("\n      --").or_else(|| rest.find("\n  -h")).unwrap_or(rest.len());
        rest[..end].to_string()
    };
    let d = outbox::relay::RelayConfig::default();
    let ms = |d: Duration| d.as_millis().to_string();
    let expected = [
        ("--name", d.name.clone()),
        ("--batch-size", d.batch_size.to_string()),
        ("--poll-interval-ms", ms(d.poll_interval)),
        ("--lease-ms", ms(d.lease)),
        ("--max-attempts", d.max_attempts.to_string()),
        ("--backoff-base-ms", ms(d.retry.base)),
        ("--backoff-max-ms", ms(d.retry.max)),
        ("--shutdown-timeout-ms", ms(d.shutdown_timeout)),
        ("--startup-timeout-secs", d.startup_timeout.as_secs().to_string()),
        ("--source", d.source.clone()),
    ];
    for (flag, default) in expected {
        let text = flag_help(flag);
        assert!(text.contains(&format!("[default: {default}]")), "{flag} should say [default: {default}]: {text}");
        assert_eq!(text.matches("[default: ").count(), 1, "{flag} has one default: {text}");
    }
    assert!(d.listen.is_none() && flag_help("--listen").contains("[default: true, false with --transaction-pooling"));
    assert!(
        d.after_send == outbox::relay::AfterSend::Delete
            && flag_help("--retention-secs").contains("[default: delete on send]")
    );
}
