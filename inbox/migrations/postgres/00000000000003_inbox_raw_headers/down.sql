ALTER TABLE inbox_offsets DROP COLUMN IF EXISTS last_fingerprint, DROP COLUMN IF EXISTS cluster_id;
ALTER TABLE inbox_dead_letters DROP COLUMN IF EXISTS raw_headers;
