-- SQLite version of the inbox tables (see migrations/postgres for the commented original).
CREATE TABLE inbox_messages (
    consumer_group  TEXT    NOT NULL,
    message_id      TEXT    NOT NULL,
    topic           TEXT    NOT NULL,
    kafka_partition INTEGER NOT NULL,
    kafka_offset    INTEGER NOT NULL,
    handled_at      INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)),
    PRIMARY KEY (consumer_group, message_id)
) WITHOUT ROWID;

CREATE INDEX inbox_messages_handled_at ON inbox_messages (consumer_group, handled_at);

CREATE TABLE inbox_offsets (
    consumer_group  TEXT    NOT NULL,
    topic           TEXT    NOT NULL,
    kafka_partition INTEGER NOT NULL,
    next_offset     INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)),
    PRIMARY KEY (consumer_group, topic, kafka_partition)
) WITHOUT ROWID;

CREATE TABLE inbox_dead_letters (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    consumer_group  TEXT    NOT NULL,
    message_id      TEXT,
    topic           TEXT    NOT NULL,
    kafka_partition INTEGER NOT NULL,
    kafka_offset    INTEGER NOT NULL,
    key             BLOB,
    payload         BLOB,
    headers         TEXT    NOT NULL DEFAULT '{}',
    reason          TEXT    NOT NULL,
    error           TEXT    NOT NULL,
    attempts        INTEGER NOT NULL,
    created_at      INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER))
);

CREATE INDEX inbox_dead_letters_group ON inbox_dead_letters (consumer_group, created_at);
