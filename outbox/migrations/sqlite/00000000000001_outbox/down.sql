DROP TABLE IF EXISTS outbox_relay_leases;
DROP TABLE IF EXISTS outbox_messages;
