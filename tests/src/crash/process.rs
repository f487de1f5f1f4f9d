//! A child process of the crash suite: started with its log file, killed for real.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

/// A running writer, relay or consumer process. Dropped, it is killed (SIGKILL).
pub struct Proc {
    pub name: String,
    pub log: PathBuf,
    child: tokio::process::Child,
    pid: u32,
}

impl std::fmt::Debug for Proc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proc").field("name", &self.name).field("pid", &self.pid).finish()
    }
}

impl Proc {
    pub(crate) fn spawn(bin: &str, name: &str, log: PathBuf, envs: Vec<(&str, String)>) -> Proc {
        let out = std::fs::File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let err = out.try_clone().expect("log file handle");
        let mut cmd = tokio::process::Command::new(bin);
        cmd.envs(envs).stdin(Stdio::null()).stdout(out).stderr(err).kill_on_drop(true);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("start {bin}: {e}"));
        let pid = child.id().expect("a fresh child has a pid");
        Proc { name: name.to_owned(), log, child, pid }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The last lines of the process's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(25)..].join("\n")
    }

    /// Panics (with the log's tail) when the process has exited: a relay or consumer must
    /// survive every fault the test injects, and only the test may end it.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} (pid {}) exited on its own with {status}; log {}:\n{}",
                self.name,
                self.pid,
                self.log.display(),
                self.log_tail()
            );
        }
    }

    /// SIGKILL, then reaps the process. No cleanup runs in the child: a real crash.
    pub async fn kill(mut self) {
        self.assert_running();
        self.child.start_kill().expect("send SIGKILL");
        let _ = self.child.wait().await;
    }

    /// Sends a signal by name (`TERM`, `STOP`, `CONT`) with the `kill` command.
    pub fn signal(&mut self, name: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {} failed", self.pid);
    }

    /// Graceful stop: SIGTERM, then the process must exit successfully on its own.
    pub async fn stop(mut self) {
        self.assert_running();
        self.signal("TERM");
        self.wait_success(Duration::from_secs(60)).await;
    }

    /// Waits until the process exits; it must exit successfully within `timeout`.
    pub async fn wait_success(mut self, timeout: Duration) {
        let status: ExitStatus = match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status.expect("wait for child"),
            Err(_) => panic!("{} did not exit within {timeout:?}; log {}", self.name, self.log.display()),
        };
        assert!(
            status.success(),
            "{} exited with {status}; log {}:\n{}",
            self.name,
            self.log.display(),
            self.log_tail()
        );
    }
}
