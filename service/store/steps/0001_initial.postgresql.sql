-- Step 1 of the schema (service/store/migrations.py), for postgresql: frozen: never edit it;
-- a change to the schema is a new step (tests/test_store.py checks the steps build tables.py).

CREATE TABLE deliveries (
	id VARCHAR(32) NOT NULL,
	received_at FLOAT NOT NULL,
	event_type VARCHAR(100) NOT NULL,
	room_id VARCHAR(128),
	session_id VARCHAR(128),
	participant_id VARCHAR(256),
	known BOOLEAN NOT NULL,
	verified BOOLEAN NOT NULL,
	body_sha256 VARCHAR(64) NOT NULL,
	body TEXT NOT NULL,
	rules_hash VARCHAR(64) NOT NULL,
	PRIMARY KEY (id)
);

CREATE INDEX ix_deliveries_body ON deliveries (body_sha256);

CREATE INDEX ix_deliveries_received ON deliveries (received_at);

CREATE INDEX ix_deliveries_room ON deliveries (room_id, received_at);

CREATE INDEX ix_deliveries_room_id ON deliveries (room_id, id);

CREATE TABLE actions (
	id SERIAL NOT NULL,
	key VARCHAR(400) NOT NULL,
	kind VARCHAR(32) NOT NULL,
	room_id VARCHAR(128) NOT NULL,
	session_id VARCHAR(128),
	rule VARCHAR(100) NOT NULL,
	delivery_id VARCHAR(32) NOT NULL,
	status VARCHAR(16) NOT NULL,
	confirm VARCHAR(32),
	attempts INTEGER NOT NULL,
	due_at FLOAT NOT NULL,
	lease_owner VARCHAR(64),
	lease_until FLOAT,
	last_status INTEGER,
	last_error TEXT,
	created_at FLOAT NOT NULL,
	updated_at FLOAT NOT NULL,
	PRIMARY KEY (id),
	UNIQUE (key),
	FOREIGN KEY(delivery_id) REFERENCES deliveries (id)
);

CREATE INDEX ix_actions_created ON actions (created_at);

CREATE INDEX ix_actions_due ON actions (status, due_at);

CREATE INDEX ix_actions_room ON actions (room_id);

CREATE INDEX ix_actions_status ON actions (status, id);

CREATE TABLE timers (
	id SERIAL NOT NULL,
	key VARCHAR(400) NOT NULL,
	rule VARCHAR(100) NOT NULL,
	fingerprint VARCHAR(32) NOT NULL,
	room_id VARCHAR(128) NOT NULL,
	session_id VARCHAR(128),
	action VARCHAR(32) NOT NULL,
	delivery_id VARCHAR(32) NOT NULL,
	started_at FLOAT NOT NULL,
	due_at FLOAT NOT NULL,
	status VARCHAR(16) NOT NULL,
	resolved_at FLOAT,
	resolved_by VARCHAR(32),
	reason TEXT,
	notes JSON,
	PRIMARY KEY (id),
	FOREIGN KEY(delivery_id) REFERENCES deliveries (id)
);

CREATE INDEX ix_timers_due ON timers (status, due_at);

CREATE INDEX ix_timers_room ON timers (room_id);

CREATE UNIQUE INDEX ux_timers_pending ON timers (key) WHERE status = 'pending';

CREATE TABLE decisions (
	id SERIAL NOT NULL,
	delivery_id VARCHAR(32) NOT NULL,
	created_at FLOAT NOT NULL,
	rule VARCHAR(100) NOT NULL,
	action VARCHAR(32) NOT NULL,
	room_id VARCHAR(128) NOT NULL,
	session_id VARCHAR(128),
	action_key VARCHAR(400) NOT NULL,
	outcome VARCHAR(32) NOT NULL,
	action_id INTEGER,
	timer_id INTEGER,
	trace JSON,
	PRIMARY KEY (id),
	FOREIGN KEY(delivery_id) REFERENCES deliveries (id),
	FOREIGN KEY(action_id) REFERENCES actions (id),
	FOREIGN KEY(timer_id) REFERENCES timers (id)
);

CREATE INDEX ix_decisions_created ON decisions (created_at);

CREATE INDEX ix_decisions_delivery ON decisions (delivery_id);

CREATE INDEX ix_decisions_room ON decisions (room_id, created_at);

CREATE INDEX ix_decisions_rule ON decisions (rule, outcome);

CREATE TABLE attempts (
	id SERIAL NOT NULL,
	action_id INTEGER NOT NULL,
	number INTEGER NOT NULL,
	worker VARCHAR(64) NOT NULL,
	started_at FLOAT NOT NULL,
	latency_ms FLOAT NOT NULL,
	http_status INTEGER,
	outcome VARCHAR(16) NOT NULL,
	error TEXT,
	note TEXT,
	next_due_at FLOAT,
	PRIMARY KEY (id),
	FOREIGN KEY(action_id) REFERENCES actions (id)
);

CREATE INDEX ix_attempts_action ON attempts (action_id);

CREATE INDEX ix_attempts_started ON attempts (started_at);

CREATE TABLE rooms (
	room_id VARCHAR(128) NOT NULL,
	state JSON NOT NULL,
	updated_at FLOAT NOT NULL,
	last_delivery_id VARCHAR(32),
	PRIMARY KEY (room_id)
);

CREATE INDEX ix_rooms_updated ON rooms (updated_at, room_id);

CREATE TABLE rules_versions (
	sha256 VARCHAR(64) NOT NULL,
	source TEXT NOT NULL,
	text TEXT NOT NULL,
	first_loaded_at FLOAT NOT NULL,
	last_loaded_at FLOAT NOT NULL,
	PRIMARY KEY (sha256)
);
