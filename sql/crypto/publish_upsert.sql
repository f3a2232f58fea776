-- Upsert the run's valid rows into prod; a row is touched only when its values (or is_active) change.
-- Returns (inserted, updated). No ORDER BY: the stage wrote staging in key order (its dedup sort), so the
-- primary key's btree fills page by page; on a 1M-row window the same rows in file order took 9.9 s, not 6.6 s.
WITH upserted AS (
    INSERT INTO prod.bt_crypto_events AS p (
        site_id, user_id, purchase_date, crypto_type, purchase_price, purchase_units, purchase_value,
        is_active, raw_id, last_run_id)
    SELECT site_id, user_id, purchase_date, crypto_type, purchase_price, purchase_units, purchase_value,
           true, raw_id, %(run_id)s
    FROM staging.bt_crypto_events_candidate
    WHERE run_id = %(run_id)s AND status = 'valid'
    ON CONFLICT (site_id, user_id, purchase_date, crypto_type) DO UPDATE
       SET purchase_price = EXCLUDED.purchase_price,
           purchase_units = EXCLUDED.purchase_units,
           purchase_value = EXCLUDED.purchase_value,
           is_active = true,
           raw_id = EXCLUDED.raw_id,
           last_run_id = EXCLUDED.last_run_id,
           updated_at = now()
     WHERE (p.purchase_price, p.purchase_units, p.purchase_value, p.is_active)
           IS DISTINCT FROM (EXCLUDED.purchase_price, EXCLUDED.purchase_units, EXCLUDED.purchase_value, true)
    RETURNING (xmax = 0) AS inserted
)
SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM upserted
