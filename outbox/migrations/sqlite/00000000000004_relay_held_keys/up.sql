-- Held rows (see migrations/postgres/00000000000004_relay_held_keys): out of the pending index
-- while an earlier row of their key is failing or held. SQLite's btree has no entry size limit,
-- so the key probes index the key itself.
ALTER TABLE outbox_messages ADD COLUMN held INTEGER NOT NULL DEFAULT 0;
DROP INDEX outbox_messages_pending;
CREATE INDEX outbox_messages_pending ON outbox_messages (seq) WHERE sent_at IS NULL AND parked_at IS NULL AND held = 0;
DROP INDEX outbox_messages_key_blocked;
CREATE INDEX outbox_messages_key_blocked ON outbox_messages (topic, key, seq)
    WHERE sent_at IS NULL AND (attempts > 0 OR held = 1);
