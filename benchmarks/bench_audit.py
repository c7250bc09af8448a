"""Audits: the audit chain's append rate, and what a membership-inference audit costs.

1. Audit events appended through the service (hash chain, head lock) against bare
   INSERTs of the same rows.
2. A privacy audit's cost as a multiple of the training it audits, measured in the same
   run on the DP-training bench's MLPs (``bench_dp_training.MODELS``): online LiRA with 8
   reference models (``mlops.engine.lira``) and the loss attack (``mlops.engine.mia``),
   each against one training run of the audited configuration. The pool is every
   member plus as many non-members, so each reference trains on about as many records as
   the target: LiRA's floor is 8×, and what lies above it is scoring and fitting.
"""

from __future__ import annotations

import statistics
import time
import uuid

import numpy
import torch
from django.db import connection, transaction
from django.utils import timezone

from benchmarks.bench_dp_training import MODELS
from benchmarks.harness import BenchContext, Result
from governance.services import audit_event_record
from mlops.engine import dp_train, lira, mia
from mlops.engine.spec import TrainConfig

LIRA_REFERENCES = 8
MIA_EPOCHS = 20  # as the MLOps bench's training run
MIA_REPEATS = 3  # median of three trainings and three loss attacks; LiRA (≈ 8 trainings) runs once


def run(ctx: BenchContext) -> list[Result]:
    return [_bench_chain(ctx), *_bench_mia_cost(ctx)]


def _bench_chain(ctx: BenchContext) -> Result:
    n = ctx.n(5000, 100)
    start = time.perf_counter()
    with transaction.atomic():
        for i in range(n):
            audit_event_record(actor="bench", action="bench.event", object_type="bench", object_id=i, details={"i": i})
    service_rate = n / (time.perf_counter() - start)

    with connection.cursor() as cur:
        cur.execute("CREATE TEMP TABLE bench_audit_bare (LIKE governance_auditevent INCLUDING DEFAULTS)")
        now = timezone.now()
        start = time.perf_counter()
        with transaction.atomic():
            for i in range(n):
                cur.execute(
                    "INSERT INTO bench_audit_bare (id, position, prev_hash, hash, occurred_at, actor, action, object_type, object_id, subject_ref, details)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    [i, i, "0" * 64, uuid.uuid4().hex * 2, now, "bench", "bench.event", "bench", str(i), None, '{"i": 1}'],
                )
        bare_rate = n / (time.perf_counter() - start)
        cur.execute("DROP TABLE bench_audit_bare")
    return Result(
        name="audit events appended per second (hash chain, head lock)",
        value=service_rate, unit="events/s", baseline="bare INSERT one row at a time",
        baseline_value=bare_rate, target="ratio >= 0.2",
    )


def _bench_mia_cost(ctx: BenchContext) -> list[Result]:
    from django.conf import settings

    # Members and non-members both stay under the audit's per-side cap, so the pool is
    # everyone the audit would score and no reference trains on fewer records than it would.
    n = min(ctx.n(4096, 1024), settings.MLOPS_MIA_MAX_EXAMPLES)
    results: list[Result] = []
    for d, hidden in MODELS:
        results.extend(_mia_cost(n=n, d=d, hidden=hidden))
    return results


def _mia_cost(*, n: int, d: int, hidden: list[int]) -> list[Result]:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(2 * n, d, generator=g)
    y = (X @ torch.randn(d, generator=g) + 0.5 * torch.randn(2 * n, generator=g) > 0).long()
    is_member = numpy.arange(2 * n) < n
    config = TrainConfig(
        hidden_sizes=hidden, batch_size=256, learning_rate=0.05, epochs=MIA_EPOCHS, noise_multiplier=1.0, seed=3
    )
    training_times = []
    for _ in range(MIA_REPEATS):
        start = time.perf_counter()
        trained = dp_train.train(X_train=X[:n], y_train=y[:n], X_val=None, y_val=None, n_classes=2, config=config)
        training_times.append(time.perf_counter() - start)
    training = statistics.median(training_times)
    target = dp_train.load_model(state_dict=trained.state_dict, n_features=d, n_classes=2, config=config)

    loss_times, scoring_times = [], []
    for _ in range(MIA_REPEATS):
        # What the audit service does: float64 losses of both sides, then the figures with
        # their 1,000-resample bootstrap intervals.
        start = time.perf_counter()
        losses = mia.per_example_losses(models=[target], X=X, y=y)
        scored = time.perf_counter()
        mia.loss_threshold_attack(member_losses=losses[is_member], nonmember_losses=losses[~is_member], seed=3)
        loss_times.append(time.perf_counter() - start)
        scoring_times.append(scored - start)
    loss_seconds = statistics.median(loss_times)
    scoring = statistics.median(scoring_times)

    start = time.perf_counter()
    audit = lira.lira_audit(
        models=[target], X=X, y=y, is_member=is_member,
        train_fn=lira.single_model_train_fn(n_classes=2, config=config), n_references=LIRA_REFERENCES, seed=3,
    )
    lira_seconds = time.perf_counter() - start

    shape = "→".join(str(w) for w in [d, *hidden, 2])
    common = (
        f"{n} members + {n} non-members, DP-SGD σ=1, {MIA_EPOCHS} epochs, batch 256; "
        f"one training {training:.2f} s (median of {MIA_REPEATS})"
    )
    return [
        Result(
            name=f"LiRA audit, {LIRA_REFERENCES} references, MLP {shape}", value=lira_seconds, unit="s",
            baseline="one training run of the audited model", baseline_value=training, target="ratio <= 10",
            note=f"{common}; run once; LiRA AUC {audit.auc:.3f}",
        ),
        Result(
            name=f"loss-attack audit, MLP {shape}", value=loss_seconds, unit="s",
            baseline="one training run of the audited model", baseline_value=training, target="ratio <= 0.1",
            note=(
                f"{common}; median of {MIA_REPEATS}: float64 losses {1000 * scoring:.0f} ms, figures with "
                f"1,000 bootstrap resamples {1000 * (loss_seconds - scoring):.0f} ms (fixed per audit, whatever the training)"
            ),
        ),
    ]
