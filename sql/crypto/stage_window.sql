-- Stage one run's window: select its raw rows (typed at ingest by raw's generated columns),
-- decide which rows are current (latest extract per window day, latest row per key) and compute each
-- current row's broken rules from the rule list (kpi.crypto.rules, substituted below).
INSERT INTO staging.bt_crypto_events_candidate (
    run_id, raw_id, batch_id, line_no, extract_date, window_date, status, superseded_by, reasons, raw_line,
    site_id, user_id_text, purchase_date_text, crypto_type, purchase_price_text, purchase_units_text,
    user_id, purchase_date, purchase_date_is_real, purchase_price, purchase_units,
    purchase_price_scale, purchase_units_scale, purchase_value_exact, purchase_value)
WITH windowed AS (
    -- a row belongs to the day it was bought; rows without a usable date belong to their extract's day
    SELECT r.raw_id, r.batch_id, r.line_no, b.extract_date, r.raw_line,
           raw.crypto_window_day(r.purchase_date_parsed, b.extract_date) AS window_date,
           NULLIF(r.site_id, '') AS site_id,
           NULLIF(r.user_id, '') AS user_id_text,
           NULLIF(r.purchase_date, '') AS purchase_date_text,
           NULLIF(r.crypto_type, '') AS crypto_type,
           NULLIF(r.purchase_price, '') AS purchase_price_text,
           NULLIF(r.purchase_units, '') AS purchase_units_text,
           r.purchase_date_parsed,
           -- typed once at ingest (generated columns of raw), not again in each window
           r.user_id_bigint AS user_id,
           r.purchase_date_parsed AS purchase_date,
           r.purchase_date_is_real,
           r.purchase_price_numeric AS purchase_price,
           r.purchase_units_numeric AS purchase_units
    FROM raw.bt_crypto_transaction_history r
    JOIN raw.crypto_ingest_batches b USING (batch_id)
    WHERE r.purchase_date_parsed BETWEEN %(window_start)s AND %(window_end)s
       OR b.extract_date BETWEEN %(window_start)s AND %(window_end)s
), typed AS (
    SELECT w.*
    FROM windowed w
    WHERE window_date BETWEEN %(window_start)s AND %(window_end)s
), current AS (
    SELECT t.*,
           scale(trim_scale(purchase_price)) AS purchase_price_scale,
           scale(trim_scale(purchase_units)) AS purchase_units_scale,
           purchase_price * purchase_units AS purchase_value_exact,
           -- the latest extract holding a window day is the source's current state of that day
           batch_id = max(batch_id) OVER (PARTITION BY window_date) AS is_current
    FROM typed t
), ranked AS (
    SELECT c.*,
           -- among current rows, the latest ingested row of a complete key wins
           row_number() OVER (
               -- user_id first: the sort behind this window then decides almost every comparison on one
               -- bigint (4x faster than starting with is_current and site_id; the partitions are the same)
               PARTITION BY user_id, purchase_date, site_id, crypto_type, is_current,
                            CASE WHEN site_id IS NULL OR user_id IS NULL OR purchase_date IS NULL
                                      OR crypto_type IS NULL THEN raw_id END
               ORDER BY batch_id DESC, line_no DESC) AS key_rank
    FROM current c
), checked AS (
    SELECT r.*,
           CASE WHEN abs(purchase_value_exact) < 1e21
                THEN purchase_value_exact::numeric(38, 16) END AS purchase_value
    FROM ranked r
)
SELECT %(run_id)s, raw_id, batch_id, line_no, extract_date, window_date,
       CASE WHEN NOT is_current OR key_rank > 1 THEN 'superseded'
            WHEN cardinality(reasons) > 0 THEN 'rejected' ELSE 'valid' END,
       CASE WHEN NOT is_current THEN 'newer_extract' WHEN key_rank > 1 THEN 'newer_duplicate' END,
       CASE WHEN is_current AND key_rank = 1 THEN reasons ELSE '{}'::text[] END,
       raw_line, site_id, user_id_text, purchase_date_text, crypto_type, purchase_price_text,
       purchase_units_text, user_id, purchase_date, purchase_date_is_real, purchase_price, purchase_units,
       purchase_price_scale, purchase_units_scale, purchase_value_exact, purchase_value
FROM (SELECT c.*, /*REASONS*/ AS reasons FROM checked c) AS v
