DROP TRIGGER IF EXISTS outbox_messages_notify ON outbox_messages;
DROP FUNCTION IF EXISTS outbox_notify();
DROP TABLE IF EXISTS outbox_relay_leases;
DROP TABLE IF EXISTS outbox_messages;
