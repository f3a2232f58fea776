-- Users scored earlier for this as-of date who are no longer in the user base: the date holds exactly the
-- users of the latest delivery. Returns the number of rows deleted.
WITH deleted AS (
    DELETE FROM prod.churn_scores s
    WHERE s.as_of = %(as_of)s
      AND NOT EXISTS (SELECT 1 FROM churn_scores_in i WHERE i.user_id = s.user_id)
    RETURNING 1
)
SELECT count(*) FROM deleted
