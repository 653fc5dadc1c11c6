#!/bin/bash
# usage: run_app.sh <repo dir> <port>
cd "$1"
rm -rf /tmp/prof/prom-$2 /tmp/prof/db-$2.sqlite*; mkdir -p /tmp/prof/prom-$2
export PORT=$2 HOST=127.0.0.1 DATABASE_URL=sqlite:////tmp/prof/db-$2.sqlite RULES_FILE=/work/main/rules.yaml \
 VIDEOSDK_WEBHOOK_PUBLIC_KEY=/tmp/prof/key.pem VIDEOSDK_API_BASE=http://127.0.0.1:9 PROMETHEUS_MULTIPROC_DIR=/tmp/prof/prom-$2 \
 VIDEOSDK_API_KEY=k VIDEOSDK_SECRET_KEY=s ADMIN_TOKEN=$(python3 -c "import secrets; print(secrets.token_urlsafe(24))") DRY_RUN=true
exec /work/main/.venv/bin/gunicorn --config gunicorn.conf.py 'service:create_app()'
