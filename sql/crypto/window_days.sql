-- The window's days, from what the ingest counted per batch (raw.crypto_batch_days), not from raw itself:
-- per day, the rows raw holds for it (the stage must stage exactly these), the day's current extract (the
-- batch with the latest extract date, then the latest batch, among those holding rows *dated* that day: rows
-- without a usable date never make a file the source of a day) with its extract date, and every batch holding
-- rows of the day.
SELECT d.window_date,
       (array_agg(d.batch_id ORDER BY b.extract_date DESC, d.batch_id DESC) FILTER (WHERE d.dated_rows > 0))[1]
           AS current_batch_id,
       max(b.extract_date) FILTER (WHERE d.dated_rows > 0) AS current_extract_date,
       sum(d.dated_rows + d.undated_rows)::bigint AS raw_rows,
       array_agg(d.batch_id) AS batch_ids
FROM raw.crypto_batch_days d
JOIN raw.crypto_ingest_batches b USING (batch_id)
WHERE d.window_date BETWEEN %(window_start)s AND %(window_end)s
GROUP BY d.window_date
ORDER BY d.window_date
