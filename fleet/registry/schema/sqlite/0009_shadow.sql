-- The shadow sections of candidates' aggregates (docs/PROTOCOL.md, Trials),
-- kept apart from agg_buckets: their requests are copies of live requests
-- that no client saw, so they are never served traffic. One row per (model,
-- candidate version, baseline version, device, step, start), merged at
-- ingest as agg_buckets are (steps 60 and 3600, and the fine step of
-- Options.FineStep), per device only: the rollout analysis reads devices.
-- latency is the candidate's histogram on the copies, baseline_latency the
-- serving version's on the same requests (paired); outputs is the merged
-- []protocol.OutputAgreement (counts and sums added, max_abs_diff the
-- largest), features the candidate's merged protocol.FeatureCounts.
CREATE TABLE shadow_buckets (
	model            TEXT   NOT NULL,
	version          TEXT   NOT NULL,
	baseline         TEXT   NOT NULL,
	device           TEXT   NOT NULL,
	step             INTEGER NOT NULL,
	start            INTEGER NOT NULL,
	records          INTEGER NOT NULL DEFAULT 0,
	requests         INTEGER NOT NULL DEFAULT 0,
	errors           INTEGER NOT NULL DEFAULT 0,
	dropped          INTEGER NOT NULL DEFAULT 0,
	latency          TEXT   NOT NULL DEFAULT '{}',
	baseline_latency TEXT   NOT NULL DEFAULT '{}',
	outputs          TEXT   NOT NULL DEFAULT '[]',
	features         TEXT   NOT NULL DEFAULT '[]',
	PRIMARY KEY (model, version, baseline, device, step, start)
) WITHOUT ROWID;
CREATE INDEX shadow_buckets_start ON shadow_buckets (step, start);
