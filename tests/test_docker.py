"""Docker cannot run here, so check that compose.yaml names commands, modules and settings that exist."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())


def test_compose_has_the_five_services():
    assert set(COMPOSE["services"]) == {"postgres", "redis", "web", "worker", "beat"}
    assert "healthcheck" in COMPOSE["services"]["postgres"]
    assert "postgres-data" in COMPOSE["volumes"]


def test_app_services_get_their_configuration_from_the_environment():
    from django.conf import settings

    for name in ("web", "worker", "beat"):
        service = COMPOSE["services"][name]
        env = service["environment"]
        assert env["DATABASE_URL"].startswith("postgres://")
        assert env["CELERY_BROKER_URL"].startswith("redis://")
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
    example = (ROOT / "docker" / ".env.example").read_text()
    for variable in ("SECRET_KEY", "PSEUDONYMISATION_KEY", "ALLOWED_HOSTS", "DEBUG"):
        assert re.search(rf"^{variable}=", example, re.M), variable
        assert hasattr(settings, variable)


def test_celery_commands_name_the_real_app():
    for name in ("worker", "beat"):
        command = COMPOSE["services"][name]["command"]
        assert command[:3] == ["celery", "-A", "config"]
        module = importlib.import_module(command[2])
        assert module.celery_app.main == "privacy_ledger"


def test_web_command_and_entrypoint_name_modules_that_exist():
    assert COMPOSE["services"]["web"]["command"] == ["docker/entrypoint.sh", "web"]
    entrypoint = (ROOT / "docker" / "entrypoint.sh").read_text()
    wsgi = re.search(r"gunicorn (\S+):(\w+)", entrypoint)
    module = importlib.import_module(wsgi.group(1))
    assert callable(getattr(module, wsgi.group(2)))
    assert (ROOT / "manage.py").exists()


def test_dockerfile_runs_as_non_root_with_cpu_torch():
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert dockerfile.startswith("# ") and "FROM python:3.11-slim" in dockerfile
    assert re.search(r"^USER (?!root)\w+", dockerfile, re.M)
    assert "whl/cpu torch==2.13.0" in dockerfile
    build = COMPOSE["services"]["web"]["build"]
    assert (ROOT / "docker" / Path(build["context"]) / build["dockerfile"]).resolve().exists()
