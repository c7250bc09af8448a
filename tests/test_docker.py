"""Docker cannot run here, so check that compose.yaml names commands, modules and settings that exist,
and build the production settings the way the image does."""

from __future__ import annotations

import importlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())


def test_compose_has_its_services():
    assert set(COMPOSE["services"]) == {"postgres", "redis", "migrate", "web", "worker", "beat"}
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
        # Throttle counters must be shared by the gunicorn workers, and kept out of the broker's db.
        assert env["CACHE_URL"].startswith("redis://") and env["CACHE_URL"] != env["CELERY_BROKER_URL"]
    example = (ROOT / "docker" / ".env.example").read_text()
    for variable in ("SECRET_KEY", "PSEUDONYMISATION_KEY", "ALLOWED_HOSTS", "DEBUG"):
        assert re.search(rf"^{variable}=", example, re.M), variable
        assert hasattr(settings, variable)


def test_celery_commands_name_the_real_app():
    entrypoint = (ROOT / "docker" / "entrypoint.sh").read_text()
    for name in ("worker", "beat"):
        assert COMPOSE["services"][name]["command"] == ["docker/entrypoint.sh", name]
        (app,) = set(re.findall(rf"exec celery -A (\S+) {name} ", entrypoint))
        module = importlib.import_module(app)
        assert module.celery_app.main == "privacy_ledger"


def _entrypoint_branch(name: str) -> str:
    entrypoint = (ROOT / "docker" / "entrypoint.sh").read_text()
    return re.search(rf"^  {name}\)\n(.*?)^    ;;", entrypoint, re.S | re.M).group(1)


def test_worker_beat_and_web_start_only_after_the_migrations():
    migrate = COMPOSE["services"]["migrate"]
    assert migrate["command"] == ["docker/entrypoint.sh", "migrate"]
    assert migrate["restart"] == "no"  # a one-shot; restarting it would loop
    assert "python manage.py migrate --noinput" in _entrypoint_branch("migrate")
    for name in ("web", "worker", "beat"):
        depends = COMPOSE["services"][name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        # Without compose's ordering (docker run, an orchestrator), the process itself waits.
        assert _entrypoint_branch(name).lstrip().startswith("wait_for_migrations"), name
        assert "manage.py migrate --noinput" not in _entrypoint_branch(name), "only `migrate` migrates"
    assert "python manage.py migrate --check" in (ROOT / "docker" / "entrypoint.sh").read_text()


def test_the_database_password_is_never_pasted_into_a_url():
    for name in ("migrate", "web", "worker", "beat"):
        env = COMPOSE["services"][name]["environment"]
        assert "POSTGRES_PASSWORD" not in env["DATABASE_URL"]
        assert env["DATABASE_PASSWORD"].startswith("${POSTGRES_PASSWORD")


def test_the_web_health_check_reaches_healthz_without_an_allowed_host():
    """The probe calls 127.0.0.1, which is not in ALLOWED_HOSTS: /healthz must answer it anyway
    (tests/test_http_hardening.py::test_healthz_answers_the_containers_probe_whatever_its_host)."""
    probe = COMPOSE["services"]["web"]["healthcheck"]["test"]
    assert probe[:3] == ["CMD", "python", "-c"]
    assert "http://127.0.0.1:8000/healthz" in probe[3]
    compile(probe[3], "healthcheck", "exec")


def test_gunicorn_limits_are_explicit_and_above_djangos():
    from django.conf import settings

    web = _entrypoint_branch("web")
    line = int(re.search(r"--limit-request-line (\d+)", web).group(1))
    assert line == 8190  # gunicorn's maximum
    assert line > settings.API_MAX_QUERY_STRING_LENGTH  # so API clients get Django's JSON 414 first
    assert re.search(r"--limit-request-field_size \d+", web) and re.search(r"--limit-request-fields \d+", web)


def test_static_files_live_in_the_image_not_in_the_data_volume():
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    static_root = re.search(r"STATIC_ROOT=(\S+)", dockerfile).group(1)
    mounts = [m.split(":")[1] for s in COMPOSE["services"].values() for m in s.get("volumes", [])]
    assert not any(static_root == m or static_root.startswith(m.rstrip("/") + "/") for m in mounts), mounts
    ignored = (ROOT / "docker" / "Dockerfile.dockerignore").read_text().split()
    assert {".venv", "var", "docker/.env"} <= set(ignored)


def _collectstatic_env_of_the_image() -> dict[str, str]:
    """The variables the Dockerfile sets for its collectstatic (ENV lines and the RUN's own)."""
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in dockerfile.splitlines():
        if line.startswith("ENV "):
            env.update(token.split("=", 1) for token in shlex.split(line[4:]))
    (run,) = [line for line in dockerfile.splitlines() if "manage.py collectstatic" in line]
    for token in shlex.split(run[len("RUN "):]):
        if "=" not in token:
            break
        name, value = token.split("=", 1)
        env[name] = value
    return env


PAGE_CHECK = """
import re, sys
import django
django.setup()
from django.test import Client
client = Client(HTTP_HOST="ledger.example.org")
page = client.get("/admin/login/", secure=True)
print("login", page.status_code)
for href in re.findall(r'href="(/static/[^"]+[.]css)"', page.content.decode()):
    asset = client.get(href, secure=True)
    body = b"".join(asset.streaming_content) if asset.streaming else asset.content
    print("css", asset.status_code, len(body), href)
    print("cache", asset.get("Cache-Control", ""))
"""


def test_the_image_static_build_serves_the_admin_under_debug_off(tmp_path):
    """The image's collectstatic (its own variables, DEBUG=0), then the admin under production
    settings: the login page answers 200 and its stylesheets are served by WhiteNoise."""
    build = _collectstatic_env_of_the_image()
    assert build["DEBUG"] == "0", "the image must collect static files as production serves them"
    base = {k: v for k, v in os.environ.items()
            if k not in {"DJANGO_SETTINGS_MODULE", "DEBUG", "SECRET_KEY", "PSEUDONYMISATION_KEY", "ALLOWED_HOSTS",
                         "DATABASE_URL", "CELERY_BROKER_URL", "STORAGE_ROOT", "STATIC_ROOT", "CACHE_URL"}}
    static_root = tmp_path / "static"
    build.update(STATIC_ROOT=str(static_root), STORAGE_ROOT=str(tmp_path / "build-data"),
                 DATABASE_URL=f"sqlite:///{tmp_path / 'build.sqlite3'}")
    collected = subprocess.run([sys.executable, "manage.py", "collectstatic", "--noinput"], cwd=ROOT,
                               env={**base, **build}, capture_output=True, text=True, timeout=600)
    assert collected.returncode == 0, collected.stderr[-3000:]
    assert (static_root / "staticfiles.json").exists()

    runtime = {
        "DEBUG": "0",
        "SECRET_KEY": "runtime-secret-key-for-this-test-0123456789-abcdefghijklmnop",
        "PSEUDONYMISATION_KEY": "runtime-pseudonymisation-key-0123456789",
        "ALLOWED_HOSTS": "ledger.example.org",
        "SECURE_PROXY_SSL_HEADER": "1",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'runtime.sqlite3'}",
        "STORAGE_ROOT": str(tmp_path / "data"),
        "STATIC_ROOT": str(static_root),
        "DJANGO_SETTINGS_MODULE": "config.settings",
    }
    served = subprocess.run([sys.executable, "-c", PAGE_CHECK], cwd=ROOT, env={**base, **runtime},
                            capture_output=True, text=True, timeout=300)
    assert served.returncode == 0, served.stderr[-3000:]
    lines = served.stdout.splitlines()
    assert "login 200" in lines, served.stdout + served.stderr[-3000:]
    css = [line.split() for line in lines if line.startswith("css ")]
    assert css, "the login page links no stylesheet"
    assert all(status == "200" and int(size) > 0 for _, status, size, _ in css), css
    assert any(".css" in href and re.search(r"\.[0-9a-f]{12}\.css$", href) for *_, href in css), (
        "stylesheets are not the manifest's hashed names"
    )
    # Hashed names are cached for ever; only API answers and downloads are no-store.
    caching = [line for line in lines if line.startswith("cache ")]
    assert caching and all("max-age=315360000" in line and "no-store" not in line for line in caching), caching


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
