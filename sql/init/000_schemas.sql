-- Schemas of the warehouse. Idempotent: applied by `kpi db init` and by the chart's Postgres init.
CREATE SCHEMA IF NOT EXISTS raw;      -- everything exactly as received, as text, plus ingestion metadata
CREATE SCHEMA IF NOT EXISTS staging;  -- typed candidates of the current window
CREATE SCHEMA IF NOT EXISTS prod;     -- published, validated tables
CREATE SCHEMA IF NOT EXISTS dqm;      -- data-quality management: runs, rejects

-- Which versions of these files this database has seen (sha256 of sql/init/*.sql): `kpi crypto ingest|run`
-- apply the files first when the current ones are not listed (a fresh database, or an upgrade).
CREATE TABLE IF NOT EXISTS dqm.schema_versions (
    digest      text        PRIMARY KEY,
    files       text[]      NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
