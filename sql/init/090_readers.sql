-- Read-only access to the warehouse for the login role kpi_reader (JupyterLab), where it exists: the chart's
-- Postgres creates it on first start; the embedded Postgres of the demo and tests has none. Runs as the
-- warehouse owner, so the default privileges cover every table the pipelines create later.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'kpi_reader') THEN
        GRANT USAGE ON SCHEMA raw, staging, prod, dqm TO kpi_reader;
        GRANT SELECT ON ALL TABLES IN SCHEMA raw, staging, prod, dqm TO kpi_reader;
        ALTER DEFAULT PRIVILEGES IN SCHEMA raw, staging, prod, dqm GRANT SELECT ON TABLES TO kpi_reader;
    END IF;
END
$$;
