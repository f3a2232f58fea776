-- Crypto validate-before-load tables. Plain Postgres (13+), idempotent: applied by `kpi db init`
-- and by the chart's Postgres init. Contract names: see ARCHITECTURE.md.

-- D/M/YYYY text -> DATE, NULL for anything that is not a real calendar date (never raises).
-- plpgsql rather than a SQL function: it runs per row in a generated column, where SQL functions are slow.
CREATE OR REPLACE FUNCTION raw.parse_dmy(txt text) RETURNS date
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    d int;
    m int;
    y int;
BEGIN
    IF txt !~ '^[0-9]{1,2}/[0-9]{1,2}/[0-9]{4}$' THEN
        RETURN NULL;
    END IF;
    d := split_part(txt, '/', 1)::int;
    m := split_part(txt, '/', 2)::int;
    y := split_part(txt, '/', 3)::int;
    IF m < 1 OR m > 12 OR y < 1000 OR d < 1 THEN
        RETURN NULL;
    END IF;
    IF d > extract(day FROM make_date(y, m, 1) + interval '1 month' - interval '1 day') THEN
        RETURN NULL;
    END IF;
    RETURN make_date(y, m, d);
END
$$;

-- The window day a raw row belongs to: its purchase date when usable, else its extract's day (so rows
-- with missing, impossible, too early or future dates are accounted for in the window of their file).
CREATE OR REPLACE FUNCTION raw.crypto_window_day(purchase_date_parsed date, extract_date date) RETURNS date
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE WHEN purchase_date_parsed >= DATE '2009-01-03' AND purchase_date_parsed <= extract_date
              THEN purchase_date_parsed ELSE extract_date END
$$;

-- One row per ingested file; content_sha256 makes a re-ingest of the same bytes detectable.
CREATE TABLE IF NOT EXISTS raw.crypto_ingest_batches (
    batch_id        bigserial PRIMARY KEY,
    source          text        NOT NULL,
    content_sha256  text        NOT NULL,
    extract_date    date        NOT NULL,   -- the upstream extract's day: window of rows with unusable dates
    header          text        NOT NULL,   -- the header line as received
    row_count       bigint      NOT NULL,
    malformed_rows  bigint      NOT NULL,   -- rows whose column count is wrong (kept whole in raw_line)
    ingested_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS crypto_ingest_batches_sha ON raw.crypto_ingest_batches (content_sha256);
CREATE INDEX IF NOT EXISTS crypto_ingest_batches_extract ON raw.crypto_ingest_batches (extract_date);

-- Every row exactly as received (text), plus ingestion metadata. Nothing is ever updated or deleted here.
CREATE TABLE IF NOT EXISTS raw.bt_crypto_transaction_history (
    raw_id          bigserial   PRIMARY KEY,
    batch_id        bigint      NOT NULL REFERENCES raw.crypto_ingest_batches (batch_id),
    source          text        NOT NULL,
    line_no         bigint      NOT NULL,   -- physical line of the file where the row starts (header = 1)
    ingested_at     timestamptz NOT NULL,
    site_id         text,
    user_id         text,
    purchase_date   text,
    crypto_type     text,
    purchase_price  text,
    purchase_units  text,
    raw_line        text,                   -- the whole line when its column count is wrong (fields NULL)
    purchase_date_parsed date GENERATED ALWAYS AS (raw.parse_dmy(purchase_date)) STORED
);
-- Each raw row typed ONCE, at ingest (stored generated columns: the text columns stay as received).
-- Every window that covers the row (five overlapping ones) then selects these instead of re-parsing the
-- text; the regex guards make a cast that would fail give NULL (the stage's rules name the problem).
ALTER TABLE raw.bt_crypto_transaction_history
    ADD COLUMN IF NOT EXISTS user_id_bigint bigint GENERATED ALWAYS AS (
        CASE WHEN user_id ~ '^[0-9]+$' AND length(user_id) <= 18 THEN user_id::bigint END) STORED,
    ADD COLUMN IF NOT EXISTS purchase_date_is_real boolean GENERATED ALWAYS AS (
        CASE WHEN purchase_date ~ '^[0-9]{1,2}/[0-9]{1,2}/[0-9]{4}$'
             THEN raw.parse_dmy(purchase_date) IS NOT NULL END) STORED,
    ADD COLUMN IF NOT EXISTS purchase_price_numeric numeric GENERATED ALWAYS AS (
        CASE WHEN purchase_price ~ '^-?[0-9]+(\.[0-9]+)?$' THEN purchase_price::numeric END) STORED,
    ADD COLUMN IF NOT EXISTS purchase_units_numeric numeric GENERATED ALWAYS AS (
        CASE WHEN purchase_units ~ '^-?[0-9]+(\.[0-9]+)?$' THEN purchase_units::numeric END) STORED;
-- Derived once at ingest too: significant decimals, price * units with exact numerics, and that product
-- as prod stores it. (A generated column cannot use another one, hence the repeated guarded casts.)
ALTER TABLE raw.bt_crypto_transaction_history
    ADD COLUMN IF NOT EXISTS purchase_price_scale int GENERATED ALWAYS AS (
        CASE WHEN purchase_price ~ '^-?[0-9]+(\.[0-9]+)?$' THEN scale(trim_scale(purchase_price::numeric)) END) STORED,
    ADD COLUMN IF NOT EXISTS purchase_units_scale int GENERATED ALWAYS AS (
        CASE WHEN purchase_units ~ '^-?[0-9]+(\.[0-9]+)?$' THEN scale(trim_scale(purchase_units::numeric)) END) STORED,
    ADD COLUMN IF NOT EXISTS purchase_value_exact numeric GENERATED ALWAYS AS (
        CASE WHEN purchase_price ~ '^-?[0-9]+(\.[0-9]+)?$' AND purchase_units ~ '^-?[0-9]+(\.[0-9]+)?$'
             THEN purchase_price::numeric * purchase_units::numeric END) STORED,
    -- NULL when the product does not fit prod's numeric(38, 16) (a rule rejects such rows)
    ADD COLUMN IF NOT EXISTS purchase_value_fitted numeric(38, 16) GENERATED ALWAYS AS (
        CASE WHEN purchase_price ~ '^-?[0-9]+(\.[0-9]+)?$' AND purchase_units ~ '^-?[0-9]+(\.[0-9]+)?$'
                  AND abs(purchase_price::numeric * purchase_units::numeric) < 1e21
             THEN (purchase_price::numeric * purchase_units::numeric)::numeric(38, 16) END) STORED;
CREATE INDEX IF NOT EXISTS bt_crypto_transaction_history_date
    ON raw.bt_crypto_transaction_history (purchase_date_parsed);
CREATE INDEX IF NOT EXISTS bt_crypto_transaction_history_batch
    ON raw.bt_crypto_transaction_history (batch_id);

-- Typed candidates of one run's window (rows of several runs may coexist, keyed by run_id).
CREATE UNLOGGED TABLE IF NOT EXISTS staging.bt_crypto_events_candidate (
    run_id               text    NOT NULL,
    raw_id               bigint  NOT NULL,
    batch_id             bigint  NOT NULL,
    line_no              bigint  NOT NULL,
    extract_date         date    NOT NULL,
    window_date          date    NOT NULL,
    status               text    NOT NULL CHECK (status IN ('valid', 'rejected', 'superseded')),
    superseded_by        text,   -- 'newer_extract' | 'newer_duplicate'
    reasons              text[]  NOT NULL DEFAULT '{}',
    raw_line             text,
    site_id              text,
    user_id_text         text,
    purchase_date_text   text,
    crypto_type          text,
    purchase_price_text  text,
    purchase_units_text  text,
    user_id              bigint,
    purchase_date        date,
    purchase_date_is_real boolean,
    purchase_price       numeric,
    purchase_units       numeric,
    purchase_price_scale int,
    purchase_units_scale int,
    purchase_value_exact numeric,
    purchase_value       numeric(38, 16)
    -- no index: every reader scans one run's rows once, and the insert of a 1M-row window stays cheap
);

CREATE TABLE IF NOT EXISTS prod.bt_crypto_events (
    site_id         text            NOT NULL,
    user_id         bigint          NOT NULL,
    purchase_date   date            NOT NULL,
    crypto_type     text            NOT NULL,
    purchase_price  numeric(24, 8)  NOT NULL,
    purchase_units  numeric(24, 8)  NOT NULL,
    purchase_value  numeric(38, 16) NOT NULL,
    is_active       boolean         NOT NULL DEFAULT true,
    raw_id          bigint          NOT NULL,   -- lineage: the raw row the current values came from
    last_run_id     text            NOT NULL,   -- the run that last changed this row
    created_at      timestamptz     NOT NULL DEFAULT now(),
    updated_at      timestamptz     NOT NULL DEFAULT now(),
    PRIMARY KEY (site_id, user_id, purchase_date, crypto_type)
);
CREATE INDEX IF NOT EXISTS bt_crypto_events_date ON prod.bt_crypto_events (purchase_date);

-- One row per rejected raw row (run-independent identity: raw_id). A rerun adds nothing; it only
-- refreshes last_run_id / last_seen_at.
CREATE TABLE IF NOT EXISTS dqm.bt_crypto_events_rejects (
    raw_id          bigint      PRIMARY KEY,
    reason          text        NOT NULL,   -- the first broken rule, in rule order
    reasons         text[]      NOT NULL,   -- every broken rule
    run_id          text        NOT NULL,   -- the run that first rejected the row
    logical_date    date        NOT NULL,
    last_run_id     text        NOT NULL,
    last_seen_at    timestamptz NOT NULL DEFAULT now(),
    batch_id        bigint      NOT NULL,
    source          text        NOT NULL,
    line_no         bigint      NOT NULL,
    site_id         text,
    user_id         text,
    purchase_date   text,
    crypto_type     text,
    purchase_price  text,
    purchase_units  text,
    raw_line        text,
    rejected_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS bt_crypto_events_rejects_reason ON dqm.bt_crypto_events_rejects (reason);
CREATE INDEX IF NOT EXISTS bt_crypto_events_rejects_date ON dqm.bt_crypto_events_rejects (logical_date);

-- One row per validation run, with its counts (written step by step, final at report).
CREATE TABLE IF NOT EXISTS dqm.dq_runs (
    run_id          text        PRIMARY KEY,
    pipeline        text        NOT NULL DEFAULT 'crypto_events',
    logical_date    date        NOT NULL,
    window_start    date        NOT NULL,
    window_end      date        NOT NULL,
    status          text        NOT NULL,   -- staged | validated | quarantined | published | gate_failed | failed
    gate            text,                   -- passed | failed
    raw_rows        bigint,
    staged          bigint,
    valid           bigint,
    quarantined     bigint,
    superseded      bigint,
    inserted        bigint,
    updated         bigint,
    unchanged       bigint,
    deactivated     bigint,
    reactivated     bigint,
    reject_share    double precision,
    reject_threshold double precision,
    top_reasons     jsonb,
    ge_success      boolean,
    ge_statistics   jsonb,
    ge_results_url  text,
    data_docs_url   text,
    error           text,
    started_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz
);
CREATE INDEX IF NOT EXISTS dq_runs_logical_date ON dqm.dq_runs (pipeline, logical_date);

-- What GE validates: the current (not superseded) staged rows of the run named by the session setting
-- kpi.run_id (set in the validation connection's options). A view, not a query asset, so that GE reads
-- its columns from the catalog instead of running the query in Python.
CREATE OR REPLACE VIEW staging.bt_crypto_events_validation AS
SELECT * FROM staging.bt_crypto_events_candidate
WHERE run_id = current_setting('kpi.run_id', true) AND status <> 'superseded';
