-- A device's aggregate records, one row each, as the device sent them
-- (docs/MONITORING.md): the device's minute (and fine) buckets are read
-- from here, merged at query time, instead of being written as agg_buckets
-- rows at ingest. The row is also the record's de-duplication: a device
-- sends a record (device, epoch, seq) with one content, so a copy has the
-- same model, version and start and meets the same key; aggregates get no
-- telemetry row. start is the aggregate's Start (unix seconds). Device
-- minute rows of agg_buckets written before this version are still read,
-- until retention removes them.
CREATE TABLE agg_records (
	model   TEXT    NOT NULL,
	version TEXT    NOT NULL,
	device  TEXT    NOT NULL,
	start   INTEGER NOT NULL,
	epoch   INTEGER NOT NULL,
	seq     INTEGER NOT NULL,
	body    BLOB    NOT NULL,
	PRIMARY KEY (model, version, device, start, epoch, seq)
) WITHOUT ROWID;
-- Retention deletes by start (Prune).
CREATE INDEX agg_records_start ON agg_records (start);
