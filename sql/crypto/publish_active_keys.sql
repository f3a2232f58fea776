-- Active prod keys of the window's extract days: what the deactivation guard compares a publish's
-- deactivations with.
SELECT count(*) FROM prod.bt_crypto_events WHERE is_active AND purchase_date = ANY(%(days)s::date[])
