//! Health handles for readiness and liveness endpoints.
//!
//! [`Relay::health`](crate::relay::Relay::health) returns a [`RelayHealth`]: a cheap, cloneable
//! handle on what the relay knows about itself (lease holder or standby, its last successful
//! round, the backlog as of its last read), updated by the relay as it runs; reading it costs a
//! mutex lock, no query. [`RelayHealth::check`] compares it with [`RelayThresholds`] and says
//! why it is unhealthy. The `inbox` crate has the same for the consumer (`Inbox::health`).
//! Defaults and what each check means: `docs/operations.md`.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use uuid::Uuid;

use crate::db::TopicBacklog;

/// Why a component is unhealthy: one or more reasons, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Unhealthy {
    /// Each failed check, e.g. "the oldest pending message is 75s old (threshold 60s)".
    pub reasons: Vec<String>,
}

impl std::fmt::Display for Unhealthy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reasons.join("; "))
    }
}

impl std::error::Error for Unhealthy {}

impl Unhealthy {
    /// `Ok(())` when `reasons` is empty.
    pub fn from_reasons(reasons: Vec<String>) -> Result<(), Unhealthy> {
        if reasons.is_empty() { Ok(()) } else { Err(Unhealthy { reasons }) }
    }
}

/// What a relay instance is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayRole {
    /// Built, or running but before its first successful round.
    Starting,
    /// Holds the lease and publishes, at this fencing epoch.
    Leader {
        /// The fencing epoch of the lease.
        epoch: i64,
    },
    /// Another instance of the same name holds the lease; this one takes over when it expires.
    Standby,
    /// `Relay::run` has returned.
    Stopped,
}

/// The backlog as the relay last read it (every `metrics_interval`, 10 s by default).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct BacklogSnapshot {
    /// Messages waiting to be published, all topics.
    pub pending: i64,
    /// Parked messages, all topics.
    pub parked: i64,
    /// Age of the oldest pending message when it was read; `None` when nothing was pending.
    pub oldest_pending_age: Option<Duration>,
    /// How long ago it was read.
    pub read: Duration,
}

/// What a [`RelayHealth`] handle reports. See [`RelayHealth::status`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RelayStatus {
    /// The relay name (shared by the instances of one outbox).
    pub name: String,
    /// This instance's lease owner id (as in `outbox status` and the `owner` label of
    /// `outbox_lease_held`).
    pub owner: Uuid,
    /// Leader, standby, starting or stopped.
    pub role: RelayRole,
    /// When the last successful round ended (a round that reached the database, checked the
    /// lease and, on the leader, had no failed delivery). `None` before the first one.
    pub last_success: Option<SystemTime>,
    /// How long ago that was.
    pub since_last_success: Option<Duration>,
    /// The backlog at the last read; `None` before the first read.
    pub backlog: Option<BacklogSnapshot>,
}

/// When a relay counts as unhealthy. See [`RelayHealth::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayThresholds {
    /// Unhealthy when the last successful round is older than this (the database is
    /// unreachable, the lease cannot be checked, the loop is stuck). Default 30 s. Broker
    /// outages are caught by `max_pending_age` instead: between retries the failed rows are not
    /// due, and those empty rounds succeed.
    pub max_since_success: Duration,
    /// Leader only: unhealthy when the oldest pending message was older than this at the last
    /// backlog read (the brokers are down, or the relay cannot keep up). Default 60 s.
    pub max_pending_age: Duration,
    /// Leader only: unhealthy while any message is parked. Default `false`.
    pub fail_on_parked: bool,
}

impl Default for RelayThresholds {
    fn default() -> Self {
        Self {
            max_since_success: Duration::from_secs(30),
            max_pending_age: Duration::from_secs(60),
            fail_on_parked: false,
        }
    }
}

impl RelayThresholds {
    /// Sets [`max_since_success`](Self::max_since_success).
    pub fn max_since_success(mut self, d: Duration) -> Self {
        self.max_since_success = d;
        self
    }

    /// Sets [`max_pending_age`](Self::max_pending_age).
    pub fn max_pending_age(mut self, d: Duration) -> Self {
        self.max_pending_age = d;
        self
    }

    /// Sets [`fail_on_parked`](Self::fail_on_parked).
    pub fn fail_on_parked(mut self, on: bool) -> Self {
        self.fail_on_parked = on;
        self
    }
}

/// A cheap, cloneable handle on a relay's health; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct RelayHealth(Arc<Mutex<State>>);

#[derive(Debug)]
struct State {
    name: String,
    owner: Uuid,
    role: RelayRole,
    last_success: Option<(Instant, SystemTime)>,
    backlog: Option<(Instant, i64, i64, Option<Duration>)>,
}

impl RelayHealth {
    pub(crate) fn new(name: &str, owner: Uuid) -> Self {
        let state =
            State { name: name.to_owned(), owner, role: RelayRole::Starting, last_success: None, backlog: None };
        Self(Arc::new(Mutex::new(state)))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update is a plain assignment: the state is consistent even after a panic.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the relay knows about itself right now.
    pub fn status(&self) -> RelayStatus {
        let s = self.lock();
        RelayStatus {
            name: s.name.clone(),
            owner: s.owner,
            role: s.role,
            last_success: s.last_success.map(|(_, at)| at),
            since_last_success: s.last_success.map(|(t, _)| t.elapsed()),
            backlog: s.backlog.map(|(t, pending, parked, oldest_pending_age)| BacklogSnapshot {
                pending,
                parked,
                oldest_pending_age,
                read: t.elapsed(),
            }),
        }
    }

    /// `Ok(())` when healthy, otherwise every reason it is not. A standby is healthy while its
    /// rounds succeed: the backlog is the leader's to publish (`outbox status --check` judges
    /// the outbox as a whole).
    pub fn check(&self, thresholds: &RelayThresholds) -> Result<(), Unhealthy> {
        let s = self.status();
        let mut reasons = Vec::new();
        match s.role {
            RelayRole::Stopped => reasons.push("the relay has stopped".to_owned()),
            RelayRole::Starting if s.last_success.is_none() => {
                reasons.push("the relay has not completed a round yet".to_owned())
            }
            _ => {}
        }
        if let Some(since) = s.since_last_success
            && since > thresholds.max_since_success
            && s.role != RelayRole::Stopped
        {
            reasons.push(format!(
                "no successful relay round for {} (threshold {})",
                secs(since),
                secs(thresholds.max_since_success)
            ));
        }
        if let (RelayRole::Leader { .. }, Some(b)) = (s.role, &s.backlog) {
            if let Some(age) = b.oldest_pending_age
                && age > thresholds.max_pending_age
            {
                reasons.push(format!(
                    "the oldest pending message is {} old (threshold {}), {} pending",
                    secs(age),
                    secs(thresholds.max_pending_age),
                    b.pending
                ));
            }
            if thresholds.fail_on_parked && b.parked > 0 {
                reasons.push(format!("{} parked message(s)", b.parked));
            }
        }
        Unhealthy::from_reasons(reasons)
    }

    pub(crate) fn set_role(&self, role: RelayRole) {
        self.lock().role = role;
    }

    pub(crate) fn succeeded(&self, role: RelayRole) -> SystemTime {
        let now = SystemTime::now();
        let mut s = self.lock();
        s.role = role;
        s.last_success = Some((Instant::now(), now));
        now
    }

    pub(crate) fn backlog(&self, topics: &[TopicBacklog]) {
        let pending = topics.iter().map(|t| t.pending).sum();
        let parked = topics.iter().map(|t| t.parked).sum();
        let oldest = topics
            .iter()
            .filter_map(|t| t.oldest_pending_secs)
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64)
            .max();
        self.lock().backlog = Some((Instant::now(), pending, parked, oldest));
    }
}

/// A duration in seconds with one decimal (`"2.5s"`), as the health reasons print it (shared
/// with the `inbox` crate, so both sides' reasons read alike).
pub fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// When the outbox as a whole counts as degraded: what `outbox status --check` applies to an
/// [`ops::status`](crate::ops::status) snapshot. See [`check_outbox`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutboxThresholds {
    /// Degraded when the oldest pending message is older than this. Default 60 s.
    pub max_pending_age: Duration,
    /// Degraded while any message is parked. Default `false`.
    pub fail_on_parked: bool,
    /// Degraded when no relay holds a live lease (none has run, or the last one stopped or
    /// died). Default `true`.
    pub require_lease: bool,
}

impl Default for OutboxThresholds {
    fn default() -> Self {
        Self { max_pending_age: Duration::from_secs(60), fail_on_parked: false, require_lease: true }
    }
}

impl OutboxThresholds {
    /// Sets [`max_pending_age`](Self::max_pending_age).
    pub fn max_pending_age(mut self, d: Duration) -> Self {
        self.max_pending_age = d;
        self
    }

    /// Sets [`fail_on_parked`](Self::fail_on_parked).
    pub fn fail_on_parked(mut self, on: bool) -> Self {
        self.fail_on_parked = on;
        self
    }

    /// Sets [`require_lease`](Self::require_lease).
    pub fn require_lease(mut self, on: bool) -> Self {
        self.require_lease = on;
        self
    }
}

/// `Ok(())` when the outbox `status` is within `thresholds`, otherwise every reason it is not.
pub fn check_outbox(status: &crate::ops::Status, thresholds: &OutboxThresholds) -> Result<(), Unhealthy> {
    let mut reasons = Vec::new();
    if let Some(age) = status.oldest_pending_age
        && age > thresholds.max_pending_age
    {
        reasons.push(format!(
            "the oldest pending message is {} old (threshold {}), {} pending",
            secs(age),
            secs(thresholds.max_pending_age),
            status.pending
        ));
    }
    if thresholds.fail_on_parked && status.parked > 0 {
        reasons.push(format!("{} parked message(s) (see `outbox parked list`)", status.parked));
    }
    if thresholds.require_lease {
        match &status.lease {
            None => reasons.push("no relay holds a live lease: none has run on this database".to_owned()),
            Some(l) if l.owner.is_none() || l.expires_in.is_none() => {
                reasons.push(format!("no relay holds a live lease (relay \"{}\" is stopped or dead)", l.name))
            }
            Some(_) => {}
        }
    }
    Unhealthy::from_reasons(reasons)
}
