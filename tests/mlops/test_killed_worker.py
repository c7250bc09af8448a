"""A worker SIGKILLed mid-run: the task is redelivered and the run retried cleanly.

Real processes: two ``celery -A config worker`` subprocesses on a dedicated queue, the
test database and the test's artifact folder passed through the environment. The first
is killed while the run is training (after it wrote SISA checkpoints of shard 0); Redis
redelivers the unacknowledged task (acks_late) once the visibility timeout passes, which
the second worker is given as 5 s. Production keeps the long default (see docs/mlops.md).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from mlops import artifacts, services
from mlops.models import ModelVersion, RunStatus, SisaCheckpoint, TrainingRun
from tests.mlops.factories import make_snapshot
from tests.mlops.helpers import wait_for, wait_for_run

QUEUE = "mlops-killed-worker-test"
pytestmark = pytest.mark.skipif(
    settings.CELERY_EMBEDDED,
    reason="embedded mode has no broker and no worker process to kill; set CELERY_BROKER_URL to run it",
)


def _database_url() -> str:
    db = connection.settings_dict
    if connection.vendor != "postgresql":
        pytest.skip("worker subprocesses share the test database only on PostgreSQL")
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{db['USER']}{password}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def _start_worker(name: str, *, visibility_timeout: int | None) -> subprocess.Popen:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DEBUG": "1",
        "DATABASE_URL": _database_url(),
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        # Killed work is taken over once its lease lapses: seconds here, a minute by default.
        "TASK_LEASE_SECONDS": "5",
        "STORAGE_ROOT": str(settings.STORAGE_ROOT),
    }
    env.pop("CELERY_VISIBILITY_TIMEOUT", None)
    if visibility_timeout is not None:
        env["CELERY_VISIBILITY_TIMEOUT"] = str(visibility_timeout)
    celery = Path(sys.executable).with_name("celery")
    return subprocess.Popen(
        [str(celery), "-A", "config", "worker", "--pool", "solo", "-Q", QUEUE, "-n", f"{name}@%h",
         "--without-gossip", "--without-mingle", "-l", "WARNING"],
        cwd=settings.BASE_DIR, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_killed_worker_leads_to_a_clean_retry():
    snapshot = make_snapshot(n=1200, d=10, seed=6)
    from config.celery import app

    app.control.purge()
    first = _start_worker("killed", visibility_timeout=None)
    second = None
    try:
        run = services.training_run_queue(
            # Long enough that shard 1 is still training when shard 0's checkpoints appear
            # (a 0.2 s poll), on a fast machine too.
            snapshot=snapshot, name="killed-worker", epochs=60, batch_size=32, noise_multiplier=1.0,
            sisa={"shards": 2, "slices": 2}, model_spec={"hidden_sizes": [64]}, queue=QUEUE,
        )
        # Kill it while training, after shard 0 left its checkpoints on disk.
        wait_for(lambda: len(artifacts.run_files(run.pk)) >= 2, timeout=240, what="shard 0 checkpoints")
        run.refresh_from_db()
        assert run.status == RunStatus.RUNNING and run.attempts == 1
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        left_behind = artifacts.run_files(run.pk)
        assert left_behind  # partial files a naive retry would leave orphaned

        second = _start_worker("retry", visibility_timeout=5)
        run = wait_for_run(run.pk, timeout=300)
    finally:
        _stop(first)
        if second is not None:
            _stop(second)

    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.attempts == 2
    versions = ModelVersion.objects.filter(training_run=run)
    assert versions.count() == 1
    checkpoints = SisaCheckpoint.objects.filter(training_run=run)
    assert checkpoints.count() == 4
    referenced = {artifacts.absolute(p) for p in checkpoints.values_list("artifact_path", flat=True)}
    referenced.add(artifacts.absolute(versions.get().artifact_path))
    assert set(artifacts.run_files(run.pk)) == referenced  # exactly the artifacts, no orphans
    assert not TrainingRun.objects.filter(status=RunStatus.RUNNING).exists()
