"""MLOps: the Celery task path against a direct service call, and the budget ledger read.

1. The same DP training run (same snapshot, seed and configuration) executed by a real
   ``celery -A config worker`` subprocess consuming from Redis, timed from the queueing
   commit until the run row says 'succeeded', against ``training_run_execute`` called
   directly in this process. Repetitions alternate; medians are compared.
2. The spent ε of a dataset whose ledger holds 1,000 runs, read through the selector
   (one row, one vectorised RDP→(ε, δ) conversion), against Opacus's RDP accountant
   recomputing the composition of 20 of those runs' histories.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from benchmarks.harness import BenchContext, Result
from benchmarks.worlds import consented_snapshot

# Alternating repetitions of each path; the median of five, because on a shared 2-core
# machine a single run of either path varies by ±0.4 s (medians of three swung 0.82–1.34).
CELERY_REPEATS = 5
BROKER = os.environ.get("BENCH_CELERY_BROKER_URL", "redis://127.0.0.1:6379/3")
QUEUE = "mlops-bench"
EPOCHS = 20
DIRECT_QUEUE = "mlops-bench-unconsumed"


def _start_worker() -> subprocess.Popen:
    db = connection.settings_dict
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    env = {
        **os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", "DEBUG": "1", "CELERY_BROKER_URL": BROKER,
        "DATABASE_URL": f"postgres://{db['USER']}{password}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}",
        "STORAGE_ROOT": str(settings.STORAGE_ROOT),
    }
    celery = Path(sys.executable).with_name("celery")
    return subprocess.Popen(
        [str(celery), "-A", "config", "worker", "--pool", "solo", "-Q", QUEUE, "-n", "mlops-bench@%h",
         "--without-gossip", "--without-mingle", "-l", "WARNING"],
        cwd=settings.BASE_DIR, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def _bench_celery_path(ctx: BenchContext) -> list[Result]:
    import redis

    from config.celery import app
    from mlops import services
    from mlops.models import TrainingRun

    try:
        redis.Redis.from_url(BROKER).ping()
    except redis.RedisError as exc:
        return [Result(name="training via Celery task vs direct service call", value=float("nan"), unit="s",
                       baseline="direct training_run_execute", baseline_value=float("nan"), target="ratio <= 1.05",
                       note=f"skipped: no Redis at {BROKER} ({exc})")]
    app.conf.update(broker_url=BROKER, task_always_eager=False, result_backend=BROKER)
    # An earlier benchmark in this process may have opened the connection pool while no broker
    # was configured, i.e. on Celery's default amqp://localhost (a RabbitMQ runs on some
    # machines): tasks would then vanish there. Start the pools and the backend afresh.
    if app._pool is not None:
        app._pool.force_close_all()
    app._pool = None
    app.amqp._producer_pool = None
    app._backend_cache = None
    app._local.__dict__.pop("backend", None)
    settings.CELERY_EMBEDDED = False  # the queue service must not think tasks run in-process
    snapshot = consented_snapshot(ctx.n(20000, 2000), 10, seed=11, tag="bench-mlops")
    # Twenty epochs, about two seconds (ten took 1.3-1.8 s once training got faster): the task
    # path's cost is a fixed overhead per run (publish, pick-up, result), reported in the note
    # in milliseconds as well as a ratio.
    config = {"snapshot": snapshot, "epochs": EPOCHS, "batch_size": 256, "noise_multiplier": 1.0, "holdout_fraction": 0.0,
              "validation_split": 0.1, "model_spec": {"hidden_sizes": [64]}, "seed": 3}
    worker = _start_worker()
    celery_times, direct_times = [], []
    try:
        # Warm-up: the worker's first task imports torch and Opacus.
        warm = services.training_run_queue(name="bench-warmup", queue=QUEUE, **config)
        _wait(warm.pk, TrainingRun)
        for rep in range(CELERY_REPEATS):
            start = time.perf_counter()
            run = services.training_run_queue(name=f"bench-celery-{rep}", queue=QUEUE, **config)
            # Block on the result backend (Redis pub/sub) instead of polling the database,
            # which would steal CPU from the worker on a small machine.
            app.AsyncResult(run.celery_task_id).get(timeout=600)
            celery_times.append(time.perf_counter() - start)
            _wait(run.pk, TrainingRun)

            start = time.perf_counter()
            direct = services.training_run_queue(name=f"bench-direct-{rep}", queue=DIRECT_QUEUE, **config)
            services.training_run_execute(run_id=direct.pk)
            direct_times.append(time.perf_counter() - start)

    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
        app.control.purge()
        redis.Redis.from_url(BROKER).delete(DIRECT_QUEUE)
    return [Result(
        name="DP training via Celery task vs direct service call", value=statistics.median(celery_times), unit="s",
        baseline="direct training_run_execute, same run config", baseline_value=statistics.median(direct_times),
        target="ratio <= 1.05",
        note=f"{snapshot.included_count} records, {EPOCHS} epochs, MLP 10→64→2, medians of {CELERY_REPEATS}, both timed from the "
             f"queue call; worker is a real subprocess; task-path overhead "
             f"{1000 * (statistics.median(celery_times) - statistics.median(direct_times)):.0f} ms per run",
    )]


def _wait(run_id: int, model, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = model.objects.filter(pk=run_id).values_list("status", flat=True).first()
        if status in ("succeeded", "failed", "cancelled"):
            if status != "succeeded":
                raise RuntimeError(f"bench training run {run_id} {status}")
            return
        time.sleep(0.02)
    raise RuntimeError(f"bench training run {run_id} did not finish in {timeout} s")


def _bench_ledger(ctx: BenchContext) -> list[Result]:
    from mlops import ledger, selectors
    from mlops.engine import accounting
    from mlops.models import LedgerState, PrivacyLedgerEntry, RunStatus, TrainingRun

    snapshot = consented_snapshot(50, 3, seed=12, tag="bench-mlops")
    n_runs = ctx.n(1000, 20)
    rng = np.random.default_rng(5)
    # 20 distinct run shapes (Opacus needs ~0.1 s per curve, so 1,000 distinct ones would
    # dominate the setup); the stored ledger rows are still 1,000.
    shapes = [[float(rng.uniform(0.8, 3.0)), float(rng.uniform(0.01, 0.3)), int(rng.integers(50, 2000))]
              for _ in range(20)]
    curves = [accounting.rdp_curve(noise_multiplier=s, sample_rate=q, steps=t) for s, q, t in shapes]
    now = timezone.now()
    runs = TrainingRun.objects.bulk_create([
        TrainingRun(name=f"bench-ledger-{i}", snapshot=snapshot, target_delta=1e-5, status=RunStatus.SUCCEEDED,
                    accountant_history=[shapes[i % 20]], finished_at=now, noise_multiplier=shapes[i % 20][0])
        for i in range(n_runs)
    ], batch_size=1000)
    if runs[0].pk is None:
        runs = list(TrainingRun.objects.filter(snapshot=snapshot).order_by("id"))
    PrivacyLedgerEntry.objects.bulk_create([
        PrivacyLedgerEntry(dataset_id=snapshot.dataset_id, training_run=run, state=LedgerState.SPENT,
                           rdp_curve=ledger.curve_to_json(curves[i % 20]), delta=1e-5)
        for i, run in enumerate(runs)
    ], batch_size=1000)
    start = time.perf_counter()
    with transaction.atomic():
        ledger.ledger_total_recompute(total=ledger.ledger_total_locked(dataset_id=snapshot.dataset_id))
    recompute_ms = (time.perf_counter() - start) * 1000

    reads = []
    for _ in range(50):
        start = time.perf_counter()
        spent = selectors.dataset_spent_epsilon(dataset_id=snapshot.dataset_id, delta=1e-5)
        reads.append(time.perf_counter() - start)
    read_ms = statistics.median(reads) * 1000

    # Opacus recomputes every run's RDP on each read; capped at 200 runs to keep the run short.
    n_opacus = min(n_runs, 200)
    history = [shapes[i % 20] for i in range(n_opacus)]
    from opacus.accountants import RDPAccountant

    opacus = RDPAccountant()
    opacus.history = [(float(a), float(b), int(c)) for a, b, c in history]
    start = time.perf_counter()
    opacus_eps = opacus.get_epsilon(delta=1e-5)
    opacus_ms = (time.perf_counter() - start) * 1000
    ledger_eps = ledger.epsilon_of_curve(
        ledger.sum_curves([np.asarray(curves[i % 20]) for i in range(n_opacus)]), delta=1e-5
    )
    check = f"; same {n_opacus} runs: ledger ε {ledger_eps:.6f} vs Opacus {opacus_eps:.6f}"
    return [Result(
        name=f"ledger: spent ε of a dataset with {n_runs} runs", value=read_ms, unit="ms",
        baseline=f"Opacus RDPAccountant recomputing {n_opacus} runs' composition", baseline_value=opacus_ms,
        target="ratio <= 0.1",
        note=f"absolute target < 10 ms; p50 of 50 reads; ε = {spent:.3f}; rebuilding the total from "
             f"{n_runs} entries (on each run's end) took {recompute_ms:.1f} ms{check}",
    )]


def run(ctx: BenchContext) -> list[Result]:
    return _bench_ledger(ctx) + _bench_celery_path(ctx)
