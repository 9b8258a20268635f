-- What the devices' health, audit and sample records become at ingest
-- (ingest.go; docs/MONITORING.md "What the controller keeps").

-- Health snapshots, one row per device and snapshot time (unix
-- nanoseconds). temperature_c is NULL when the device does not know it.
CREATE TABLE device_health (
	device          TEXT    NOT NULL,
	time            BIGINT  NOT NULL,
	cpu_percent     DOUBLE PRECISION NOT NULL,
	load1           DOUBLE PRECISION NOT NULL,
	mem_used_bytes  BIGINT  NOT NULL,
	mem_total_bytes BIGINT  NOT NULL,
	disk_used_bytes BIGINT  NOT NULL,
	disk_total_bytes BIGINT  NOT NULL,
	temperature_c   DOUBLE PRECISION,
	uptime_seconds  DOUBLE PRECISION NOT NULL,
	PRIMARY KEY (device, time)
);
CREATE INDEX device_health_time ON device_health (time);

-- The devices' audit records in arrival order: n numbers them per device
-- (1, 2, ...). chain_seq, chain_prev and chain_hash are the device's own
-- hash chain (agent/audit), 0 and '' for records outside it; chain is
-- 'ok', 'broken' (the record does not follow the one before it: kept and
-- flagged) or 'none' (not part of the chain), reason says why it broke.
CREATE TABLE device_audit (
	device     TEXT    NOT NULL,
	n          BIGINT  NOT NULL,
	time       BIGINT  NOT NULL,
	received   BIGINT  NOT NULL,
	model      TEXT    NOT NULL,
	version    TEXT    NOT NULL,
	actor      TEXT    NOT NULL,
	action     TEXT    NOT NULL,
	outcome    TEXT    NOT NULL,
	detail     TEXT    NOT NULL,
	chain_seq  BIGINT  NOT NULL,
	chain_prev TEXT    NOT NULL,
	chain_hash TEXT    NOT NULL,
	chain      TEXT    NOT NULL,
	reason     TEXT    NOT NULL DEFAULT '',
	PRIMARY KEY (device, n)
);

CREATE INDEX device_audit_chain ON device_audit (device, chain_seq);
CREATE INDEX device_audit_received ON device_audit (received);

-- Per device: the last audit record's n, the chain's head as received
-- (the highest chain_seq and its hash) and the breaks found.
CREATE TABLE device_audit_head (
	device     TEXT    NOT NULL PRIMARY KEY,
	n          BIGINT NOT NULL DEFAULT 0,
	chain_seq  BIGINT NOT NULL DEFAULT 0,
	chain_hash TEXT    NOT NULL DEFAULT '',
	breaks     BIGINT NOT NULL DEFAULT 0
);

-- Sampled predictions, kept for export (samples.go): body is the sample
-- record as the device encoded it (protocol.AppendRecord). id is the
-- arrival order, which the count and byte bounds drop from first.
CREATE TABLE samples (
	id       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	device   TEXT    NOT NULL,
	model    TEXT    NOT NULL,
	version  TEXT    NOT NULL,
	time     BIGINT  NOT NULL,
	received BIGINT  NOT NULL,
	bytes    BIGINT  NOT NULL,
	body     BYTEA   NOT NULL
);
CREATE INDEX samples_model ON samples (model, version, time);

-- The samples' running count and bytes (one row, k = 1).
CREATE TABLE samples_total (
	k     BIGINT  NOT NULL PRIMARY KEY,
	n     BIGINT NOT NULL DEFAULT 0,
	bytes BIGINT NOT NULL DEFAULT 0
);
INSERT INTO samples_total (k) VALUES (1);
