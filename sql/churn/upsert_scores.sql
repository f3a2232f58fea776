-- Merge one delivery into prod.churn_scores for its as-of date. A row is touched only when its score, model,
-- data version or features differ: a rerun of the same date with the same model and data changes nothing
-- (scored_at included); a new champion rewrites every row of the date. Returns (inserted, updated).
WITH upserted AS (
    INSERT INTO prod.churn_scores AS s (
        as_of, user_id, p_active_60d, model_name, model_version, data_version, features, scored_at)
    SELECT %(as_of)s, user_id, p_active_60d, %(model_name)s, %(model_version)s, %(data_version)s, features,
           %(scored_at)s
    FROM churn_scores_in
    ON CONFLICT (as_of, user_id) DO UPDATE
       SET p_active_60d = EXCLUDED.p_active_60d,
           model_name = EXCLUDED.model_name,
           model_version = EXCLUDED.model_version,
           data_version = EXCLUDED.data_version,
           features = EXCLUDED.features,
           scored_at = EXCLUDED.scored_at
     WHERE (s.p_active_60d, s.model_name, s.model_version, s.data_version, s.features)
           IS DISTINCT FROM (EXCLUDED.p_active_60d, EXCLUDED.model_name, EXCLUDED.model_version,
                             EXCLUDED.data_version, EXCLUDED.features)
    RETURNING (xmax = 0) AS inserted
)
SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM upserted
