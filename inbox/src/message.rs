//! The metadata of the message being handled, as the handler's context, the trace spans and the
//! dead letters read it. A leaf: it names nothing else of the crate.

use outbox::Envelope;

/// Everything the inbox knows about the message being handled.
#[derive(Debug)]
pub(crate) struct MessageMeta<'a> {
    pub group: &'a str,
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub envelope: &'a Envelope,
    pub attempt: u32,
}
