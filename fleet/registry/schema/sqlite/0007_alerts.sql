-- The webhook outbox (fleet/alerts): one row per event per webhook,
-- inserted when the event happens and kept until it is delivered or given
-- up, then for the retention (alerts.retention). id gives each webhook's
-- delivery order. (webhook, event_id) is unique: an event emitted again
-- (a replica that saw the same transition) is one delivery. idem_key is
-- sent as Outpost-Idempotency-Key on every attempt; body is the exact
-- JSON posted. state: pending, delivered, failed or cancelled (a device
-- that came back within the offline grace). Times are unix nanoseconds:
-- due is the next attempt's, done when the row left pending.
CREATE TABLE alert_deliveries (
	id          INTEGER PRIMARY KEY AUTOINCREMENT,
	webhook     TEXT    NOT NULL,
	event_id    TEXT    NOT NULL,
	event       TEXT    NOT NULL,
	subject     TEXT    NOT NULL DEFAULT '',
	idem_key    TEXT    NOT NULL,
	body        TEXT    NOT NULL,
	state       TEXT    NOT NULL DEFAULT 'pending',
	created     INTEGER NOT NULL,
	due         INTEGER NOT NULL,
	attempts    INTEGER NOT NULL DEFAULT 0,
	last_status INTEGER NOT NULL DEFAULT 0,
	last_error  TEXT    NOT NULL DEFAULT '',
	done        INTEGER NOT NULL DEFAULT 0,
	UNIQUE (webhook, event_id)
);
CREATE INDEX alert_deliveries_pending ON alert_deliveries (webhook, state, id);
CREATE INDEX alert_deliveries_subject ON alert_deliveries (event, subject, state);
CREATE INDEX alert_deliveries_done ON alert_deliveries (state, done);
