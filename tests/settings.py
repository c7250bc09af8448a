"""Test settings: the real settings with development keys allowed.

DATABASE_URL and CELERY_BROKER_URL still come from the environment, so the same suite
runs on SQLite in-process or on PostgreSQL with a real Celery worker.
"""

import os
import tempfile

os.environ.setdefault("DEBUG", "1")
os.environ.setdefault("STORAGE_ROOT", tempfile.mkdtemp(prefix="privacy-ledger-test-"))
# The suite (the fuzz test above all) sends thousands of requests per key and many bad keys from
# 127.0.0.1; tests/test_throttling.py lowers the rates to see the 429s.
os.environ.setdefault("API_THROTTLE_RATE", "1000000/min")
os.environ.setdefault("API_AUTH_FAILURE_RATE", "1000000/min")

from config.settings import *  # noqa: E402,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # speed only; no real passwords here
REST_FRAMEWORK = {**REST_FRAMEWORK, "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"]}  # noqa: F405

os.makedirs(STATIC_ROOT, exist_ok=True)  # noqa: F405
# Work a killed worker leaves is taken over once its lease lapses: seconds in the tests that
# kill workers (their subprocesses get the same value), a minute by default.
TASK_LEASE_SECONDS = 5
# LiRA and the canary run each cost trainings; the tests of those audits turn them on
# (tests/mlops/test_privacy_audits.py), the rest of the suite trains without them.
MLOPS_LIRA_REFERENCES = 0
MLOPS_CANARY_COUNT = 0
# The webhook tests deliver to a plain-http receiver on 127.0.0.1 (webhooks/netguard.py
# refuses both otherwise; pytest-django runs the tests with DEBUG off).
WEBHOOK_ALLOW_PRIVATE = True
WEBHOOK_ALLOW_HTTP = True
