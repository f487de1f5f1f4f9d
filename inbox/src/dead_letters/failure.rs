//! Why a replay did not handle its dead letter: a reason and error to record on it, or (`lost`)
//! a database connection that failed under the replay, which leaves the dead letter as it was.
//! Its own module because both the replay and the record reconstruction produce it.

use std::borrow::Cow;

/// Why a replay did not handle its message.
pub(super) struct Failure {
    /// The dead-letter reason: one of the handler's, or the classification's (whose envelope
    /// reasons, e.g. `missing_type`, are built from the header name).
    pub(super) reason: Cow<'static, str>,
    pub(super) error: String,
    /// The handler was abandoned mid-call (timeout): its connection is dropped, not reused.
    pub(super) abandoned: bool,
    /// The database connection failed (it no longer answers), not the message: nothing is
    /// recorded on the dead letter (up to `max_attempts` times in a row) and the replay returns
    /// this error.
    pub(super) lost: Option<diesel::result::Error>,
}

impl Failure {
    pub(super) fn new(reason: impl Into<Cow<'static, str>>, error: impl Into<String>) -> Self {
        Failure { reason: reason.into(), error: error.into(), abandoned: false, lost: None }
    }

    /// A statement of the replay failed with `e`: a lost connection (see [`Failure::lost`]) when
    /// the connection no longer answers, else a failure recorded on the dead letter.
    pub(super) fn database(e: diesel::result::Error) -> Self {
        if crate::process::connection_lost(&e) {
            Failure { lost: Some(e), ..Failure::new("", "") }
        } else {
            Failure::new("handler_failed", format!("the database failed: {e}"))
        }
    }
}
