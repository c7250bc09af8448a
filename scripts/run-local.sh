#!/usr/bin/env bash
# `make run`: the admin and the API on http://$ADDR:$PORT/ and a real Celery worker process
# beside them, with no server to install. The broker is kombu's filesystem transport (a folder
# under STORAGE_ROOT, see config/settings.py), so POST /training-runs/ answers 202 at once and
# the run moves on in the worker, as in production. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
ADDR="${ADDR:-127.0.0.1}"
PORT="${PORT:-8000}"
export DEBUG="${DEBUG:-1}"
export CELERY_BROKER_URL="${CELERY_BROKER_URL:-filesystem://}"
export SITE_BASE_URL="${SITE_BASE_URL:-http://$ADDR:$PORT}"
STORAGE="${STORAGE_ROOT:-var}"
mkdir -p "$STORAGE/log"

$BIN/python manage.py migrate --noinput -v 0
$BIN/python manage.py ensure_local_admin --url "http://$ADDR:$PORT/" --worker-log "$STORAGE/log/worker.log"

# One task at a time on SQLite: it has a single writer, and the remediation lock of a model
# lineage is per process there. With DATABASE_URL on PostgreSQL, WORKER_CONCURRENCY=2 or more.
# --beat runs the periodic work (redispatch of lost work, daily verifications) in the worker.
# --quiet: no start-up banner on the console, where it would bury the addresses printed above.
$BIN/celery -A config --quiet worker --beat --concurrency "${WORKER_CONCURRENCY:-1}" --loglevel INFO \
  --logfile "$STORAGE/log/worker.log" --schedule "$STORAGE/celerybeat-schedule" &
WORKER=$!
trap 'kill "$WORKER" 2>/dev/null; wait "$WORKER" 2>/dev/null' EXIT
trap 'exit 130' INT TERM
$BIN/python manage.py runserver --noreload "$ADDR:$PORT"
