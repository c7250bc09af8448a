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
}


def _manage(*args: str, env_overrides: dict[str, str | None]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in {"DJANGO_SETTINGS_MODULE", "DEBUG", "SECRET_KEY", "PSEUDONYMISATION_KEY", "ALLOWED_HOSTS"}}
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
