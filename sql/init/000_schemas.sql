-- Schemas of the warehouse. Idempotent: applied by `kpi db init` and by the chart's Postgres init.
CREATE SCHEMA IF NOT EXISTS raw;      -- everything exactly as received, as text, plus ingestion metadata
CREATE SCHEMA IF NOT EXISTS staging;  -- typed candidates of the current window
CREATE SCHEMA IF NOT EXISTS prod;     -- published, validated tables
CREATE SCHEMA IF NOT EXISTS dqm;      -- data-quality management: runs, rejects
