-- Telemetry records, unique by (device, epoch, seq): a record delivered
-- twice, to one replica or two, is stored and counted once.
CREATE TABLE telemetry (
	device   TEXT    NOT NULL,
	epoch    INTEGER NOT NULL,
	seq      INTEGER NOT NULL,
	kind     TEXT    NOT NULL,
	received INTEGER NOT NULL,
	body     BLOB    NOT NULL,
	PRIMARY KEY (device, epoch, seq)
) WITHOUT ROWID;
CREATE INDEX telemetry_received ON telemetry (received);
