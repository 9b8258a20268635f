-- The fleet's state: one row per model version, device, rollout,
-- assignment, credential and token, and the audit chain. Times are unix
-- nanoseconds (0: none); durations nanoseconds; nested values JSONB.
CREATE TABLE models (
	name       TEXT    NOT NULL,
	version    BIGINT  NOT NULL,
	sha256     TEXT    NOT NULL,
	length     BIGINT  NOT NULL,
	chunk_size BIGINT  NOT NULL,
	release    BYTEA   NOT NULL,
	serial     BIGINT  NOT NULL,
	expires    BIGINT  NOT NULL,
	created    BIGINT  NOT NULL,
	PRIMARY KEY (name, version)
);
CREATE INDEX models_sha256 ON models (sha256);

CREATE TABLE devices (
	id             TEXT    NOT NULL PRIMARY KEY,
	labels         JSONB   NOT NULL DEFAULT 'null',
	agent_version  TEXT    NOT NULL DEFAULT '',
	online         BOOLEAN NOT NULL DEFAULT false,
	online_since   BIGINT  NOT NULL DEFAULT 0,
	last_seen      BIGINT  NOT NULL DEFAULT 0,
	models         JSONB   NOT NULL DEFAULT 'null',
	update_state   TEXT    NOT NULL DEFAULT '',
	update_status  JSONB   NOT NULL DEFAULT 'null',
	health         JSONB   NOT NULL DEFAULT 'null',
	root_version   BIGINT  NOT NULL DEFAULT 0,
	status_time    BIGINT  NOT NULL DEFAULT 0,
	tel_batches    BIGINT  NOT NULL DEFAULT 0,
	tel_records    BIGINT  NOT NULL DEFAULT 0,
	tel_duplicates BIGINT  NOT NULL DEFAULT 0,
	tel_by_kind    JSONB   NOT NULL DEFAULT 'null',
	tel_epoch      BIGINT  NOT NULL DEFAULT 0,
	tel_max_seq    BIGINT  NOT NULL DEFAULT 0,
	tel_drops      JSONB   NOT NULL DEFAULT 'null',
	tel_last       BIGINT  NOT NULL DEFAULT 0
);
CREATE INDEX devices_online ON devices (online, last_seen);
CREATE INDEX devices_update_state ON devices (update_state);

CREATE TABLE rollouts (
	id                TEXT    NOT NULL PRIMARY KEY,
	model             TEXT    NOT NULL,
	version           BIGINT  NOT NULL,
	selector          JSONB   NOT NULL DEFAULT 'null',
	waves             JSONB   NOT NULL DEFAULT 'null',
	max_failure_ratio DOUBLE PRECISION NOT NULL DEFAULT 0,
	min_successes     BIGINT  NOT NULL DEFAULT 0,
	require_verified  BOOLEAN NOT NULL DEFAULT false,
	probation         JSONB   NOT NULL DEFAULT 'null',
	wave_timeout      BIGINT  NOT NULL DEFAULT 0,
	on_wave_timeout   TEXT    NOT NULL DEFAULT '',
	bake              BIGINT  NOT NULL DEFAULT 0,
	state             TEXT    NOT NULL,
	wave              BIGINT  NOT NULL DEFAULT 0,
	reason            TEXT    NOT NULL DEFAULT '',
	created           BIGINT  NOT NULL,
	updated           BIGINT  NOT NULL DEFAULT 0,
	wave_done         BIGINT  NOT NULL DEFAULT 0,
	wave_started      BIGINT  NOT NULL DEFAULT 0,
	finished          BIGINT  NOT NULL DEFAULT 0,
	decisions         JSONB   NOT NULL DEFAULT 'null'
);
CREATE INDEX rollouts_state ON rollouts (state);
CREATE INDEX rollouts_created ON rollouts (created, id);

CREATE TABLE assignments (
	rollout    TEXT    NOT NULL,
	device     TEXT    NOT NULL,
	wave       BIGINT  NOT NULL DEFAULT 0,
	command_id TEXT    NOT NULL DEFAULT '',
	sent       BIGINT  NOT NULL DEFAULT 0,
	sends      BIGINT  NOT NULL DEFAULT 0,
	state      TEXT    NOT NULL DEFAULT '',
	progress   BIGINT  NOT NULL DEFAULT 0,
	total      BIGINT  NOT NULL DEFAULT 0,
	error      TEXT    NOT NULL DEFAULT '',
	requests   BIGINT  NOT NULL DEFAULT 0,
	verified   BOOLEAN NOT NULL DEFAULT false,
	activated  BOOLEAN NOT NULL DEFAULT false,
	updated    BIGINT  NOT NULL DEFAULT 0,
	ack_time   BIGINT  NOT NULL DEFAULT 0,
	undo       TEXT    NOT NULL DEFAULT '',
	undo_id    TEXT    NOT NULL DEFAULT '',
	undo_sent  BIGINT  NOT NULL DEFAULT 0,
	undo_done  BOOLEAN NOT NULL DEFAULT false,
	previous   JSONB   NOT NULL DEFAULT 'null',
	PRIMARY KEY (rollout, device)
);
CREATE INDEX assignments_state ON assignments (rollout, state);
CREATE INDEX assignments_device ON assignments (device);

CREATE TABLE credentials (
	device  TEXT    NOT NULL PRIMARY KEY,
	hash    BYTEA   NOT NULL,
	created BIGINT  NOT NULL,
	revoked BIGINT  NOT NULL DEFAULT 0
);

CREATE TABLE tokens (
	id      TEXT    NOT NULL PRIMARY KEY,
	name    TEXT    NOT NULL DEFAULT '',
	role    TEXT    NOT NULL,
	hash    BYTEA   NOT NULL,
	created BIGINT  NOT NULL,
	revoked BIGINT  NOT NULL DEFAULT 0
);

-- The audit chain: each record's stored bytes (doc) are hashed by its
-- successor; meta's audit_head holds the last number and hash.
CREATE TABLE audit (
	seq  BIGINT  NOT NULL PRIMARY KEY,
	time BIGINT  NOT NULL,
	doc  BYTEA   NOT NULL
);
CREATE INDEX audit_time ON audit (time);

CREATE TABLE meta (
	key   TEXT NOT NULL PRIMARY KEY,
	value BYTEA NOT NULL
);
INSERT INTO meta (key, value) VALUES ('audit_head', convert_to('{"seq":0,"hash":""}', 'UTF8'));
