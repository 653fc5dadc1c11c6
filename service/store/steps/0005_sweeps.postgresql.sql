-- Step 5 of the schema (service/store/migrations.py), for postgresql: frozen: never edit it.
-- Sweeps: rooms.closed_at (not swept again until a delivery comes), and the sweep's round (see tables.py).

ALTER TABLE rooms ADD COLUMN closed_at FLOAT;

CREATE TABLE sweeps (
	name VARCHAR(32) NOT NULL,
	round INTEGER NOT NULL,
	started_at FLOAT,
	finished_at FLOAT,
	next_at FLOAT NOT NULL,
	cursor VARCHAR(128),
	rooms INTEGER NOT NULL,
	owner VARCHAR(128),
	lease_until FLOAT,
	PRIMARY KEY (name)
);
