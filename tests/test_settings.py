"""Configuration comes from the environment; production refuses to start without its secrets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROD_ENV = {
    "DEBUG": "0",
    "SECRET_KEY": "k" * 20 + "production-secret-key-with-enough-entropy-0123456789",
    "PSEUDONYMISATION_KEY": "a-separate-pseudonymisation-key-0123456789",
    "ALLOWED_HOSTS": "ledger.example.org",
    "DATABASE_URL": "sqlite:////tmp/privacy-ledger-deploy-check.sqlite3",
    "AUDIT_SIGNING_KEY": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",  # base64 of a 32-byte Ed25519 seed
}


def _manage(*args: str, env_overrides: dict[str, str | None]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in {"DJANGO_SETTINGS_MODULE", "DEBUG", "SECRET_KEY", "PSEUDONYMISATION_KEY", "ALLOWED_HOSTS", "API_THROTTLE_RATE", "API_AUTH_FAILURE_RATE", "CACHE_URL", "DATABASE_PASSWORD"}}
    for key, value in env_overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("missing", ["SECRET_KEY", "PSEUDONYMISATION_KEY", "ALLOWED_HOSTS"])
def test_production_refuses_to_start_naming_the_missing_variable(missing):
    result = _manage("check", env_overrides={**PROD_ENV, missing: None})
    assert result.returncode != 0
    assert f"{missing} environment variable is required" in result.stderr


def test_pseudonymisation_key_must_differ_from_secret_key():
    result = _manage("check", env_overrides={**PROD_ENV, "PSEUDONYMISATION_KEY": PROD_ENV["SECRET_KEY"]})
    assert result.returncode != 0
    assert "PSEUDONYMISATION_KEY must differ from SECRET_KEY" in result.stderr


def test_malformed_boolean_is_refused_by_name():
    result = _manage("check", env_overrides={**PROD_ENV, "DEBUG": "maybe"})
    assert result.returncode != 0
    assert "DEBUG must be a boolean" in result.stderr


def test_deploy_check_is_clean_under_production_settings():
    result = _manage("check", "--deploy", "--fail-level", "WARNING", env_overrides=PROD_ENV)
    assert result.returncode == 0, result.stdout + result.stderr


def test_local_defaults_need_no_variables():
    result = _manage("check", env_overrides={"DEBUG": "1", "DATABASE_URL": None, "CELERY_BROKER_URL": None})
    assert result.returncode == 0, result.stderr


def _setting(expression: str, env_overrides: dict[str, str | None]) -> str:
    result = _manage("shell", "--no-imports", "-c", f"from django.conf import settings; print(repr(({expression},)))", env_overrides=env_overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip()


def test_a_database_password_with_url_characters_is_taken_as_it_is():
    password = "p@ss:w/rd%40#?&"
    env = {**PROD_ENV, "DATABASE_URL": "postgres://ledger@postgres:5432/ledger", "DATABASE_PASSWORD": password}
    got = _setting("settings.DATABASES['default']['PASSWORD'], settings.DATABASES['default']['HOST']", env)
    assert got == repr((password, "postgres"))


def test_the_cache_is_redis_when_cache_url_names_it_and_refused_otherwise():
    env = {**PROD_ENV, "CACHE_URL": "redis://redis:6379/1"}
    assert _setting("settings.CACHES['default']['BACKEND']", env) == "('django.core.cache.backends.redis.RedisCache',)"
    assert _setting("settings.CACHES['default']['BACKEND']", {**PROD_ENV, "CACHE_URL": None}).endswith("LocMemCache',)")
    result = _manage("check", env_overrides={**PROD_ENV, "CACHE_URL": "memcached://x"})
    assert result.returncode != 0 and "CACHE_URL must be a redis:// URL" in result.stderr


def test_rates_and_limits_come_from_the_environment_with_documented_defaults():
    defaults = _setting(
        "settings.REST_FRAMEWORK['DEFAULT_THROTTLE_RATES'], settings.AXES_FAILURE_LIMIT, "
        "settings.API_MAX_JSON_DEPTH, settings.API_MAX_QUERY_STRING_LENGTH",
        {**PROD_ENV, "API_THROTTLE_RATE": None, "API_AUTH_FAILURE_RATE": None},
    )
    assert defaults == repr(({"api_key": "1200/min", "auth_failure": "20/min"}, 5, 64, 4096))
    lowered = _setting("settings.REST_FRAMEWORK['DEFAULT_THROTTLE_RATES']['api_key']",
                       {**PROD_ENV, "API_THROTTLE_RATE": "10/s"})
    assert lowered == "('10/s',)"


def test_a_malformed_rate_is_refused_by_name_at_start():
    result = _manage("check", env_overrides={**PROD_ENV, "API_THROTTLE_RATE": "fast"})
    assert result.returncode != 0
    assert "API_THROTTLE_RATE must be a rate like 1200/min" in result.stderr
