-- Outbox: one row per event stored by `outbox::publish` in the caller's transaction.
CREATE TABLE outbox_messages (
    -- Claim order. Assigned at INSERT, so it is NOT commit order: the relay never uses a
    -- high-water mark on it (a lower seq may become visible later), it re-reads every unsent row.
    seq             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id              UUID        NOT NULL UNIQUE,        -- message id (UUIDv7), `ce_id` on the wire
    topic           TEXT        NOT NULL,
    key             TEXT,                               -- Kafka key / aggregate id; NULL = no key
    event_type      TEXT        NOT NULL,               -- `ce_type`
    event_version   INTEGER     NOT NULL,
    payload         BYTEA       NOT NULL,               -- the exact bytes the relay sends (never re-serialised)
    headers         JSONB       NOT NULL DEFAULT '{}'::jsonb, -- envelope metadata: correlation, causation, extra headers
    occurred_at     TIMESTAMPTZ NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    attempts        INTEGER     NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT '-infinity',
    last_error      TEXT,
    sent_at         TIMESTAMPTZ,                        -- set when kept after sending (retention mode)
    parked_at       TIMESTAMPTZ                         -- set after max attempts; a parked row holds its key back
);

-- Serves the relay's claim: "unsent rows in seq order". Partial, so sent rows kept for
-- retention and parked rows do not slow it down.
CREATE INDEX outbox_messages_pending ON outbox_messages (seq) WHERE sent_at IS NULL AND parked_at IS NULL;


-- Serves retention cleanup: "sent rows older than the retention period".
CREATE INDEX outbox_messages_sent ON outbox_messages (sent_at) WHERE sent_at IS NOT NULL;

-- Relay leadership with a fencing epoch. Every statement that marks rows checks (owner, epoch)
-- under FOR SHARE, so a relay that lost its lease while paused can never mark anything.
-- Plain rows, not session advisory locks: works behind PgBouncer in transaction mode.
CREATE TABLE outbox_relay_leases (
    name       TEXT        PRIMARY KEY,
    owner      UUID,
    epoch      BIGINT      NOT NULL DEFAULT 0,
    expires_at TIMESTAMPTZ NOT NULL DEFAULT '-infinity'
);

-- Immediate wake-up of relays in OTHER processes. Statement-level, so a multi-row publish sends
-- one notification. Created DISABLED: NOTIFY takes a global lock at commit, which serialises
-- concurrent commits (measured with pgbench, 8 writers, fsync on: ~1,800 -> ~900 tx/s).
-- Relays in the writer's own process are woken in-process for free; others poll
-- (RelayBuilder::poll_interval). Enable with outbox::set_notify(conn, true).
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox_messages', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER outbox_messages_notify AFTER INSERT ON outbox_messages
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
ALTER TABLE outbox_messages DISABLE TRIGGER outbox_messages_notify;

-- Serves the claim's per-key blocking probe: "an earlier unsent row of this key that already
-- failed" (only such rows can hold a key back). Tiny in normal operation.
CREATE INDEX outbox_messages_key_blocked ON outbox_messages (topic, key, seq) WHERE sent_at IS NULL AND attempts > 0;
