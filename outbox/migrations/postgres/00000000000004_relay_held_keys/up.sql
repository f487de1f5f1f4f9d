-- A row is "held" while an earlier row of its key is failing (waiting for a retry, or parked) or
-- held itself. Held rows leave the pending index, so claims no longer walk a blocked key's backlog
-- (a parked key with 200,000 later rows cost 140-200 ms per claim). The relay's fenced mark holds
-- the rows a claim found blocked; a key's held rows are released when its failing row is sent,
-- retried or discarded (and by a periodic sweep, for a hold that raced an operator's discard).
ALTER TABLE outbox_messages ADD COLUMN held BOOLEAN NOT NULL DEFAULT false;

DROP INDEX outbox_messages_pending;
CREATE INDEX outbox_messages_pending ON outbox_messages (seq)
    WHERE sent_at IS NULL AND parked_at IS NULL AND NOT held;

-- Serves the per-key probes ("an earlier row of this key is failing or held") and the release
-- of a key's held rows. It indexes a 64-bit hash of the key, not the key: a btree entry holding
-- the key itself fails above ~2.7 KB ("index row size exceeds btree maximum"), which made one
-- long-keyed failure roll back every mark. Equal hashes are confirmed with key = key.
DROP INDEX outbox_messages_key_blocked;
CREATE INDEX outbox_messages_key_blocked ON outbox_messages (topic, hashtextextended(key, 0), seq)
    WHERE sent_at IS NULL AND (attempts > 0 OR held);
