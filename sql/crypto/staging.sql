-- Statements on staging.bt_crypto_events_candidate (kpi.crypto.steps). Unlogged, unindexed, keyed by run_id.

-- name: truncate
-- no other run is in flight: free every row at once (a DELETE of a 1M-row window took seconds)
TRUNCATE staging.bt_crypto_events_candidate

-- name: delete_all_but
-- another run is in flight: free the rows of every run but those
DELETE FROM staging.bt_crypto_events_candidate WHERE run_id <> ALL(%(keep)s::text[])

-- name: analyze
-- statistics for the publish joins (only the columns they filter and join on: a full ANALYZE of the wide
-- rows took 0.4 s for 1M rows)
ANALYZE staging.bt_crypto_events_candidate
    (run_id, status, superseded_by, site_id, user_id, purchase_date, crypto_type)
