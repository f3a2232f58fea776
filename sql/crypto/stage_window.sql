-- Stage one run's window: select its raw rows (typed once, at ingest), decide which
-- rows are current and compute each current row's broken rules from the rule list (kpi.crypto.rules,
-- substituted below).
-- * Raw rows are read through the batches that hold the window's days (a BRIN index on batch_id), and each
--   belongs to the window day of its usable purchase date, else to its extract's day.
-- * A day's current extract (window_days.sql: latest extract date, then latest batch, among the batches
--   holding rows dated that day) is the source's current state of the day; rows of other batches dated that
--   day are superseded ('newer_extract'). A row without a usable date belongs to its file's extract day
--   without taking that day over: it is rejected there, unless a newer extract holds that day (then it is
--   superseded like the rest of its file's content of the day: a re-sent day repeats its bad rows).
-- * Among current rows, the latest ingested row of a complete key wins (highest batch, then highest line);
--   the others are superseded ('newer_duplicate'). This is the statement's one sort, and the rows leave it
--   in key order, so staging is written in the order the publish upsert wants them.
-- * The statement returns the staged rows' counts (see the end).
-- * Each "OFFSET 0" keeps its subquery from being flattened into the outer query, which would copy the
--   expressions computed there (the reasons array) into every place that uses them and evaluate them more
--   than once per row.
WITH staged AS (
INSERT INTO staging.bt_crypto_events_candidate (
    run_id, raw_id, batch_id, line_no, extract_date, window_date, status, superseded_by, reasons, raw_line,
    site_id, user_id_text, purchase_date_text, crypto_type, purchase_price_text, purchase_units_text,
    user_id, purchase_date, purchase_date_is_real, purchase_price, purchase_units,
    purchase_price_scale, purchase_units_scale, purchase_value_exact, purchase_value)
SELECT %(run_id)s, raw_id, batch_id, line_no, extract_date, window_date,
       CASE WHEN superseded_by IS NOT NULL THEN 'superseded'
            WHEN cardinality(reasons) > 0 THEN 'rejected' ELSE 'valid' END,
       superseded_by, reasons, raw_line, site_id, user_id_text, purchase_date_text, crypto_type,
       purchase_price_text, purchase_units_text, user_id, purchase_date, purchase_date_is_real, purchase_price,
       purchase_units, purchase_price_scale, purchase_units_scale, purchase_value_exact, purchase_value
FROM (
    SELECT k.*,
           -- superseded rows are not up for validation: no reasons
           CASE WHEN superseded_by IS NULL THEN /*REASONS*/ ELSE '{}'::text[] END AS reasons
    FROM (
        SELECT ranked.*,
               CASE WHEN NOT is_current THEN 'newer_extract' WHEN key_rank > 1 THEN 'newer_duplicate' END
                   AS superseded_by
        FROM (
            SELECT t.*,
                   row_number() OVER (
                       -- user_id first: the sort then decides almost every comparison on one bigint (4x faster
                       -- than starting with a text column; the partitions are the same)
                       PARTITION BY user_id, purchase_date, site_id, crypto_type, is_current,
                                    CASE WHEN site_id IS NULL OR user_id IS NULL OR purchase_date IS NULL
                                              OR crypto_type IS NULL THEN raw_id END
                       ORDER BY batch_id DESC, line_no DESC) AS key_rank
            FROM (
                -- a row belongs to the day it was bought; rows without a usable date belong to their
                -- extract's day
                SELECT r.raw_id, r.batch_id, r.line_no, b.extract_date, r.raw_line, d.window_date,
                       CASE WHEN r.purchase_date_parsed BETWEEN DATE '2009-01-03' AND b.extract_date
                            THEN r.batch_id = d.current_batch_id
                            ELSE d.current_batch_id IS NULL
                                 OR (d.current_extract_date, d.current_batch_id) <= (b.extract_date, r.batch_id)
                       END AS is_current,
                       NULLIF(r.site_id, '') AS site_id,
                       NULLIF(r.user_id, '') AS user_id_text,
                       NULLIF(r.purchase_date, '') AS purchase_date_text,
                       NULLIF(r.crypto_type, '') AS crypto_type,
                       NULLIF(r.purchase_price, '') AS purchase_price_text,
                       NULLIF(r.purchase_units, '') AS purchase_units_text,
                       -- typed once at ingest (generated columns of raw), not again in each window
                       r.user_id_bigint AS user_id,
                       r.purchase_date_parsed AS purchase_date,
                       r.purchase_date_is_real,
                       r.purchase_price_numeric AS purchase_price,
                       r.purchase_units_numeric AS purchase_units,
                       r.purchase_price_scale,
                       r.purchase_units_scale,
                       r.purchase_value_exact,
                       r.purchase_value_fitted AS purchase_value
                FROM raw.bt_crypto_transaction_history r
                JOIN raw.crypto_ingest_batches b USING (batch_id)
                JOIN unnest(%(days)s::date[], %(current_batches)s::bigint[], %(current_extract_dates)s::date[])
                  AS d (window_date, current_batch_id, current_extract_date)
                  ON d.window_date = raw.crypto_window_day(r.purchase_date_parsed, b.extract_date)
                WHERE r.batch_id = ANY(%(batch_ids)s::bigint[])
                OFFSET 0
            ) t
        ) ranked
        OFFSET 0
    ) k
    OFFSET 0
) v
RETURNING window_date, status, reasons
)
-- the staged rows per window day, status and broken rules (only rejected rows have any), counted as they are
-- written: conservation per day, the status counts and the rows per reason (a second scan cost 0.3 s)
SELECT window_date, status, CASE WHEN status = 'rejected' THEN reasons END, count(*)
FROM staged
GROUP BY 1, 2, 3
