-- A row is "held" while an earlier row of its key is failing (waiting for a retry, or parked).
-- Held rows leave the pending index, so claims no longer walk a blocked key's backlog (a parked
-- key with 200,000 later rows cost 140-200 ms per claim). Rows are held by the relay's fenced
-- mark when a claim found them blocked, and released when the key's failing row is sent,
-- retried or discarded (and by a periodic sweep, for a hold that raced an operator's discard).
ALTER TABLE outbox_messages ADD COLUMN held BOOLEAN NOT NULL DEFAULT false;

DROP INDEX outbox_messages_pending;
CREATE INDEX outbox_messages_pending ON outbox_messages (seq)
    WHERE sent_at IS NULL AND parked_at IS NULL AND NOT held;

-- The per-key probes index a 64-bit hash of the key, not the key: a btree entry holding the key
-- itself fails above ~2.7 KB ("index row size exceeds btree maximum"), which made one long-keyed
-- failure roll back every mark. Equal hashes are confirmed with key = key.
DROP INDEX outbox_messages_key_blocked;
CREATE INDEX outbox_messages_key_blocked ON outbox_messages (topic, hashtextextended(key, 0), seq)
    WHERE sent_at IS NULL AND attempts > 0;
CREATE INDEX outbox_messages_held ON outbox_messages (topic, hashtextextended(key, 0), seq) WHERE held;
