#!/bin/bash
# lat.sh bare|real [env...]: paced 2 threads, 64 conns, 15 s; prints rate and latency percentiles
which=$1; shift
pkill -f "gunicorn --config" ; sleep 1
if [ $which = bare ]; then
  cd /tmp/wt-bench; (PORT=18004 HOST=127.0.0.1 WEB_CONCURRENCY=${WC:-2} DRY_RUN=true DATABASE_URL=sqlite:////tmp/prof/bare.sqlite PROMETHEUS_MULTIPROC_DIR=/tmp/prof/prom-bare /work/main/.venv/bin/gunicorn --config gunicorn.conf.py 'bench.bare_app:create_app()' > /tmp/prof/lat-bare.log 2>&1 &)
else
  (env "$@" /tmp/prof/run_app.sh /tmp/wt-bench 18004 > /tmp/prof/lat-real.log 2>&1 &)
fi
for i in $(seq 40); do curl -s -o /dev/null localhost:18004/healthz && break; sleep 0.3; done; sleep 1
wrk -t2 -c64 -d3s -s /tmp/prof/paced.lua http://127.0.0.1:18004 >/dev/null 2>&1
wrk -t2 -c64 -d15s --latency -s /tmp/prof/paced.lua http://127.0.0.1:18004 2>&1 | grep -E "^ +(50|90|99)%|Requests/sec|Non-2xx|Socket" | tr -s ' ' | tr '\n' ' '
echo " <- $which $*"
pkill -f "gunicorn --config"; sleep 1
