-- Dead letters keep the record's headers losslessly: Kafka header keys and values are bytes
-- (keys need not be UTF-8, values may hold 0x00, which text and jsonb refuse). Encoding, format 1:
-- 0x01, then per header u32be key length, key, u32be value length (0xFFFFFFFF: no value), value
-- (outbox::raw_headers). `headers` stays as an escaped display form; NULL raw_headers: a row
-- written before this migration.
ALTER TABLE inbox_dead_letters ADD COLUMN raw_headers BYTEA;

-- What a stored position is a position in. cluster_id: the Kafka cluster id the position was
-- read from (NULL: unknown, or a row written before this migration). last_fingerprint: a hash
-- of the record at next_offset - 1 (key, payload, raw headers), checked against the log on
-- assignment; a different record there means a different log (topic recreated, new cluster).
ALTER TABLE inbox_offsets ADD COLUMN cluster_id TEXT, ADD COLUMN last_fingerprint BIGINT;
