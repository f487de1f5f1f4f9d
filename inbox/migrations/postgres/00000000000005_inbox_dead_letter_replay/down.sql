DROP INDEX IF EXISTS inbox_dead_letters_replay;
ALTER TABLE inbox_dead_letters DROP COLUMN IF EXISTS replay_requested_at;
