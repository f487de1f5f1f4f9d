-- Least-privilege PostgreSQL roles for the outbox and inbox (docs/roles.md explains each grant).
--
-- Part 2 of 2. Run as outbox_owner (the owner of the tables) after every `outbox migrate`:
--
--     outbox migrate && psql "$OWNER_URL" -v ON_ERROR_STOP=1 -f docs/grants.sql
--
-- Idempotent. Column lists are deliberate: a new migration that adds a column the SDK writes
-- comes with a new version of this file (the test tests/tests/least_privilege.rs runs every
-- component with exactly these grants).

-- Nothing for PUBLIC (tables start that way; this makes sure of it).
REVOKE ALL ON outbox_messages, outbox_relay_leases, outbox_schema_migrations,
              inbox_messages, inbox_offsets, inbox_dead_letters FROM PUBLIC;

-- `outbox::migrate` is a no-op when the schema is current and then only reads the applied
-- versions: every role may call it at start-up (only outbox_owner can apply a migration).
GRANT SELECT ON outbox_schema_migrations TO outbox_writer, outbox_relay, inbox_consumer, outbox_operator;

-- The application writer: `outbox::publish` / `publish_all` insert into outbox_messages in the
-- application's own transaction. Insert only, and only the columns an event has; it can read
-- no row (not even its own), and cannot mark, delete, or touch the relay's and inbox's tables.
-- (Its business tables are the application's to grant.)
GRANT INSERT (id, topic, key, event_type, event_version, payload, headers, occurred_at)
    ON outbox_messages TO outbox_writer;

-- The relay: claims unsent rows (SELECT), marks them sent or deletes them (the default
-- AfterSend::Delete, and the retention cleanup of AfterSend::Keep), records failures,
-- parks, holds and releases a key's rows (UPDATE of the delivery-state columns only: it can
-- never rewrite an event's topic, key or payload), and takes, renews and releases its lease.
GRANT SELECT, DELETE ON outbox_messages TO outbox_relay;
GRANT UPDATE (sent_at, last_error, attempts, next_attempt_at, parked_at, held) ON outbox_messages TO outbox_relay;
GRANT SELECT, INSERT, UPDATE ON outbox_relay_leases TO outbox_relay;

-- The consumer (inbox): dedup rows (insert; read back the inserted ids; delete old ones when
-- pruning), its stored positions (read on assignment, upsert on commit), and dead letters
-- (insert; read back, lock, and delete or record a failed attempt when replaying; delete past
-- their retention: docs/dead-letters.md). It cannot read the outbox, nor rewrite a dead
-- letter's record. A handler that publishes follow-up events also needs the writer's grant:
-- GRANT outbox_writer TO inbox_consumer.
GRANT SELECT, INSERT, DELETE ON inbox_messages TO inbox_consumer;
GRANT UPDATE (handled_at) ON inbox_messages TO inbox_consumer;
GRANT SELECT, INSERT, UPDATE ON inbox_offsets TO inbox_consumer;
GRANT SELECT, INSERT, DELETE ON inbox_dead_letters TO inbox_consumer;
GRANT UPDATE (reason, error, attempts, replay_requested_at) ON inbox_dead_letters TO inbox_consumer;

-- The operator (`outbox ops ...`, `outbox::ops`): status (reads the outbox, the lease and the
-- dead-letter count), lists, retries and discards parked messages (UPDATE of the retry columns,
-- DELETE of parked rows; releases the rows they held), lists, discards and requests replays of
-- dead letters (UPDATE of replay_requested_at only).
-- It cannot insert events, take the lease, or read the inbox's dedup rows and positions.
GRANT SELECT, DELETE ON outbox_messages TO outbox_operator;
GRANT UPDATE (parked_at, attempts, next_attempt_at, held) ON outbox_messages TO outbox_operator;
GRANT SELECT ON outbox_relay_leases TO outbox_operator;
GRANT SELECT, DELETE ON inbox_dead_letters TO outbox_operator;
GRANT UPDATE (replay_requested_at) ON inbox_dead_letters TO outbox_operator;
