-- The fleet's state: one row per model version, device, rollout,
-- assignment, credential and token, and the audit chain. Times are unix
-- nanoseconds (0: none); durations nanoseconds; nested values JSON text.
CREATE TABLE models (
	name       TEXT    NOT NULL,
	version    INTEGER NOT NULL,
	sha256     TEXT    NOT NULL,
	length     INTEGER NOT NULL,
	chunk_size INTEGER NOT NULL,
	release    BLOB    NOT NULL,
	serial     INTEGER NOT NULL,
	expires    INTEGER NOT NULL,
	created    INTEGER NOT NULL,
	PRIMARY KEY (name, version)
);
CREATE INDEX models_sha256 ON models (sha256);

CREATE TABLE devices (
	id             TEXT    NOT NULL PRIMARY KEY,
	labels         TEXT    NOT NULL DEFAULT 'null',
	agent_version  TEXT    NOT NULL DEFAULT '',
	online         INTEGER NOT NULL DEFAULT 0,
	online_since   INTEGER NOT NULL DEFAULT 0,
	last_seen      INTEGER NOT NULL DEFAULT 0,
	models         TEXT    NOT NULL DEFAULT 'null',
	update_state   TEXT    NOT NULL DEFAULT '',
	update_status  TEXT    NOT NULL DEFAULT 'null',
	health         TEXT    NOT NULL DEFAULT 'null',
	root_version   INTEGER NOT NULL DEFAULT 0,
	status_time    INTEGER NOT NULL DEFAULT 0,
	tel_batches    INTEGER NOT NULL DEFAULT 0,
	tel_records    INTEGER NOT NULL DEFAULT 0,
	tel_duplicates INTEGER NOT NULL DEFAULT 0,
	tel_by_kind    TEXT    NOT NULL DEFAULT 'null',
	tel_epoch      INTEGER NOT NULL DEFAULT 0,
	tel_max_seq    INTEGER NOT NULL DEFAULT 0,
	tel_drops      TEXT    NOT NULL DEFAULT 'null',
	tel_last       INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX devices_online ON devices (online, last_seen);
CREATE INDEX devices_update_state ON devices (update_state);

CREATE TABLE rollouts (
	id                TEXT    NOT NULL PRIMARY KEY,
	model             TEXT    NOT NULL,
	version           INTEGER NOT NULL,
	selector          TEXT    NOT NULL DEFAULT 'null',
	waves             TEXT    NOT NULL DEFAULT 'null',
	max_failure_ratio REAL    NOT NULL DEFAULT 0,
	min_successes     INTEGER NOT NULL DEFAULT 0,
	require_verified  INTEGER NOT NULL DEFAULT 0,
	probation         TEXT    NOT NULL DEFAULT 'null',
	wave_timeout      INTEGER NOT NULL DEFAULT 0,
	on_wave_timeout   TEXT    NOT NULL DEFAULT '',
	bake              INTEGER NOT NULL DEFAULT 0,
	state             TEXT    NOT NULL,
	wave              INTEGER NOT NULL DEFAULT 0,
	reason            TEXT    NOT NULL DEFAULT '',
	created           INTEGER NOT NULL,
	updated           INTEGER NOT NULL DEFAULT 0,
	wave_done         INTEGER NOT NULL DEFAULT 0,
	wave_started      INTEGER NOT NULL DEFAULT 0,
	finished          INTEGER NOT NULL DEFAULT 0,
	decisions         TEXT    NOT NULL DEFAULT 'null'
);
CREATE INDEX rollouts_state ON rollouts (state);
CREATE INDEX rollouts_created ON rollouts (created, id);

CREATE TABLE assignments (
	rollout    TEXT    NOT NULL,
	device     TEXT    NOT NULL,
	wave       INTEGER NOT NULL DEFAULT 0,
	command_id TEXT    NOT NULL DEFAULT '',
	sent       INTEGER NOT NULL DEFAULT 0,
	sends      INTEGER NOT NULL DEFAULT 0,
	state      TEXT    NOT NULL DEFAULT '',
	progress   INTEGER NOT NULL DEFAULT 0,
	total      INTEGER NOT NULL DEFAULT 0,
	error      TEXT    NOT NULL DEFAULT '',
	requests   INTEGER NOT NULL DEFAULT 0,
	verified   INTEGER NOT NULL DEFAULT 0,
	activated  INTEGER NOT NULL DEFAULT 0,
	updated    INTEGER NOT NULL DEFAULT 0,
	ack_time   INTEGER NOT NULL DEFAULT 0,
	undo       TEXT    NOT NULL DEFAULT '',
	undo_id    TEXT    NOT NULL DEFAULT '',
	undo_sent  INTEGER NOT NULL DEFAULT 0,
	undo_done  INTEGER NOT NULL DEFAULT 0,
	previous   TEXT    NOT NULL DEFAULT 'null',
	PRIMARY KEY (rollout, device)
);
CREATE INDEX assignments_state ON assignments (rollout, state);
CREATE INDEX assignments_device ON assignments (device);

CREATE TABLE credentials (
	device  TEXT    NOT NULL PRIMARY KEY,
	hash    BLOB    NOT NULL,
	created INTEGER NOT NULL,
	revoked INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE tokens (
	id      TEXT    NOT NULL PRIMARY KEY,
	name    TEXT    NOT NULL DEFAULT '',
	role    TEXT    NOT NULL,
	hash    BLOB    NOT NULL,
	created INTEGER NOT NULL,
	revoked INTEGER NOT NULL DEFAULT 0
);

-- The audit chain: each record's stored bytes (doc) are hashed by its
-- successor; meta's audit_head holds the last number and hash.
CREATE TABLE audit (
	seq  INTEGER NOT NULL PRIMARY KEY,
	time INTEGER NOT NULL,
	doc  BLOB    NOT NULL
);
CREATE INDEX audit_time ON audit (time);

CREATE TABLE meta (
	key   TEXT NOT NULL PRIMARY KEY,
	value BLOB NOT NULL
);
INSERT INTO meta (key, value) VALUES ('audit_head', X'7B22736571223A302C2268617368223A22227D');
