ALTER TABLE inbox_offsets DROP COLUMN last_fingerprint;
ALTER TABLE inbox_offsets DROP COLUMN cluster_id;
ALTER TABLE inbox_dead_letters DROP COLUMN raw_headers;
