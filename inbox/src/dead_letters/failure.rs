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
    /// The database connection failed, not the message: nothing is recorded on the dead letter
    /// and the replay returns this error.
    pub(super) lost: Option<diesel::result::Error>,
}

impl Failure {
    pub(super) fn new(reason: impl Into<Cow<'static, str>>, error: impl Into<String>) -> Self {
        Failure { reason: reason.into(), error: error.into(), abandoned: false, lost: None }
    }

    /// The connection failed under the replay (`e`): see [`Failure::lost`].
    pub(super) fn lost(e: diesel::result::Error) -> Self {
        Failure { lost: Some(e), ..Failure::new("", "") }
    }
}
