#!/usr/bin/env bash
# Fuzz the running API as each role with every Schemathesis check, the way an attacker with a
# valid key of that role would: gunicorn with DEBUG=0 on PostgreSQL, the demo's objects in place.
#
#   scripts/fuzz-roles.sh                 # 30 examples per operation and role
#   FUZZ_EXAMPLES=200 scripts/fuzz-roles.sh
#
# Reports (JUnit, per role) go to var/fuzz/<role>/. The failures accepted as intended are recorded
# in scripts/fuzz-baseline/<role>.json (Schemathesis's baseline) and explained, class by class, in
# docs/architecture.md ("Fuzzing as each role"); the script exits non-zero on any other failure,
# so a new one is never missed. To accept more after review: FUZZ_BASELINE_UPDATE=1.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT="${FUZZ_PORT:-8765}"
DB="${FUZZ_DB:-privacy_ledger_fuzz}"
EXAMPLES="${FUZZ_EXAMPLES:-30}"
ROLES="${FUZZ_ROLES:-dpo ml_engineer auditor}"
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/${DB}"
export SECRET_KEY="fuzz-$(head -c 32 /dev/urandom | base64 | tr -d '/+=\n')"
export AUDIT_SIGNING_KEY="$(head -c 32 /dev/urandom | base64)"
export PSEUDONYMISATION_KEY="fuzz-pseudo-$(head -c 32 /dev/urandom | base64 | tr -d '/+=\n')"
# Plain HTTP on the loopback: no TLS redirect (a proxy terminates TLS in production).
export SECURE_SSL_REDIRECT=0 ALLOWED_HOSTS=127.0.0.1 STORAGE_ROOT="${PWD}/var/fuzz/storage"
# Throttles are raised: the fuzzer sends thousands of requests a minute from one address,
# many of them deliberately unauthenticated (tests/test_throttling.py covers the limits).
export API_THROTTLE_RATE="${API_THROTTLE_RATE:-1000000/min}" API_AUTH_FAILURE_RATE="${API_AUTH_FAILURE_RATE:-1000000/min}"
mkdir -p var/fuzz "$STORAGE_ROOT"
psql -h 127.0.0.1 -U postgres -q -c "DROP DATABASE IF EXISTS ${DB} WITH (FORCE)" -c "CREATE DATABASE ${DB}"
DEBUG=1 .venv/bin/python manage.py migrate --noinput >/dev/null
# The demo's tasks run in-process here (no broker yet), so its models, requests and DPIAs exist.
DEBUG=1 .venv/bin/python manage.py demo >var/fuzz/demo.log 2>&1 || { tail -20 var/fuzz/demo.log; exit 1; }
DEBUG=0 .venv/bin/python manage.py collectstatic --noinput >/dev/null
# The server publishes to a broker no worker reads: queued work stays queued, which is all fuzzing needs.
export CELERY_BROKER_URL="redis://127.0.0.1:6379/8"
DEBUG=0 .venv/bin/gunicorn config.wsgi:application --bind "127.0.0.1:${PORT}" --workers 2 --timeout 60 \
  --access-logfile var/fuzz/access.log --error-logfile var/fuzz/error.log &
SERVER=$!
trap 'kill $SERVER 2>/dev/null' EXIT
for _ in $(seq 1 60); do curl -s -o /dev/null "http://127.0.0.1:${PORT}/healthz" && break; sleep 0.5; done
curl -sf -o /dev/null "http://127.0.0.1:${PORT}/healthz" || { echo "the server did not start"; tail -20 var/fuzz/error.log; exit 1; }
set +e
status=0
mkdir -p scripts/fuzz-baseline
for role in $ROLES; do
  key=$(DEBUG=0 .venv/bin/python manage.py create_api_key --user "fuzz_${role}" --role "$role" --name fuzz 2>/dev/null) \
    || { echo "no API key for ${role}"; exit 1; }
  # Without a reviewed baseline file every failure counts (a missing file is never filled silently).
  baseline=()
  file="scripts/fuzz-baseline/${role}.json"
  if [ -f "$file" ]; then
    baseline=(--baseline "$file")
    [ -n "${FUZZ_BASELINE_UPDATE:-}" ] && baseline+=(--baseline-update)
  elif [ -n "${FUZZ_BASELINE_UPDATE:-}" ]; then
    baseline=(--baseline "$file")  # written by this run
  fi
  echo "==> ${role}"
  .venv/bin/schemathesis run "http://127.0.0.1:${PORT}/api/schema/" \
    -H "Authorization: Token ${key}" --checks all --max-examples "$EXAMPLES" \
    --generation-deterministic --request-timeout 30 --workers 1 --suppress-health-check all "${baseline[@]}" \
    --report junit --report-dir "var/fuzz/${role}" --no-color 2>&1 | tee "var/fuzz/${role}.log" | tail -60
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
done
exit $status
