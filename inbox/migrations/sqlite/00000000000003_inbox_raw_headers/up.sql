-- SQLite version of the PostgreSQL migration of the same name (see there for the meaning).
ALTER TABLE inbox_dead_letters ADD COLUMN raw_headers BLOB;
ALTER TABLE inbox_offsets ADD COLUMN cluster_id TEXT;
ALTER TABLE inbox_offsets ADD COLUMN last_fingerprint INTEGER;
