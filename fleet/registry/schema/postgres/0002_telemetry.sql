-- Telemetry records, unique by (device, epoch, seq): a record delivered
-- twice, to one replica or two, is stored and counted once.
CREATE TABLE telemetry (
	device   TEXT    NOT NULL,
	epoch    BIGINT  NOT NULL,
	seq      BIGINT  NOT NULL,
	kind     TEXT    NOT NULL,
	received BIGINT  NOT NULL,
	body     BYTEA   NOT NULL,
	PRIMARY KEY (device, epoch, seq)
);
CREATE INDEX telemetry_received ON telemetry (received);
