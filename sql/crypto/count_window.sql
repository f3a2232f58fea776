-- Raw rows of the window [window_start, window_end], counted independently of the stage (conservation).
SELECT count(*)
FROM raw.bt_crypto_transaction_history r
JOIN raw.crypto_ingest_batches b USING (batch_id)
WHERE (r.purchase_date_parsed BETWEEN %(window_start)s AND %(window_end)s
       OR b.extract_date BETWEEN %(window_start)s AND %(window_end)s)
  AND raw.crypto_window_day(r.purchase_date_parsed, b.extract_date) BETWEEN %(window_start)s AND %(window_end)s
