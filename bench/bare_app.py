"""The baseline for the ingest benchmark: a bare Flask app that reads the JSON body and answers 204.

Served by the same command as the real app with only the app swapped:
`gunicorn --config gunicorn.conf.py 'bench.bare_app:create_app()'`, so it has the same worker
class (gevent), worker count, connections per worker, keep-alive and (no) access log; the ingest
section also serves it on gthread x4 (GUNICORN_CMD_ARGS) for reference. No signature check, no
store, no rules.
"""

from __future__ import annotations

from flask import Flask, request


def create_app() -> Flask:
    app = Flask("bare")

    @app.post("/webhooks/videosdk")
    def receive():
        request.get_json(force=True)  # parse the body, as the real app must
        return "", 204

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    return app
