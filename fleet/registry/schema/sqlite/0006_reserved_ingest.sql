-- A placeholder that keeps the schema versions contiguous on the webhooks
-- branch: 0006 belongs to the ingest branch. Delete this file when that
-- branch's 0006 is merged (two files numbered 0006 fail TestMigrations).
SELECT 1;
