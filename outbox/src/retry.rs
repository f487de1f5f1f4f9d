//! [`RetryPolicy`]: the one retry delay schedule of the relay, the inbox and every reconnect loop.
//!
//! A leaf module (it imports nothing of the crate): storage, relay and inbox all use it.
//!
//! The formula is [`RetryPolicy::delay`], a pure function of the attempt number, because the
//! relay stores each row's attempts in the table and needs "the delay for attempt n" without
//! state. Loops that retry in memory iterate the same formula with [`RetryPolicy::delays`],
//! which is a [`backon::Backoff`]; the policy itself is a [`backon::BackoffBuilder`], so it
//! plugs into backon's `Retryable` as well. backon's own `ExponentialBuilder` is not used for
//! the schedule: it has no stateless n-th delay, computes in `f32` (`base * 2^k` is not exact),
//! and its jitter adds up to 100 % *above* the delay, so jittered delays overshoot `max`.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with jitter, capped: the delay before retry `n` (counting from 1) is
/// `min(base * 2^(n-1), max)`, and with `jitter` a random delay between half and all of it
/// ("equal jitter": retries of many clients spread out, and no delay is shorter than half the
/// schedule or longer than `max`).
///
/// In a configuration file (TOML) both durations are required when the table is given, in
/// [humantime](https://docs.rs/humantime) form; `jitter` defaults to `true`:
///
/// ```toml
/// [retry]
/// base = "500ms"
/// max = "5m"
/// jitter = true
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// The delay before the first retry; doubled for each further attempt. Must be positive.
    #[serde(with = "humantime_serde")]
    pub base: Duration,
    /// The cap on every delay. At least `base`.
    #[serde(with = "humantime_serde")]
    pub max: Duration,
    /// Randomise each delay between half and all of it (default `true`).
    #[serde(default = "jitter_default")]
    pub jitter: bool,
}

fn jitter_default() -> bool {
    true
}

impl RetryPolicy {
    /// Delays from `base` doubling up to `max`, with jitter.
    pub const fn new(base: Duration, max: Duration) -> Self {
        RetryPolicy { base, max, jitter: true }
    }

    /// The same schedule without jitter: each delay is exactly `min(base * 2^(n-1), max)`.
    pub const fn without_jitter(self) -> Self {
        RetryPolicy { jitter: false, ..self }
    }

    /// Checks `0 < base <= max`; the error names `field` (e.g. `"relay: retry"`).
    pub fn validate(&self, field: &str) -> Result<(), String> {
        if self.base.is_zero() || self.base > self.max {
            return Err(format!("{field} needs 0 < base <= max, got base {:?} and max {:?}", self.base, self.max));
        }
        Ok(())
    }

    /// The delay before retry `attempt` (1 is the first retry; 0 is taken as 1).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self.base.saturating_mul(1u32 << attempt.saturating_sub(1).min(30));
        let d = exp.min(self.max);
        if !self.jitter {
            return d;
        }
        let half = d / 2;
        half + half.mul_f64(rand::rng().random::<f64>())
    }

    /// The delays of retries 1, 2, 3, ... (endless; the caller decides when to give up).
    pub fn delays(&self) -> Delays {
        Delays { policy: *self, attempt: 0 }
    }
}

impl backon::BackoffBuilder for RetryPolicy {
    type Backoff = Delays;

    fn build(self) -> Delays {
        self.delays()
    }
}

/// The delays of a [`RetryPolicy`], one per retry: an endless [`Iterator`] and so a
/// [`backon::Backoff`].
#[derive(Debug, Clone)]
pub struct Delays {
    policy: RetryPolicy,
    attempt: u32,
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.attempt = self.attempt.saturating_add(1);
        Some(self.policy.delay(self.attempt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_exponentially_with_jitter_and_cap() {
        let policy = RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(10));
        for attempt in 1..=20 {
            let expected = policy.base.saturating_mul(1 << (attempt - 1)).min(policy.max);
            for _ in 0..50 {
                let d = policy.delay(attempt);
                assert!(d >= expected / 2 && d <= expected, "attempt {attempt}: {d:?} vs {expected:?}");
            }
        }
        assert!(policy.delay(1000) <= policy.max);
        assert!(policy.delay(u32::MAX) <= policy.max);
    }

    #[test]
    fn without_jitter_the_schedule_is_exact() {
        let policy = RetryPolicy::new(Duration::from_millis(1), Duration::from_millis(50)).without_jitter();
        let got: Vec<u128> = policy.delays().take(8).map(|d| d.as_millis()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 32, 50, 50]);
        assert_eq!(policy.delay(0), policy.delay(1));
    }

    #[test]
    fn the_iterator_and_the_formula_agree() {
        let policy = RetryPolicy::new(Duration::from_millis(3), Duration::from_secs(1)).without_jitter();
        for (n, d) in policy.delays().take(40).enumerate() {
            assert_eq!(d, policy.delay(n as u32 + 1));
        }
        let via_backon = backon::BackoffBuilder::build(policy).take(3).collect::<Vec<_>>();
        assert_eq!(via_backon, [Duration::from_millis(3), Duration::from_millis(6), Duration::from_millis(12)]);
    }

    #[test]
    fn validate_names_the_field() {
        let bad = RetryPolicy::new(Duration::from_secs(2), Duration::from_secs(1));
        let e = bad.validate("relay: retry").unwrap_err();
        assert!(e.contains("relay: retry") && e.contains("base <= max"), "{e}");
        assert!(RetryPolicy::new(Duration::ZERO, Duration::from_secs(1)).validate("x").is_err());
        assert!(RetryPolicy::new(Duration::from_secs(1), Duration::from_secs(1)).validate("x").is_ok());
    }
}
