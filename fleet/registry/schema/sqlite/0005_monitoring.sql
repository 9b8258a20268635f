-- Model traffic in time buckets, merged from the devices' aggregate records
-- as they arrive (docs/MONITORING.md). One row per (model, version, device,
-- step, start): step is the bucket's length in seconds (60: minute
-- buckets, 3600: hour buckets) and start its first second (unix time, a
-- multiple of step). device '' is the whole fleet's row, kept beside the
-- devices' rows at ingest so that a fleet query reads one row per bucket.
-- errors_by_code, latency and features are JSON: {"code": count},
-- {"bounds_micros": [...], "counts": [...], "sum_micros": n} and the merged
-- protocol.FeatureCounts list. records counts the aggregates merged in.
CREATE TABLE agg_buckets (
	model          TEXT   NOT NULL,
	version        TEXT   NOT NULL,
	device         TEXT   NOT NULL,
	step           INTEGER NOT NULL,
	start          INTEGER NOT NULL,
	records        INTEGER NOT NULL DEFAULT 0,
	requests       INTEGER NOT NULL DEFAULT 0,
	errors         INTEGER NOT NULL DEFAULT 0,
	stream_dropped INTEGER NOT NULL DEFAULT 0,
	errors_by_code TEXT   NOT NULL DEFAULT '{}',
	latency        TEXT   NOT NULL DEFAULT '{}',
	features       TEXT   NOT NULL DEFAULT '[]',
	PRIMARY KEY (model, version, device, step, start)
) WITHOUT ROWID;
CREATE INDEX agg_buckets_start ON agg_buckets (step, start);

-- Running totals per model version since it was first seen, never expired:
-- what the controller's /metrics exposes as counters (a counter must not go
-- down when old buckets expire). Same JSON columns as agg_buckets.
CREATE TABLE agg_totals (
	model          TEXT   NOT NULL,
	version        TEXT   NOT NULL,
	requests       INTEGER NOT NULL DEFAULT 0,
	errors         INTEGER NOT NULL DEFAULT 0,
	stream_dropped INTEGER NOT NULL DEFAULT 0,
	errors_by_code TEXT   NOT NULL DEFAULT '{}',
	latency        TEXT   NOT NULL DEFAULT '{}',
	PRIMARY KEY (model, version)
) WITHOUT ROWID;
