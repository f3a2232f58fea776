-- Churn scores delivered to the warehouse by the churn_scoring DAG (kpi.churn.delivery). Idempotent: applied
-- by `kpi db init` and by the chart's Postgres init; 090_readers.sql grants SELECT on it to kpi_reader.

-- One row per user of the user base per as-of date, written by the champion of that run: a rerun for the
-- same date and model changes nothing; a promotion rescores the latest date (model_version, scored_at move).
CREATE TABLE IF NOT EXISTS prod.churn_scores (
    as_of          date             NOT NULL,   -- features use data strictly before this date
    user_id        bigint           NOT NULL,   -- CUS_CUST_ID_BUY
    p_active_60d   double precision NOT NULL CHECK (p_active_60d >= 0 AND p_active_60d <= 1),
    model_name     text             NOT NULL,
    model_version  integer          NOT NULL,
    data_version   text             NOT NULL,   -- sha256 of the five source files that were scored
    features       jsonb            NOT NULL,   -- the model's input for this user, as scored (explanations)
    scored_at      timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (as_of, user_id)
);
-- the dashboard's search by customer id reads a user's latest row
CREATE INDEX IF NOT EXISTS churn_scores_user ON prod.churn_scores (user_id, as_of DESC);

-- One row per delivery run (as for the crypto pipeline's dq_runs): what was scored, by which version, and
-- how many rows the run inserted, updated and deleted.
CREATE TABLE IF NOT EXISTS dqm.churn_scoring_runs (
    run_id         text        PRIMARY KEY,
    as_of          date        NOT NULL,
    trigger        text        NOT NULL,   -- schedule | promotion | params
    model_name     text        NOT NULL,
    model_version  integer     NOT NULL,
    data_url       text        NOT NULL,
    data_version   text        NOT NULL,
    engine         text        NOT NULL,   -- pandas | spark
    users          bigint      NOT NULL,
    inserted       bigint      NOT NULL,
    updated        bigint      NOT NULL,
    deleted        bigint      NOT NULL,
    started_at     timestamptz NOT NULL,
    finished_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS churn_scoring_runs_as_of ON dqm.churn_scoring_runs (as_of);
