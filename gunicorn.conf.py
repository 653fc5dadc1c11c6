"""gunicorn settings for the Procfile's `web:` process, all from the environment.

PORT (default 8000) and WEB_CONCURRENCY (default 2) follow the Heroku convention;
HOST defaults to 0.0.0.0. The master checks the configuration and migrates the
schema once before forking, so a bad setting stops start-up with one clear line
instead of a traceback per worker.
"""

import os

from service import promdir

# Before anything imports prometheus_client: every process counts into files here.
_metrics_dir = promdir.ensure()

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# gevent: each request a greenlet, so requests waiting for the inbox's shared commit (run on a
# real thread: store/offload.py) or for a slow client hold no thread. Measured against gthread in
# bench/RESULTS.md; a thread per request waits through every fsync and is held by a stalled client.
worker_class = "gevent"
worker_connections = int(os.environ.get("WEB_CONNECTIONS", "1000"))  # open connections per worker
timeout = 30
graceful_timeout = 30
keepalive = 5
# No access log: the app logs one JSON line per request with more in it (web.py), and gunicorn's
# own line cost a quarter of a bare app's throughput when measured.
accesslog = None
errorlog = "-"
# A webhook body is at most 64 KiB; headers have no reason to be large.
limit_request_field_size = 8190
limit_request_fields = 100


def on_starting(server):
    from service.errors import RoomwardenError
    from service.runtime import preflight

    promdir.remove_dead(_metrics_dir)
    try:
        preflight()
    except RoomwardenError as exc:
        # gunicorn prints a RuntimeError raised here as "Error: ..." and exits 1.
        raise RuntimeError(f"roomwarden cannot start: {exc}") from None


def post_worker_init(worker):
    # gunicorn leaves SIGHUP at its default (exit) in workers; here it reloads the rules in
    # place instead. `kill -HUP` on the master still restarts the workers gracefully.
    import signal

    from service.store.offload import after_gevent_patch

    after_gevent_patch()  # psycopg was imported by the master, before gevent patched this worker

    runtime = worker.wsgi.extensions.get("roomwarden") if hasattr(worker.wsgi, "extensions") else None
    if runtime is not None and runtime.watcher is not None:
        signal.signal(signal.SIGHUP, lambda *_: runtime.watcher.request())


def child_exit(server, worker):
    from service import metrics

    metrics.process_exit(worker.pid)
