-- Inbox dedup: one row per (consumer group, message id), inserted in the handler's transaction
-- with ON CONFLICT DO NOTHING, so a redelivered message is recognised without a select-then-insert race.
CREATE TABLE inbox_messages (
    consumer_group TEXT        NOT NULL,
    message_id     UUID        NOT NULL,
    topic          TEXT        NOT NULL,
    kafka_partition INTEGER    NOT NULL,
    kafka_offset   BIGINT      NOT NULL,
    handled_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, message_id)
);

-- Serves retention pruning: "dedup rows of a group older than the window", deleted in small batches.
CREATE INDEX inbox_messages_handled_at ON inbox_messages (consumer_group, handled_at);

-- Stored consumer position, written in the same transaction as the handler's effects.
-- On partition assignment the consumer seeks here; Kafka's committed offsets are only a hint.
CREATE TABLE inbox_offsets (
    consumer_group  TEXT        NOT NULL,
    topic           TEXT        NOT NULL,
    kafka_partition INTEGER     NOT NULL,
    next_offset     BIGINT      NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, kafka_partition)
);

-- Messages no handler may run on (hostile input) or that kept failing: visible and replayable.
CREATE TABLE inbox_dead_letters (
    id              BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consumer_group  TEXT        NOT NULL,
    message_id      UUID,                       -- NULL when the message had no valid id
    topic           TEXT        NOT NULL,
    kafka_partition INTEGER     NOT NULL,
    kafka_offset    BIGINT      NOT NULL,
    key             BYTEA,
    payload         BYTEA,
    headers         JSONB       NOT NULL DEFAULT '{}'::jsonb,
    reason          TEXT        NOT NULL,       -- machine-readable kind: unknown_type, handler_failed, ...
    error           TEXT        NOT NULL,       -- human-readable detail
    attempts        INTEGER     NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Serves listing and replay of one group's dead letters, newest first.
CREATE INDEX inbox_dead_letters_group ON inbox_dead_letters (consumer_group, created_at);
