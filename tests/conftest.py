"""Fixtures shared by the whole suite: role users and API clients, and a real Celery worker."""

from __future__ import annotations

import time

import pytest
from django.conf import settings
from django.core.cache import cache
from rest_framework.test import APIClient

from governance import services
from governance.roles import ALL_ROLES, AUDITOR, DPO, ML_ENGINEER


@pytest.fixture(autouse=True)
def _fresh_throttles():
    """Throttle counters and cached state live in the (per-process) cache: each test starts clean."""
    cache.clear()
    yield


@pytest.fixture(autouse=True)
def _own_audit_checkpoints(tmp_path, settings):
    """Signed audit checkpoints live in a file outside the database, which no test rollback
    undoes: each test gets its own, so one test's checkpoints never look like a truncation of
    the next test's chain."""
    settings.AUDIT_CHECKPOINT_DIR = tmp_path / "audit-checkpoints"
    yield


def make_role_client(role: str, username: str | None = None) -> APIClient:
    user = services.user_ensure_with_role(username=username or f"test_{role}", role=role)
    _, raw_key = services.api_key_create(user=user, name="test")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {raw_key}")
    client.user = user
    return client


@pytest.fixture
def role_client(db):
    """Factory: role_client("dpo") -> an APIClient authenticated by a real API key."""
    return make_role_client


@pytest.fixture
def dpo_client(db) -> APIClient:
    return make_role_client(DPO)


@pytest.fixture
def ml_client(db) -> APIClient:
    return make_role_client(ML_ENGINEER)


@pytest.fixture
def auditor_client(db) -> APIClient:
    return make_role_client(AUDITOR)


@pytest.fixture
def anon_client() -> APIClient:
    return APIClient()


@pytest.fixture
def all_role_clients(db) -> dict[str, APIClient]:
    return {role: make_role_client(role) for role in ALL_ROLES}


@pytest.fixture(scope="session")
def _celery_session_worker(django_db_setup, django_db_blocker):
    """One real worker thread for the session, consuming from the configured broker."""
    if settings.CELERY_EMBEDDED:
        yield None
        return
    from celery.contrib.testing.worker import start_worker

    from config.celery import app

    app.control.purge()
    with django_db_blocker.unblock(), start_worker(
        app, pool="threads", concurrency=2, perform_ping_check=False, shutdown_timeout=30.0, loglevel="WARNING"
    ) as worker:
        _SESSION_WORKER["running"] = True
        try:
            yield worker
        finally:
            _SESSION_WORKER["running"] = False


# Whether the session worker is consuming: once started it serves every later test, also
# those that did not ask for it.
_SESSION_WORKER = {"running": False}


@pytest.fixture(autouse=True)
def _no_task_outlives_a_transactional_test(request):
    """A transactional test that never asked for the worker still queues work on commit (an
    audit when a model version is registered) and the session worker, started by an earlier
    test, picks it up. The flush after the test would then deadlock with that task's row
    locks (found by CI on test_a_run_that_read_the_old_snapshot_registers_stale). Asking for
    the database fixture here puts this teardown before the flush."""
    marker = request.node.get_closest_marker("django_db")
    transactional = marker is not None and (
        marker.kwargs.get("transaction") or (marker.args and marker.args[0])
    )
    if not transactional and "transactional_db" not in request.fixturenames:
        yield
        return
    request.getfixturevalue("transactional_db")
    yield
    if _SESSION_WORKER["running"]:
        _wait_until_the_worker_is_idle()


@pytest.fixture
def celery_worker(transactional_db, _celery_session_worker):
    """A real Celery worker when a broker is configured; in embedded mode tasks run in-process.

    Tests using it are transactional, so the worker's own database connection sees
    what the test committed.
    """
    if _celery_session_worker is not None:
        from config.celery import app

        app.control.purge()
    yield _celery_session_worker


def _wait_until_the_worker_is_idle(timeout: float = 60.0) -> None:
    """Work a test set off may still run when it ends (an audit queued when its model was
    registered). The flush that follows a transactional test truncates every table and would
    deadlock with that task's row locks (found by CI), so wait for the session worker, which
    runs in this process, to hold no request; purging first drops what has not started."""
    from celery.worker import state

    from config.celery import app

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        app.control.purge()
        if not state.active_requests and not state.reserved_requests:
            return
        time.sleep(0.1)
