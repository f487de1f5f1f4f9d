//! The rows the inbox writes for a message (its position, dedup and dead-letter rows), built the
//! same way by batch mode, one-message mode and the dead-letter path.

use outbox::Database;
use outbox::raw_headers::sanitize_text;
use rdkafka::message::{Message, OwnedMessage};
use uuid::Uuid;

use super::{Item, Processor};
use crate::store::{NewDeadLetter, NewDedup, NewPosition};

impl<C: Database> Processor<'_, C> {
    /// The partition's position after `msg`, with the identity of the log it is in.
    pub(super) fn position<'m>(&'m self, msg: &OwnedMessage) -> NewPosition<'m> {
        NewPosition {
            consumer_group: &self.shared.options.group,
            topic: self.topic,
            kafka_partition: self.partition,
            next_offset: msg.offset() + 1,
            cluster_id: self.shared.cluster_id.get().and_then(Option::as_deref),
            fingerprint: Some(crate::raw_headers::fingerprint(msg)),
            replace: self.flow.replace_pending(),
        }
    }

    pub(super) fn dedup_row<'m>(&'m self, id: Uuid, msg: &OwnedMessage) -> NewDedup<'m> {
        NewDedup {
            consumer_group: &self.shared.options.group,
            message_id: id,
            topic: self.topic,
            kafka_partition: self.partition,
            kafka_offset: msg.offset(),
        }
    }

    pub(super) fn dead_letter_row<'m>(
        &'m self,
        item: &'m Item<C>,
        reason: &'m str,
        error: &'m str,
        attempts: i32,
        (raw_headers, headers): (Vec<u8>, serde_json::Value),
    ) -> NewDeadLetter<'m> {
        NewDeadLetter {
            consumer_group: &self.shared.options.group,
            message_id: item.plan.id(),
            topic: self.topic,
            kafka_partition: self.partition,
            kafka_offset: item.msg.offset(),
            key: item.msg.key(),
            payload: item.msg.payload(),
            headers,
            raw_headers,
            reason,
            // Free of NUL and other control characters, whatever the record quoted into it.
            error: sanitize_text(error),
            attempts,
        }
    }
}
