-- data-waddle schema: customer, destination, booking and the load audit tables.
--
-- Run with:  psql -v ON_ERROR_STOP=1 -f travel.sql
-- Safe to run again on a loaded database: it only creates what is missing and never
-- drops or rewrites anything that holds data.

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

COMMIT;
