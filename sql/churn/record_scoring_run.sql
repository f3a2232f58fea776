-- One row per delivery run; a retry of the same run id overwrites its record.
INSERT INTO dqm.churn_scoring_runs (
    run_id, as_of, trigger, model_name, model_version, data_url, data_version, engine, users, inserted,
    updated, deleted, started_at, finished_at)
VALUES (%(run_id)s, %(as_of)s, %(trigger)s, %(model_name)s, %(model_version)s, %(data_url)s, %(data_version)s,
        %(engine)s, %(users)s, %(inserted)s, %(updated)s, %(deleted)s, %(started_at)s, now())
ON CONFLICT (run_id) DO UPDATE
   SET as_of = EXCLUDED.as_of, trigger = EXCLUDED.trigger, model_name = EXCLUDED.model_name,
       model_version = EXCLUDED.model_version, data_url = EXCLUDED.data_url,
       data_version = EXCLUDED.data_version, engine = EXCLUDED.engine, users = EXCLUDED.users,
       inserted = EXCLUDED.inserted, updated = EXCLUDED.updated, deleted = EXCLUDED.deleted,
       started_at = EXCLUDED.started_at, finished_at = now()
