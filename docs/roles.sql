-- Least-privilege PostgreSQL roles for the outbox and inbox (docs/roles.md explains each grant).
--
-- Part 1 of 2. Run ONCE per database, before the first `outbox migrate`, as a role that may
-- create roles (a superuser or CREATEROLE) and grant on the schema:
--
--     psql "$ADMIN_URL" -v ON_ERROR_STOP=1 -f docs/roles.sql
--
-- Creates five NOLOGIN group roles. Give each service a login of its own that is a member
-- (CREATE ROLE orders_api LOGIN PASSWORD '...' IN ROLE outbox_writer), or let the group log in
-- (ALTER ROLE outbox_relay LOGIN PASSWORD '...'). Part 2, docs/grants.sql, is run by
-- outbox_owner after every migrate. Idempotent: running it again changes nothing.
--
-- The tables live in schema `public` here; for another schema, replace `public` below and put
-- that schema first on the roles' search_path (ALTER ROLE ... SET search_path = outbox, public).

DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['outbox_owner', 'outbox_writer', 'outbox_relay', 'inbox_consumer', 'outbox_operator']
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', r);
        END IF;
    END LOOP;
END
$$;

-- The schema owner: creates and upgrades the tables (`outbox::migrate`, `outbox migrate`) and
-- owns them, which also makes it the only role that can switch the NOTIFY trigger
-- (`outbox::set_notify`: ALTER TABLE). No other role can create anything in the schema.
GRANT USAGE, CREATE ON SCHEMA public TO outbox_owner;

-- Everyone else only looks tables up in the schema; what they may do with each table is in
-- docs/grants.sql.
GRANT USAGE ON SCHEMA public TO outbox_writer, outbox_relay, inbox_consumer, outbox_operator;

-- PostgreSQL 14 and older let every role create tables in `public`. PostgreSQL 15 no longer
-- does. On an older server, and if nothing else relies on it, close it:
-- REVOKE CREATE ON SCHEMA public FROM PUBLIC;
