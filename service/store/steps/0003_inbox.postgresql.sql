-- Step 3 of the schema (service/store/migrations.py), for postgresql: frozen: never edit it.
-- The inbox: accepted deliveries not yet decided on (see tables.py).

CREATE TABLE inbox (
	seq BIGSERIAL NOT NULL,
	id VARCHAR(32) NOT NULL,
	received_at FLOAT NOT NULL,
	room_id VARCHAR(128),
	body TEXT NOT NULL,
	signature TEXT,
	verified BOOLEAN,
	PRIMARY KEY (seq),
	UNIQUE (id)
);

CREATE INDEX ix_inbox_room ON inbox (room_id, seq);
