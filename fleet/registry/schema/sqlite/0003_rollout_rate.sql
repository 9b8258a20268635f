-- A rollout's send rate: devices per minute (0: no limit), with an optional
-- exponential ramp (multiply by rate_factor every rate_every successes, up
-- to rate_max).
ALTER TABLE rollouts ADD COLUMN rate_per_minute INTEGER NOT NULL DEFAULT 0;
ALTER TABLE rollouts ADD COLUMN rate_factor REAL NOT NULL DEFAULT 0;
ALTER TABLE rollouts ADD COLUMN rate_every INTEGER NOT NULL DEFAULT 0;
ALTER TABLE rollouts ADD COLUMN rate_max INTEGER NOT NULL DEFAULT 0;
