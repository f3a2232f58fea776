-- Keys of the window's extract days (days whose current extract is in raw) that the source no
-- longer has: deactivate them. A key is still at the source when any current row carries it (valid, rejected
-- for a non-key reason, or an older duplicate), so a quarantined update keeps the last good values.
UPDATE prod.bt_crypto_events p
   SET is_active = false, last_run_id = %(run_id)s, updated_at = now()
 WHERE p.is_active
   AND p.purchase_date = ANY(%(days)s::date[])
   AND NOT EXISTS (
       SELECT 1 FROM staging.bt_crypto_events_candidate s
        WHERE s.run_id = %(run_id)s
          AND s.superseded_by IS DISTINCT FROM 'newer_extract'
          AND s.site_id = p.site_id AND s.user_id = p.user_id
          AND s.purchase_date = p.purchase_date AND s.crypto_type = p.crypto_type)
