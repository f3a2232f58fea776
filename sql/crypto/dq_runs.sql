-- The run records: one row of dqm.dq_runs per run (kpi.crypto.runs). Every step writes its outcome and
-- when it last worked on the run (last_step, last_step_at), so a run nobody carries on can be told apart.

-- name: row
SELECT * FROM dqm.dq_runs WHERE run_id = %(run_id)s

-- name: row_for_update
SELECT * FROM dqm.dq_runs WHERE run_id = %(run_id)s FOR UPDATE

-- name: forget
-- a run staged again (a retry of the stage, a rerun with the same id) starts from a clean record
DELETE FROM dqm.dq_runs WHERE run_id = %(run_id)s

-- name: open
INSERT INTO dqm.dq_runs (run_id, pipeline, logical_date, window_start, window_end, status, mode, reject_threshold,
                         started_at, last_step, last_step_at)
VALUES (%(run_id)s, %(pipeline)s, %(logical_date)s, %(window_start)s, %(window_end)s, 'staging', %(mode)s,
        %(reject_threshold)s, now(), 'stage', now())

-- name: reap
-- Runs nobody carries on any more. A one-shot run (mode 'run') holds the pipeline's lock for its whole
-- life, and the caller holds that lock now: any other unfinished one-shot run died. A run driven step by
-- step (a task per step) holds nothing between steps: it is abandoned when no step touched it for
-- orphan_minutes minutes.
UPDATE dqm.dq_runs
   SET status = 'failed', finished_at = now(), reaped_by = %(run_id)s,
       error = format('abandoned: unfinished since its %%s step at %%s (%%s); reaped by run %%s, which freed its staging rows',
                      coalesce(last_step, 'stage'), coalesce(last_step_at, started_at),
                      CASE WHEN mode = 'run' THEN 'its process no longer holds the pipeline lock'
                           ELSE format('no step for more than %%s minutes', %(orphan_minutes)s) END,
                      %(run_id)s)
 WHERE pipeline = %(pipeline)s AND finished_at IS NULL AND run_id <> %(run_id)s
   AND (mode = 'run' OR coalesce(last_step_at, started_at) < now() - make_interval(mins => %(orphan_minutes)s))
RETURNING run_id, error

-- name: in_flight
SELECT run_id FROM dqm.dq_runs WHERE pipeline = %(pipeline)s AND finished_at IS NULL AND run_id <> %(run_id)s

-- name: staging_freed
UPDATE dqm.dq_runs SET staging_freed_at = now()
 WHERE pipeline = %(pipeline)s AND staging_freed_at IS NULL AND run_id <> %(run_id)s
   AND run_id <> ALL(%(keep)s::text[])

-- name: staged
UPDATE dqm.dq_runs
   SET status = 'staged', raw_rows = %(raw_rows)s, staged = %(staged)s, valid = %(valid)s,
       quarantined = %(rejected)s, superseded = %(superseded)s, stage_reasons = %(stage_reasons)s,
       top_reasons = %(top_reasons)s, extract_days = %(extract_days)s, last_step = 'stage', last_step_at = now()
 WHERE run_id = %(run_id)s

-- name: step_started
UPDATE dqm.dq_runs SET last_step = %(step)s, last_step_at = now() WHERE run_id = %(run_id)s

-- name: validated
UPDATE dqm.dq_runs
   SET validation = %(validation)s, validated_at = now(), ge_success = %(ge_success)s,
       ge_statistics = %(ge_statistics)s, ge_unexpected = %(ge_unexpected)s, ge_results_url = %(ge_results_url)s,
       data_docs_url = %(data_docs_url)s
 WHERE run_id = %(run_id)s

-- name: quarantined
UPDATE dqm.dq_runs SET rejects_recorded = %(rejects_recorded)s WHERE run_id = %(run_id)s

-- name: step_succeeded
-- a step of a run driven step by step succeeded. A retry of the step that failed clears that failure (the
-- error names its step, see kpi.crypto.runs.mark_failed); another step's failure stands: validate and
-- quarantine run side by side, and one's success must not hide the other's error. kpi crypto run records
-- its facts inside its publish transaction without this, after the publish's own record
UPDATE dqm.dq_runs r
   SET status = CASE WHEN f.other_failed THEN r.status ELSE %(status)s END,
       error = CASE WHEN f.other_failed THEN r.error END,
       finished_at = CASE WHEN f.other_failed THEN r.finished_at END,
       last_step = %(step)s, last_step_at = now()
  FROM (SELECT run_id, status = 'failed' AND coalesce(error, '') NOT LIKE %(step)s || ': %%' AS other_failed
          FROM dqm.dq_runs WHERE run_id = %(run_id)s) f
 WHERE r.run_id = f.run_id

-- name: gate_failed
UPDATE dqm.dq_runs
   SET status = 'gate_failed', gate = 'failed', gate_reason = %(gate_reason)s, reject_share = %(reject_share)s,
       active_keys = %(active_keys)s, would_deactivate = %(would_deactivate)s, published = 0, inserted = NULL,
       updated = NULL, unchanged = NULL, deactivated = NULL, reactivated = NULL, error = %(error)s,
       finished_at = now(), last_step = 'publish', last_step_at = now()
 WHERE run_id = %(run_id)s

-- name: published
UPDATE dqm.dq_runs
   SET status = 'published', gate = 'passed', gate_reason = NULL, reject_share = %(reject_share)s,
       published = %(published)s, inserted = %(inserted)s, updated = %(updated)s, unchanged = %(unchanged)s,
       deactivated = %(deactivated)s, reactivated = %(reactivated)s, active_keys = %(active_keys)s,
       would_deactivate = %(deactivated)s, error = NULL, finished_at = now(), last_step = 'publish',
       last_step_at = now()
 WHERE run_id = %(run_id)s

-- name: failed
-- a step failed: the run is failed with the error; a published or gate-failed run keeps what it did and
-- only gets the error (a later step, such as the report, failed)
UPDATE dqm.dq_runs
   SET status = CASE WHEN status IN ('published', 'gate_failed') THEN status ELSE 'failed' END,
       error = %(error)s, finished_at = coalesce(finished_at, now()), last_step = %(step)s, last_step_at = now()
 WHERE run_id = %(run_id)s

-- name: failed_if_unfinished
-- a task ended without its step recording anything (killed, timed out, its process lost)
UPDATE dqm.dq_runs
   SET status = 'failed', error = %(error)s, finished_at = now(), last_step = %(step)s, last_step_at = now()
 WHERE run_id = %(run_id)s AND finished_at IS NULL

-- name: stale_by
-- another run published an overlapping window after this run was staged: this run's stage is stale
SELECT run_id FROM dqm.dq_runs
 WHERE pipeline = %(pipeline)s AND run_id <> %(run_id)s AND status = 'published'
   AND window_start <= %(window_end)s AND window_end >= %(window_start)s AND finished_at > %(started_at)s
 LIMIT 1
