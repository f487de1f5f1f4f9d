DROP INDEX outbox_messages_key_blocked;
CREATE INDEX outbox_messages_key_blocked ON outbox_messages (topic, key, seq) WHERE sent_at IS NULL AND attempts > 0;
DROP INDEX outbox_messages_pending;
CREATE INDEX outbox_messages_pending ON outbox_messages (seq) WHERE sent_at IS NULL AND parked_at IS NULL;
ALTER TABLE outbox_messages DROP COLUMN held;
