-- Leases: which controller replica runs a singleton (the rollout engine)
-- and until when. token rises on every acquisition and fences the
-- holder's writes (lease.go).
CREATE TABLE leases (
	name    TEXT   NOT NULL PRIMARY KEY,
	holder  TEXT   NOT NULL DEFAULT '',
	expires BIGINT NOT NULL DEFAULT 0,
	token   BIGINT NOT NULL DEFAULT 0
);

-- Model artifacts in pieces, so that every replica on one PostgreSQL
-- store can serve every artifact (blobs.go); unused on SQLite, whose one
-- process has the blob files.
CREATE TABLE blob_chunks (
	sha256 TEXT   NOT NULL,
	idx    BIGINT NOT NULL,
	data   BLOB  NOT NULL,
	PRIMARY KEY (sha256, idx)
);
