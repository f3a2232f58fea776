-- Crypto validate-before-load tables. Plain Postgres (13+), idempotent: applied by `kpi db init`
-- and by the chart's Postgres init. Contract names: see ARCHITECTURE.md.

-- D/M/YYYY text -> DATE, NULL for anything that is not a real calendar date (never raises). The ingest types
-- dates in Python (kpi.crypto.ingest); this is the SQL definition its tests compare it with, and a tool for
-- ad-hoc queries on raw.
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

-- One row per ingested file. The unique index on the content's sha256 makes two ingests of the same bytes
-- impossible (the second one fails on the index, even when both run at once) unless the later one is
-- deliberately `forced`.
CREATE TABLE IF NOT EXISTS raw.crypto_ingest_batches (
    batch_id        bigserial PRIMARY KEY,
    source          text        NOT NULL,
    content_sha256  text        NOT NULL,
    extract_date    date        NOT NULL,   -- the upstream extract's day: decides which extract of a day is current
    header          text        NOT NULL,   -- the header line as received
    row_count       bigint      NOT NULL,
    malformed_rows  bigint      NOT NULL,   -- rows whose column count is wrong (kept whole in raw_line)
    ingested_at     timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE raw.crypto_ingest_batches
    ADD COLUMN IF NOT EXISTS forced boolean NOT NULL DEFAULT false,  -- a deliberate re-ingest (--force)
    ADD COLUMN IF NOT EXISTS extract_date_source text,               -- option | file_name | ingest_date
    ADD COLUMN IF NOT EXISTS archived_url text;                      -- where the landing step moved the file
CREATE INDEX IF NOT EXISTS crypto_ingest_batches_sha ON raw.crypto_ingest_batches (content_sha256);
CREATE INDEX IF NOT EXISTS crypto_ingest_batches_extract ON raw.crypto_ingest_batches (extract_date);
-- databases from before the unique index may hold repeated content: the later copies count as forced
UPDATE raw.crypto_ingest_batches b SET forced = true
 WHERE NOT b.forced AND EXISTS (SELECT 1 FROM raw.crypto_ingest_batches o
                                 WHERE o.content_sha256 = b.content_sha256 AND o.batch_id < b.batch_id);
CREATE UNIQUE INDEX IF NOT EXISTS crypto_ingest_batches_sha_once
    ON raw.crypto_ingest_batches (content_sha256) WHERE NOT forced;

-- Every row exactly as received (text), plus where it came from. Nothing is ever updated or deleted here.
-- raw_id = batch_id * 2^32 + line_no: a row's identity is its file and line (no sequence, no index to
-- maintain per row; a row is found through its batch). The source URL and ingest time are the batch's.
-- The typed columns are filled by the ingest (kpi.crypto.ingest: string tests in Python, cross-checked by the
-- validation step's regular expressions on the text): the value, or NULL when the text does not have the
-- shape; a number with more than 20 significant integer digits or 20 decimals gets a stand-in that breaks
-- the same rules (the row is rejected anyway), so that no value, however long, can make the load fail.
CREATE TABLE IF NOT EXISTS raw.bt_crypto_transaction_history (
    raw_id          bigint      NOT NULL,
    batch_id        bigint      NOT NULL,
    line_no         bigint      NOT NULL,   -- physical line of the file (header = 1); one record per line
    site_id         text,
    user_id         text,
    purchase_date   text,
    crypto_type     text,
    purchase_price  text,
    purchase_units  text,
    raw_line        text,                   -- the whole line when it is not a record of the header's columns
    purchase_date_parsed date               -- D/M/YYYY as a date; NULL when it is no real calendar day
);
-- Upgrade from the first layout: per-row source and ingest time (the batch has them; writing them with every
-- row cost a quarter of the ingest), a sequence and a primary-key index on raw_id.
ALTER TABLE raw.bt_crypto_transaction_history
    DROP CONSTRAINT IF EXISTS bt_crypto_transaction_history_pkey,
    DROP CONSTRAINT IF EXISTS bt_crypto_transaction_history_batch_id_fkey,
    ALTER COLUMN raw_id DROP DEFAULT,
    DROP COLUMN IF EXISTS source,
    DROP COLUMN IF EXISTS ingested_at;
DROP SEQUENCE IF EXISTS raw.bt_crypto_transaction_history_raw_id_seq;
ALTER TABLE raw.bt_crypto_transaction_history
    ADD COLUMN IF NOT EXISTS user_id_bigint bigint,
    ADD COLUMN IF NOT EXISTS purchase_date_is_real boolean,   -- NULL: not D/M/YYYY; false: no such day
    ADD COLUMN IF NOT EXISTS purchase_price_numeric numeric,
    ADD COLUMN IF NOT EXISTS purchase_units_numeric numeric,
    ADD COLUMN IF NOT EXISTS purchase_price_scale int,         -- significant decimals of the text
    ADD COLUMN IF NOT EXISTS purchase_units_scale int;
-- Upgrade of a database whose typed columns were computed by Postgres at ingest (regex-guarded generated
-- columns; 4x slower): they become plain columns, values kept; the two products are rebuilt on the typed ones.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_attrdef d JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
                WHERE d.adrelid = 'raw.bt_crypto_transaction_history'::regclass
                  AND a.attname = 'purchase_value_exact' AND pg_get_expr(d.adbin, d.adrelid) LIKE '%~%') THEN
        ALTER TABLE raw.bt_crypto_transaction_history
            DROP COLUMN purchase_value_exact, DROP COLUMN purchase_value_fitted;
    END IF;
END
$$;
ALTER TABLE raw.bt_crypto_transaction_history
    ALTER COLUMN purchase_date_parsed DROP EXPRESSION IF EXISTS,
    ALTER COLUMN user_id_bigint DROP EXPRESSION IF EXISTS,
    ALTER COLUMN purchase_date_is_real DROP EXPRESSION IF EXISTS,
    ALTER COLUMN purchase_price_numeric DROP EXPRESSION IF EXISTS,
    ALTER COLUMN purchase_units_numeric DROP EXPRESSION IF EXISTS,
    ALTER COLUMN purchase_price_scale DROP EXPRESSION IF EXISTS,
    ALTER COLUMN purchase_units_scale DROP EXPRESSION IF EXISTS;
-- price x units with exact numerics, and that product as prod stores it (NULL when it does not fit)
ALTER TABLE raw.bt_crypto_transaction_history
    ADD COLUMN IF NOT EXISTS purchase_value_exact numeric
        GENERATED ALWAYS AS (purchase_price_numeric * purchase_units_numeric) STORED,
    ADD COLUMN IF NOT EXISTS purchase_value_fitted numeric(38, 16) GENERATED ALWAYS AS (
        CASE WHEN abs(purchase_price_numeric * purchase_units_numeric) < 1e21
             THEN (purchase_price_numeric * purchase_units_numeric)::numeric(38, 16) END) STORED;
-- Rows are found through their batch (raw.crypto_batch_days says which batches hold a window's days). A batch
-- is one contiguous stretch of the table, so a BRIN index finds it; a btree on batch_id, a per-row foreign key
-- check and the old index on the purchase date each cost more at ingest than they saved.
DROP INDEX IF EXISTS raw.bt_crypto_transaction_history_date;
DROP INDEX IF EXISTS raw.bt_crypto_transaction_history_batch;
CREATE INDEX IF NOT EXISTS bt_crypto_transaction_history_batch_brin
    ON raw.bt_crypto_transaction_history USING brin (batch_id);

-- Which window days each batch holds, counted by the ingest from the file: rows with a usable purchase date
-- (dated_rows: they make the batch a candidate for the day's current extract) and rows without one, which
-- belong to the batch's extract day (undated_rows). The stage checks its rows against these counts.
CREATE TABLE IF NOT EXISTS raw.crypto_batch_days (
    batch_id      bigint NOT NULL REFERENCES raw.crypto_ingest_batches (batch_id),
    window_date   date   NOT NULL,
    dated_rows    bigint NOT NULL,
    undated_rows  bigint NOT NULL,
    PRIMARY KEY (batch_id, window_date)
);
CREATE INDEX IF NOT EXISTS crypto_batch_days_date ON raw.crypto_batch_days (window_date);
-- batches ingested before this table existed are counted once from raw
INSERT INTO raw.crypto_batch_days (batch_id, window_date, dated_rows, undated_rows)
SELECT r.batch_id, raw.crypto_window_day(r.purchase_date_parsed, b.extract_date),
       count(*) FILTER (WHERE r.purchase_date_parsed BETWEEN DATE '2009-01-03' AND b.extract_date),
       count(*) FILTER (WHERE r.purchase_date_parsed IS NULL OR r.purchase_date_parsed < DATE '2009-01-03'
                           OR r.purchase_date_parsed > b.extract_date)
FROM raw.crypto_ingest_batches b
JOIN raw.bt_crypto_transaction_history r ON r.batch_id = b.batch_id
WHERE NOT EXISTS (SELECT 1 FROM raw.crypto_batch_days d WHERE d.batch_id = b.batch_id)
GROUP BY 1, 2;

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
    status          text        NOT NULL,   -- staging | staged | validated | quarantined | published | gate_failed | failed
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
-- What each step records beyond the counts (see kpi.crypto.runs): how the run is driven, its last step, the
-- reasons counted by the stage and by GE (publish compares them), the gate's reason, the deactivation guard's
-- counts, and who reaped an abandoned run and freed its staging rows.
ALTER TABLE dqm.dq_runs
    ADD COLUMN IF NOT EXISTS mode text,                  -- run (kpi crypto run, one process) | steps (a task per step)
    ADD COLUMN IF NOT EXISTS last_step text,
    ADD COLUMN IF NOT EXISTS last_step_at timestamptz,
    ADD COLUMN IF NOT EXISTS extract_days date[],        -- the window days some ingested extract holds
    ADD COLUMN IF NOT EXISTS stage_reasons jsonb,        -- rows per broken rule, from the staged rows
    ADD COLUMN IF NOT EXISTS validation text,            -- passed | failed
    ADD COLUMN IF NOT EXISTS validated_at timestamptz,
    ADD COLUMN IF NOT EXISTS ge_unexpected jsonb,        -- GE's unexpected rows per rule
    ADD COLUMN IF NOT EXISTS rejects_recorded bigint,    -- rows the quarantine step wrote to the rejects table
    ADD COLUMN IF NOT EXISTS published bigint,           -- rows published to prod (0 unless status = published)
    ADD COLUMN IF NOT EXISTS gate_reason text,           -- reject_share | deactivation_share
    ADD COLUMN IF NOT EXISTS active_keys bigint,         -- active prod keys of the window's extract days
    ADD COLUMN IF NOT EXISTS would_deactivate bigint,    -- keys the publish deactivated, or would have
    ADD COLUMN IF NOT EXISTS reaped_by text,             -- the run that found this one abandoned
    ADD COLUMN IF NOT EXISTS staging_freed_at timestamptz;

-- What GE validates: the current (not superseded) staged rows of the run named by the session setting
-- kpi.run_id (set in the validation connection's options). A view, not a query asset, so that GE reads
-- its columns from the catalog instead of running the query in Python.
CREATE OR REPLACE VIEW staging.bt_crypto_events_validation AS
SELECT * FROM staging.bt_crypto_events_candidate
WHERE run_id = current_setting('kpi.run_id', true) AND status <> 'superseded';
