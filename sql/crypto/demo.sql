-- The demo's closing summary (kpi.crypto.demo).

-- name: totals
-- active and all keys of prod, rows in the reject table
SELECT (SELECT count(*) FILTER (WHERE is_active) FROM prod.bt_crypto_events) AS active,
       (SELECT count(*) FROM prod.bt_crypto_events) AS keys,
       (SELECT count(*) FROM dqm.bt_crypto_events_rejects) AS rejects
