-- Leases: which controller replica runs a singleton (the rollout engine)
-- and until when. token rises on every acquisition and fences the
-- holder's writes (lease.go).
CREATE TABLE leases (
	name    TEXT   NOT NULL PRIMARY KEY,
	holder  TEXT   NOT NULL DEFAULT '',
	expires BIGINT NOT NULL DEFAULT 0,
	token   BIGINT NOT NULL DEFAULT 0
);
