-- Dead-letter replay (docs/dead-letters.md). An operator asks for a replay by setting
-- replay_requested_at (`outbox dead-letters replay`, `inbox::ops::request_replay`); a running
-- inbox of the row's consumer group picks the requested rows up, runs the handler on the stored
-- record and deletes the row in the handler's transaction, or records the new failure and clears
-- the request.
ALTER TABLE inbox_dead_letters ADD COLUMN replay_requested_at TIMESTAMPTZ;

-- Serves the inboxes' poll for requested rows of their group (small: requests are short-lived).
CREATE INDEX inbox_dead_letters_replay ON inbox_dead_letters (consumer_group, id)
    WHERE replay_requested_at IS NOT NULL;
