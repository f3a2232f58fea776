-- The scores of one delivery, loaded with COPY before they are merged into prod.churn_scores (dropped at commit).
CREATE TEMP TABLE churn_scores_in (
    user_id        bigint           NOT NULL PRIMARY KEY,
    p_active_60d   double precision NOT NULL,
    features       jsonb            NOT NULL
) ON COMMIT DROP
