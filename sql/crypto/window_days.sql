-- The window's days: raw rows per window day, counted independently of the stage (conservation), and the
-- latest extract holding each day (the source's current state of that day; older extracts' rows of the day
-- are superseded). One narrow scan and a hash aggregate.
SELECT raw.crypto_window_day(r.purchase_date_parsed, b.extract_date) AS window_date,
       max(r.batch_id) AS latest_batch_id,
       count(*) AS raw_rows
FROM raw.bt_crypto_transaction_history r
JOIN raw.crypto_ingest_batches b USING (batch_id)
WHERE (r.purchase_date_parsed BETWEEN %(window_start)s AND %(window_end)s
       OR b.extract_date BETWEEN %(window_start)s AND %(window_end)s)
  AND raw.crypto_window_day(r.purchase_date_parsed, b.extract_date) BETWEEN %(window_start)s AND %(window_end)s
GROUP BY 1
ORDER BY 1
