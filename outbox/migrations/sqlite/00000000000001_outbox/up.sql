-- SQLite version of the outbox tables (see migrations/postgres for the commented original).
-- Times the relay computes with are INTEGER milliseconds since the Unix epoch; occurred_at is
-- the RFC 3339 text sent as `ce_time`; ids are hyphenated UUID text; headers are JSON text.
CREATE TABLE outbox_messages (
    -- AUTOINCREMENT: a seq is never reused after its row is deleted (the relay's in-flight
    -- window is a seq range).
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT    NOT NULL UNIQUE,
    topic           TEXT    NOT NULL,
    key             TEXT,
    event_type      TEXT    NOT NULL,
    event_version   INTEGER NOT NULL,
    payload         BLOB    NOT NULL,
    headers         TEXT    NOT NULL DEFAULT '{}',
    occurred_at     TEXT    NOT NULL,
    created_at      INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    sent_at         INTEGER,
    parked_at       INTEGER
);

-- The relay's claim: unsent rows in seq order.
CREATE INDEX outbox_messages_pending ON outbox_messages (seq) WHERE sent_at IS NULL AND parked_at IS NULL;
-- Retention cleanup.
CREATE INDEX outbox_messages_sent ON outbox_messages (sent_at) WHERE sent_at IS NOT NULL;
-- The claim's per-key blocking probe.
CREATE INDEX outbox_messages_key_blocked ON outbox_messages (topic, key, seq) WHERE sent_at IS NULL AND attempts > 0;

-- Relay leadership with a fencing epoch (one relay per database is the expected SQLite setup,
-- but the lease keeps a second one harmless).
CREATE TABLE outbox_relay_leases (
    name       TEXT    PRIMARY KEY,
    owner      TEXT,
    epoch      INTEGER NOT NULL DEFAULT 0,
    expires_at INTEGER NOT NULL DEFAULT 0
);
