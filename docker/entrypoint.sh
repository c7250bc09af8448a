#!/bin/sh
# migrate: apply migrations, then exit (compose's one-shot `migrate` service).
# web: gunicorn. worker / beat: Celery processes. Each waits until the database has every
# migration, so none of them runs against an older schema (compose also orders them after
# `migrate`; this covers `docker run` and orchestrators without that ordering).
set -eu

wait_for_migrations() {
  waited=0
  until python manage.py migrate --check >/dev/null 2>&1; do
    if [ "$waited" -ge "${MIGRATION_WAIT_SECONDS:-300}" ]; then
      echo "The database still has unapplied migrations after ${waited}s: run 'docker/entrypoint.sh migrate'." >&2
      exit 1
    fi
    sleep 5
    waited=$((waited + 5))
  done
}

case "${1:-web}" in
  migrate)
    exec python manage.py migrate --noinput
    ;;
  web)
    wait_for_migrations
    # Request limits are explicit: a request line (method, path and query string) over 8190
    # bytes, gunicorn's maximum, or a header over 8190 bytes is refused by gunicorn itself with a
    # plain-text 400. Django's own limit on the query string (API_MAX_QUERY_STRING_LENGTH, 4096)
    # is below it, so API clients get JSON first.
    exec gunicorn config.wsgi:application --bind 0.0.0.0:8000 \
      --workers "${WEB_CONCURRENCY:-3}" --timeout 120 \
      --limit-request-line 8190 --limit-request-fields 100 --limit-request-field_size 8190
    ;;
  worker)
    wait_for_migrations
    exec celery -A config worker --loglevel INFO --concurrency "${CELERY_CONCURRENCY:-2}"
    ;;
  beat)
    wait_for_migrations
    exec celery -A config beat --loglevel INFO --schedule /data/celerybeat-schedule
    ;;
  *)
    exec "$@"
    ;;
esac
