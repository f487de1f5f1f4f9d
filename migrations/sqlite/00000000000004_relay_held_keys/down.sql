DROP INDEX outbox_messages_held;
DROP INDEX outbox_messages_pending;
CREATE INDEX outbox_messages_pending ON outbox_messages (seq) WHERE sent_at IS NULL AND parked_at IS NULL;
ALTER TABLE outbox_messages DROP COLUMN held;
