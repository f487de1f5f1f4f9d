-- Dead-letter replay (see migrations/postgres/00000000000005_inbox_dead_letter_replay).
ALTER TABLE inbox_dead_letters ADD COLUMN replay_requested_at INTEGER;
CREATE INDEX inbox_dead_letters_replay ON inbox_dead_letters (consumer_group, id)
    WHERE replay_requested_at IS NOT NULL;
