-- data-waddle schema: customer, destination, booking and the load audit tables.
--
-- Run with:  psql -v ON_ERROR_STOP=1 -f travel.sql
-- Safe to run again on a loaded database: it only creates what is missing and never
-- drops or rewrites anything that holds data.
--
-- It also creates two NOLOGIN group roles (when the executing user may create roles) and
-- sets their privileges on these tables to exactly:
--   travel_loader  read, insert and update the pipeline's tables and the audit tables;
--                  read tables_version (its writes' triggers count them there);
--                  TEMP tables (for staging). No DELETE, TRUNCATE, DROP or CREATE.
--   travel_reader  read only (the export).
-- PUBLIC gets no table privilege: customer holds personal data. An administrator gives a
-- login user one group role: CREATE ROLE etl LOGIN PASSWORD '...'; GRANT travel_loader TO etl;

SET client_min_messages = warning;  -- quiet "already exists, skipping" on re-runs

BEGIN;

CREATE TABLE IF NOT EXISTS destination (
    destination_id  BIGINT PRIMARY KEY,
    destination     TEXT NOT NULL CHECK (btrim(destination) <> ''),
    country         TEXT NOT NULL CHECK (btrim(country) <> ''),
    popular_season  TEXT NOT NULL
        CONSTRAINT destination_popular_season_check
        CHECK (popular_season IN ('Spring', 'Summer', 'Autumn', 'Winter'))
);

CREATE TABLE IF NOT EXISTS customer (
    customer_id  BIGINT PRIMARY KEY,
    first_name   TEXT NOT NULL CHECK (btrim(first_name) <> ''),
    last_name    TEXT NOT NULL CHECK (btrim(last_name) <> ''),
    email        TEXT NOT NULL CONSTRAINT customer_email_lower_check CHECK (email = lower(email)),
    phone        TEXT,
    -- Deferrable so that one load may swap two customers' e-mails; checked at commit.
    CONSTRAINT customer_email_key UNIQUE (email) DEFERRABLE INITIALLY IMMEDIATE
);

CREATE TABLE IF NOT EXISTS booking (
    booking_id            BIGINT PRIMARY KEY,
    customer_id           BIGINT NOT NULL REFERENCES customer (customer_id),
    destination_id        BIGINT NOT NULL REFERENCES destination (destination_id),
    booking_date          DATE NOT NULL,
    number_of_passengers  INTEGER NOT NULL CONSTRAINT booking_passengers_check CHECK (number_of_passengers > 0),
    cost_per_passenger    NUMERIC(12, 2) NOT NULL CONSTRAINT booking_cost_check CHECK (cost_per_passenger >= 0),
    total_booking_value   NUMERIC(22, 2) NOT NULL,
    -- True where the loader imputed the value (missing in the source file).
    passengers_imputed    BOOLEAN NOT NULL DEFAULT false,
    cost_imputed          BOOLEAN NOT NULL DEFAULT false,
    CONSTRAINT booking_total_value_check
        CHECK (total_booking_value = cost_per_passenger * number_of_passengers)
);

-- The largest total value, the limit stage 3 checks in integer cents and the Lambda shares
-- (tests/test_schema.py checks the three agree). Added apart from CREATE TABLE so that a
-- database created before it gains it too; NOT VALID: rows stored earlier are not rechecked.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                   WHERE conrelid = 'booking'::regclass AND conname = 'booking_total_value_limit') THEN
        ALTER TABLE booking ADD CONSTRAINT booking_total_value_limit
            CHECK (total_booking_value <= 9999999999999999.99) NOT VALID;
    END IF;
END
$$;

CREATE INDEX IF NOT EXISTS booking_customer_id_idx ON booking (customer_id);
CREATE INDEX IF NOT EXISTS booking_destination_id_idx ON booking (destination_id);

-- One row per run of transform_load_csv_data.py that committed.
CREATE TABLE IF NOT EXISTS load_run (
    run_id        BIGSERIAL PRIMARY KEY,
    started_at    TIMESTAMPTZ NOT NULL,
    finished_at   TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    loaded_by     TEXT NOT NULL DEFAULT current_user,
    tool_version  TEXT NOT NULL,
    -- {"booking": {"path": ..., "bytes": ..., "sha256": ...}, ...}
    source_files  JSONB NOT NULL
);

-- Per run and table: what was read, loaded, repaired, imputed and rejected.
CREATE TABLE IF NOT EXISTS load_run_table (
    run_id          BIGINT NOT NULL REFERENCES load_run (run_id),
    table_name      TEXT NOT NULL CHECK (table_name IN ('customer', 'destination', 'booking')),
    rows_read       BIGINT NOT NULL CHECK (rows_read >= 0),
    rows_loaded     BIGINT NOT NULL CHECK (rows_loaded >= 0),
    -- loaded with a value rewritten by a cleansing rule (trimmed, lower-cased, ISO date...)
    rows_repaired   BIGINT NOT NULL CHECK (rows_repaired >= 0),
    rows_imputed    BIGINT NOT NULL CHECK (rows_imputed >= 0),
    rows_rejected   BIGINT NOT NULL CHECK (rows_rejected >= 0),
    rows_inserted   BIGINT NOT NULL CHECK (rows_inserted >= 0),
    rows_updated    BIGINT NOT NULL CHECK (rows_updated >= 0),
    PRIMARY KEY (run_id, table_name),
    CHECK (rows_read = rows_loaded + rows_rejected),
    CHECK (rows_inserted + rows_updated <= rows_loaded)
);

-- What lets a load skip its work. Every statement that writes destination, customer or
-- booking (a load, a hand edit, a TRUNCATE) adds one to tables_version.version, in the
-- writer's own transaction. A load records the version it left beside a digest of its input
-- (the files, the encoding, the rules' code) and of the rejects files it wrote; the next
-- load with the same input that finds the same version and the same rejects files has
-- nothing to change, and takes the counts of that run instead of cleansing again.
CREATE TABLE IF NOT EXISTS tables_version (
    one_row  BOOLEAN PRIMARY KEY DEFAULT true CHECK (one_row),
    version  BIGINT NOT NULL
);
INSERT INTO tables_version (version) VALUES (0) ON CONFLICT DO NOTHING;

-- The loader may not write tables_version (it could set the version back and make the next
-- load skip repairing its edits), yet its writes must count: the triggers' function runs as
-- the user who ran this file (SECURITY DEFINER). Its search_path is this schema, then
-- pg_temp, named last so that a TEMP table called tables_version cannot stand in for it.
DO $bump$
BEGIN
    EXECUTE format($function$
        CREATE OR REPLACE FUNCTION bump_tables_version() RETURNS trigger
            LANGUAGE plpgsql SECURITY DEFINER SET search_path = %I, pg_temp AS $body$
        BEGIN
            UPDATE tables_version SET version = version + 1;
            RETURN NULL;
        END
        $body$
    $function$, current_schema());
END
$bump$;
REVOKE ALL ON FUNCTION bump_tables_version() FROM PUBLIC;

DO $triggers$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['destination', 'customer', 'booking'] LOOP
        IF NOT EXISTS (SELECT FROM pg_trigger WHERE tgrelid = t::regclass AND tgname = t || '_written') THEN
            EXECUTE format('CREATE TRIGGER %I AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON %I '
                           'FOR EACH STATEMENT EXECUTE FUNCTION bump_tables_version()', t || '_written', t);
        END IF;
    END LOOP;
END
$triggers$;

-- Added with tables_version (ALTER, so that a database an earlier travel.sql built gains them).
ALTER TABLE load_run
    -- SHA-256 of the three files' SHA-256, the encoding and the code of the rules
    ADD COLUMN IF NOT EXISTS input_key TEXT,
    -- tables_version.version when the run committed
    ADD COLUMN IF NOT EXISTS tables_version BIGINT,
    -- {"customer": "<SHA-256 of customer_rejects.csv>", ...}
    ADD COLUMN IF NOT EXISTS rejects_files JSONB,
    -- the run whose counts this one took, nothing having changed since (NULL: it cleansed)
    ADD COLUMN IF NOT EXISTS reused_run BIGINT REFERENCES load_run (run_id);

-- ---------------------------------------------------------------------------------------
-- Least privilege. Object names below are fixed; nothing here is built from input.

-- Nobody may read or change these tables unless granted below: customer is personal data.
REVOKE ALL ON destination, customer, booking, load_run, load_run_table, tables_version FROM PUBLIC;
DO $public$
BEGIN
    EXECUTE format('REVOKE ALL ON SEQUENCE %s FROM PUBLIC', pg_get_serial_sequence('load_run', 'run_id'));
END
$public$;

SET client_min_messages = notice;  -- the NOTICE below is meant to be seen

-- The group roles are cluster-wide: create them once, from whichever database runs first.
DO $roles$
DECLARE
    may_create_roles boolean := (SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user);
    wanted text;
    skipped text[] := '{}';
BEGIN
    FOREACH wanted IN ARRAY ARRAY['travel_loader', 'travel_reader'] LOOP
        CONTINUE WHEN EXISTS (SELECT FROM pg_roles WHERE rolname = wanted);
        IF may_create_roles THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', wanted);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- created meanwhile by travel.sql running on another database
            END;
        ELSE
            skipped := skipped || wanted;
        END IF;
    END LOOP;
    IF NOT may_create_roles THEN
        RAISE NOTICE 'roles skipped: % may not create roles (no CREATEROLE).%', current_user,
            CASE WHEN cardinality(skipped) = 0
                THEN ' travel_loader and travel_reader exist and were given their privileges.'
                ELSE format(' %s not created and not granted; run travel.sql as an administrator to add them.',
                            array_to_string(skipped, ' and '))
            END;
    END IF;
END
$roles$;

-- Exactly these privileges, whatever an earlier version or a hand edit granted.
DO $grants$
DECLARE
    run_sequence text := pg_get_serial_sequence('load_run', 'run_id');
    database_owner oid := (SELECT datdba FROM pg_database WHERE datname = current_database());
    schema_owner oid := (SELECT nspowner FROM pg_namespace WHERE nspname = current_schema());
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'travel_loader') THEN
        REVOKE ALL ON destination, customer, booking, load_run, load_run_table, tables_version FROM travel_loader;
        GRANT SELECT, INSERT, UPDATE ON destination, customer, booking, load_run, load_run_table TO travel_loader;
        -- It reads tables_version; its writes fire the triggers, which count them there.
        GRANT SELECT ON tables_version TO travel_loader;
        EXECUTE format('REVOKE ALL ON SEQUENCE %s FROM travel_loader', run_sequence);
        EXECUTE format('GRANT USAGE ON SEQUENCE %s TO travel_loader', run_sequence);
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO travel_loader', current_schema());
        IF pg_has_role(current_user, database_owner, 'MEMBER') THEN
            -- Staging tables are TEMP; granted here in case PUBLIC's default TEMP is revoked.
            EXECUTE format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO travel_loader', current_database());
        END IF;
    END IF;
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'travel_reader') THEN
        REVOKE ALL ON destination, customer, booking, load_run, load_run_table, tables_version FROM travel_reader;
        GRANT SELECT ON destination, customer, booking, load_run, load_run_table TO travel_reader;
        EXECUTE format('REVOKE ALL ON SEQUENCE %s FROM travel_reader', run_sequence);
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO travel_reader', current_schema());
        IF pg_has_role(current_user, database_owner, 'MEMBER') THEN
            EXECUTE format('GRANT CONNECT ON DATABASE %I TO travel_reader', current_database());
        END IF;
    END IF;
    -- Before PostgreSQL 15 every user could create tables in public. Take that away, but
    -- keep it for the database owner, who may run this file again without being superuser.
    IF has_schema_privilege('public', current_schema(), 'CREATE')
       AND pg_has_role(current_user, schema_owner, 'MEMBER') THEN
        EXECUTE format('GRANT CREATE ON SCHEMA %I TO %s', current_schema(), database_owner::regrole);
        EXECUTE format('REVOKE CREATE ON SCHEMA %I FROM PUBLIC', current_schema());
    END IF;
END
$grants$;

COMMIT;
