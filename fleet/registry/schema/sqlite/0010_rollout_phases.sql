-- Rollout phases (docs/API.md, Rollouts): the shadow and canary phases of
-- each wave and the analysis that judges them. shadow and canary are the
-- phases' settings ({percent, duration}, null: none), analysis the
-- analysis config (JSON of analysis.Config, null: no analysis), phase and
-- phase_started the current wave's phase and when its window started (0:
-- not yet), analyses the analysis reports so far (JSON list).
ALTER TABLE rollouts ADD COLUMN shadow TEXT NOT NULL DEFAULT 'null';
ALTER TABLE rollouts ADD COLUMN canary TEXT NOT NULL DEFAULT 'null';
ALTER TABLE rollouts ADD COLUMN analysis TEXT NOT NULL DEFAULT 'null';
ALTER TABLE rollouts ADD COLUMN phase TEXT NOT NULL DEFAULT '';
ALTER TABLE rollouts ADD COLUMN phase_started INTEGER NOT NULL DEFAULT 0;
ALTER TABLE rollouts ADD COLUMN analyses TEXT NOT NULL DEFAULT 'null';
-- An assignment's trial: the mode of the last install sent ('' for a plain
-- install), and the version the device served when it was assigned, set
-- only for devices that take trials (0: the device gets a plain install at
-- the wave's promotion).
ALTER TABLE assignments ADD COLUMN trial TEXT NOT NULL DEFAULT '';
ALTER TABLE assignments ADD COLUMN baseline INTEGER NOT NULL DEFAULT 0;
-- The optional protocol features a device's agent reports (status.features).
ALTER TABLE devices ADD COLUMN features TEXT NOT NULL DEFAULT 'null';
