-- Drift detection's state per model version and scope (device '' = the
-- whole fleet): the state machine's status and the scores of the last
-- judged window, both JSON written by fleet/drift (docs/MONITORING.md).
-- The leader replica updates it once a window; any replica reads it.
CREATE TABLE drift_state (
	model   TEXT   NOT NULL,
	version TEXT   NOT NULL,
	device  TEXT   NOT NULL,
	status  TEXT   NOT NULL,
	score   TEXT   NOT NULL DEFAULT '{}',
	updated BIGINT NOT NULL DEFAULT 0,
	PRIMARY KEY (model, version, device)
);
