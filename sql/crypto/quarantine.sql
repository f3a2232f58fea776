-- Record the run's rejected rows with their original raw values. Identity is the raw row (run-independent):
-- a rerun, or the next overlapping window, only refreshes last_run_id / last_seen_at / the reasons.
INSERT INTO dqm.bt_crypto_events_rejects AS j (
    raw_id, reason, reasons, run_id, logical_date, last_run_id, batch_id, source, line_no,
    site_id, user_id, purchase_date, crypto_type, purchase_price, purchase_units, raw_line)
SELECT r.raw_id, s.reasons[1], s.reasons, %(run_id)s, %(logical_date)s, %(run_id)s, r.batch_id, r.source, r.line_no,
       r.site_id, r.user_id, r.purchase_date, r.crypto_type, r.purchase_price, r.purchase_units, r.raw_line
FROM staging.bt_crypto_events_candidate s
JOIN raw.bt_crypto_transaction_history r ON r.raw_id = s.raw_id
WHERE s.run_id = %(run_id)s AND s.status = 'rejected'
ON CONFLICT (raw_id) DO UPDATE
   SET reason = EXCLUDED.reason, reasons = EXCLUDED.reasons, last_run_id = EXCLUDED.last_run_id,
       last_seen_at = now()
