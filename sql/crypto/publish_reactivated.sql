-- Keys that come back: inactive in prod, valid in this run (counted before the upsert re-activates them).
SELECT count(*)
FROM staging.bt_crypto_events_candidate s
JOIN prod.bt_crypto_events p USING (site_id, user_id, purchase_date, crypto_type)
WHERE s.run_id = %(run_id)s AND s.status = 'valid' AND NOT p.is_active
