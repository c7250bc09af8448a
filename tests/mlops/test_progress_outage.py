"""Progress reporting never fails the training it reports on.

A real worker process whose result backend (where the task's progress state goes) is a
Redis server this test starts on a port of its own; the server is killed while the run
trains. The run must still succeed: the run row, not the result backend, is the record.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from mlops import services
from mlops.models import ModelVersion, RunStatus
from tests.mlops.factories import make_snapshot
from tests.mlops.helpers import wait_for, wait_for_run

QUEUE = "mlops-progress-outage-test"
pytestmark = pytest.mark.skipif(
    settings.CELERY_EMBEDDED, reason="embedded mode reports no task state; set CELERY_BROKER_URL to run it",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _database_url() -> str:
    db = connection.settings_dict
    if connection.vendor != "postgresql":
        pytest.skip("worker subprocesses share the test database only on PostgreSQL")
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{db['USER']}{password}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_result_backend_outage_during_training_does_not_fail_the_run():
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        pytest.skip("redis-server is not installed")
    port = _free_port()
    backend = subprocess.Popen(
        [redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    env = {
        **os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", "DEBUG": "1", "DATABASE_URL": _database_url(),
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL, "CELERY_RESULT_BACKEND": f"redis://127.0.0.1:{port}/0",
        "STORAGE_ROOT": str(settings.STORAGE_ROOT),
    }
    worker = subprocess.Popen(
        [str(Path(sys.executable).with_name("celery")), "-A", "config", "worker", "--pool", "solo", "-Q", QUEUE,
         "-n", "progress-outage@%h", "--without-gossip", "--without-mingle", "-l", "WARNING"],
        cwd=settings.BASE_DIR, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        run = services.training_run_queue(
            snapshot=make_snapshot(n=1200, d=10, seed=8), name="progress-outage", epochs=80, batch_size=32,
            noise_multiplier=1.0, model_spec={"hidden_sizes": [64]}, queue=QUEUE,
        )
        # Progress has reached the result backend at least once; then the backend goes away.
        wait_for(lambda: (run.__class__.objects.get(pk=run.pk).progress or {}).get("epoch", 0) >= 2,
                 timeout=240, what="two epochs of progress")
        backend.send_signal(signal.SIGKILL)
        backend.wait(timeout=30)
        run = wait_for_run(run.pk, timeout=300)
    finally:
        for process in (worker, backend):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.progress["epoch"] == 80
    assert ModelVersion.objects.filter(training_run=run).count() == 1
