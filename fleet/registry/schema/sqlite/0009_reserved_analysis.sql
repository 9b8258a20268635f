-- Placeholder for the analysis branch's 0009 (shadow buckets): the schema
-- numbers must be contiguous, and the phases branch's 0010 follows it. At
-- the merge this file is replaced by that branch's 0009.
SELECT 1;
