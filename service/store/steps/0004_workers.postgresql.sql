-- Step 4 of the schema (service/store/migrations.py), for postgresql: frozen: never edit it.
-- Each worker's circuit breaker, as it last reported it (see tables.py).

CREATE TABLE workers (
	worker_id VARCHAR(128) NOT NULL,
	started_at FLOAT NOT NULL,
	seen_at FLOAT NOT NULL,
	breaker_state VARCHAR(16) NOT NULL,
	breaker_failures INTEGER NOT NULL,
	breaker_opened_at FLOAT,
	next_probe_at FLOAT,
	PRIMARY KEY (worker_id)
);

CREATE INDEX ix_workers_seen ON workers (seen_at);
