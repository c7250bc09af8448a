#!/bin/sh
# web: migrate, then serve with gunicorn. worker / beat: Celery processes.
set -eu
case "${1:-web}" in
  web)
    python manage.py migrate --noinput
    exec gunicorn config.wsgi:application --bind 0.0.0.0:8000 --workers "${WEB_CONCURRENCY:-3}" --timeout 120
    ;;
  worker)
    exec celery -A config worker --loglevel INFO --concurrency "${CELERY_CONCURRENCY:-2}"
    ;;
  beat)
    exec celery -A config beat --loglevel INFO --schedule /data/celerybeat-schedule
    ;;
  *)
    exec "$@"
    ;;
esac
