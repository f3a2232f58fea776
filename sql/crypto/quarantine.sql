-- Record the run's rejected rows with their original raw values. Identity is the raw row (run-independent):
-- a rerun, or the next overlapping window, only refreshes last_run_id / last_seen_at / the reasons.
-- The values come from staging, which holds raw's text with '' as NULL: a record's fields are never NULL in
-- raw (an empty field is ''), a malformed line's fields always are, so raw's exact values are restored here.
INSERT INTO dqm.bt_crypto_events_rejects AS j (
    raw_id, reason, reasons, run_id, logical_date, last_run_id, batch_id, source, line_no,
    site_id, user_id, purchase_date, crypto_type, purchase_price, purchase_units, raw_line)
SELECT s.raw_id, s.reasons[1], s.reasons, %(run_id)s, %(logical_date)s, %(run_id)s, s.batch_id, b.source, s.line_no,
       CASE WHEN s.raw_line IS NULL THEN coalesce(s.site_id, '') END,
       CASE WHEN s.raw_line IS NULL THEN coalesce(s.user_id_text, '') END,
       CASE WHEN s.raw_line IS NULL THEN coalesce(s.purchase_date_text, '') END,
       CASE WHEN s.raw_line IS NULL THEN coalesce(s.crypto_type, '') END,
       CASE WHEN s.raw_line IS NULL THEN coalesce(s.purchase_price_text, '') END,
       CASE WHEN s.raw_line IS NULL THEN coalesce(s.purchase_units_text, '') END,
       s.raw_line
FROM staging.bt_crypto_events_candidate s
JOIN raw.crypto_ingest_batches b ON b.batch_id = s.batch_id
WHERE s.run_id = %(run_id)s AND s.status = 'rejected'
ON CONFLICT (raw_id) DO UPDATE
   SET reason = EXCLUDED.reason, reasons = EXCLUDED.reasons, last_run_id = EXCLUDED.last_run_id,
       last_seen_at = now()
