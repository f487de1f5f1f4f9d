DROP TABLE IF EXISTS inbox_dead_letters;
DROP TABLE IF EXISTS inbox_offsets;
DROP TABLE IF EXISTS inbox_messages;
