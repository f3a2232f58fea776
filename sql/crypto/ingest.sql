-- The ingest's statements on the batch tables (kpi.crypto.ingest); the rows themselves arrive by COPY.

-- name: previous
-- the first batch that holds these bytes: a repeat is reported as its duplicate before anything is copied
SELECT batch_id FROM raw.crypto_ingest_batches WHERE content_sha256 = %(sha)s ORDER BY batch_id LIMIT 1

-- name: open_batch
-- a unique index on content_sha256 (forced copies excepted) makes a concurrent ingest of the same bytes fail here
INSERT INTO raw.crypto_ingest_batches (source, content_sha256, extract_date, extract_date_source, header,
                                       row_count, malformed_rows, ingested_at, forced, archived_url)
VALUES (%(source)s, %(sha)s, %(extract_date)s, %(extract_date_source)s, %(header)s, 0, 0, %(ingested_at)s,
        %(forced)s, %(archived_url)s)
RETURNING batch_id

-- name: batch_day
-- the rows the file holds per window day, counted while they were copied: the stage's conservation check
INSERT INTO raw.crypto_batch_days (batch_id, window_date, dated_rows, undated_rows)
VALUES (%(batch_id)s, %(window_date)s, %(dated_rows)s, %(undated_rows)s)

-- name: close_batch
UPDATE raw.crypto_ingest_batches SET row_count = %(rows)s, malformed_rows = %(malformed)s
 WHERE batch_id = %(batch_id)s
