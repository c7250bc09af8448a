"""Audits: the audit chain's append rate, and what a membership-inference audit costs.

1. Audit events appended through the service (hash chain, head lock): single events by 4
   concurrent writers against bare one-row INSERTs by 4 writers, and batches
   (``audit_events_record``) against a bare multi-row INSERT of the same finished rows.
2. A privacy audit's cost as a multiple of the training it audits, measured in the same
   run on the DP-training bench's MLPs (``bench_dp_training.MODELS``): online LiRA with 8
   reference models (``mlops.engine.lira``) and the loss attack (``mlops.engine.mia``),
   each against one training run of the audited configuration. The pool is every
   member plus as many non-members, so each reference trains on about as many records as
   the target: LiRA's floor is 8×, and what lies above it is scoring and fitting.
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
import uuid
from collections.abc import Callable

import numpy
import torch
from django.db import connection, connections, transaction
from django.utils import timezone

from benchmarks.bench_dp_training import MODELS
from benchmarks.harness import BenchContext, Result
from governance.audit import canonical_json
from governance.services import audit_event_record, audit_events_record
from mlops.engine import dp_train, lira, mia
from mlops.engine.spec import TrainConfig

LIRA_REFERENCES = 8
MIA_EPOCHS = 20  # as the MLOps bench's training run
MIA_REPEATS = 3  # median of three trainings and three loss attacks; LiRA (≈ 8 trainings) runs once


WRITERS = 4  # concurrent appenders, each on its own connection
EVENTS_PER_COMMIT = 100  # single events each writer appends per transaction
BATCH = 1000  # events per audit_events_record call
ROUNDS = 3


def run(ctx: BenchContext) -> list[Result]:
    return [*_bench_chain(ctx), *_bench_mia_cost(ctx)]


def _bare_table(cur, *, indexed: bool = False) -> str:
    # The audit table's columns and defaults, without its chain, and without its indexes
    # unless ``indexed``. An ordinary table, written to the WAL as the audit table is: a
    # temporary one skips the WAL and flattered the baseline (see docs/governance.md, Speed).
    name = f"bench_audit_bare_{uuid.uuid4().hex[:8]}"
    like = "INCLUDING ALL" if indexed else "INCLUDING DEFAULTS INCLUDING IDENTITY"
    with transaction.atomic():
        cur.execute(f"CREATE TABLE {name} (LIKE governance_auditevent {like})")
    return name


def _bare_drop(cur, table: str) -> None:
    with transaction.atomic():
        cur.execute(f"DROP TABLE IF EXISTS {table}")


def _bare_row(i: int, now) -> list:
    return [i, "0" * 64, uuid.uuid4().hex * 2, now, "bench", "bench.event", "bench", str(i), None, '{"i": 1}']


def _concurrently(work: Callable[[int], None], *, events_each: int) -> float:
    """Events per second of ``WRITERS`` threads each running ``work(events_each)`` on its own
    connection, timed from a common start after each has opened its connection."""
    ready = threading.Barrier(WRITERS + 1)
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            connection.ensure_connection()
            ready.wait()
            work(events_each)
        except BaseException as exc:  # re-raised below: a failed writer must fail the benchmark
            errors.append(exc)
            ready.abort()  # the others, and the timer, must not wait for a writer that is gone
        finally:
            connections.close_all()

    threads = [threading.Thread(target=writer) for _ in range(WRITERS)]
    for t in threads:
        t.start()
    with contextlib.suppress(threading.BrokenBarrierError):  # a writer failed; its error is raised below
        ready.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return WRITERS * events_each / elapsed


def _single_events(n: int) -> None:
    for first in range(0, n, EVENTS_PER_COMMIT):
        with transaction.atomic():
            for i in range(first, min(n, first + EVENTS_PER_COMMIT)):
                audit_event_record(actor="bench", action="bench.event", object_type="bench", object_id=i, details={"i": i})


def _bare_single_rows(n: int) -> None:
    with connection.cursor() as cur:
        table = _bare_table(cur)
        now = timezone.now()
        try:
            for first in range(0, n, EVENTS_PER_COMMIT):
                with transaction.atomic():
                    for i in range(first, min(n, first + EVENTS_PER_COMMIT)):
                        cur.execute(
                            f"INSERT INTO {table} (position, prev_hash, hash, occurred_at, actor, action, object_type, object_id, subject_ref, details)"
                            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                            _bare_row(i, now),
                        )
        finally:
            _bare_drop(cur, table)


def _rounds(service: Callable[[], float], bare: Callable[[], float]) -> tuple[float, float, float]:
    """Both arms ``ROUNDS`` times, alternating, so that the load of a shared machine falls on
    both alike: the median of each arm and the median of the rounds' ratios."""
    pairs = [(service(), bare()) for _ in range(ROUNDS)]
    return (statistics.median(s for s, _ in pairs), statistics.median(b for _, b in pairs),
            statistics.median(s / b for s, b in pairs))


def _bench_chain(ctx: BenchContext) -> list[Result]:
    n = ctx.n(4000, 400)
    each = n // WRITERS
    service, bare, ratio = _rounds(
        lambda: _concurrently(_single_events, events_each=each),
        lambda: _concurrently(_bare_single_rows, events_each=each),
    )
    single = Result(
        name=f"audit events appended per second, {WRITERS} concurrent writers (hash chain, head lock)",
        value=service, unit="events/s", baseline=f"bare one-row INSERTs, {WRITERS} concurrent writers",
        baseline_value=bare, ratio=ratio, target="ratio >= 0.3",
        note=f"{WRITERS} x {each:,} events, each writer commits every {EVENTS_PER_COMMIT}; median of {ROUNDS} rounds",
    )
    batches = max(1, n // BATCH)
    state = {"offset": 0}

    def batch_service() -> float:
        first = state["offset"]
        state["offset"] += batches * BATCH
        specs = [
            [{"actor": "bench", "action": "bench.event", "object_type": "bench", "object_id": first + b * BATCH + i,
              "details": {"i": first + b * BATCH + i}} for i in range(BATCH)]
            for b in range(batches)
        ]
        start = time.perf_counter()
        with transaction.atomic():
            state["written"] = [audit_events_record(events=batch) for batch in specs]
        return batches * BATCH / (time.perf_counter() - start)

    def batch_bare(*, indexed: bool = False) -> float:
        # The very rows the service just wrote (hashes included), finished, in the same
        # multi-row statements: what is left is the chain's share.
        finished = [
            [[e.position, e.prev_hash, e.hash, e.occurred_at, e.actor, e.action, e.object_type, e.object_id,
              None, canonical_json(e.details)] for e in batch]
            for batch in state["written"]
        ]
        row_sql = "(%s, %s, %s, %s, %s, %s, %s, %s, %s::uuid, %s::jsonb)"
        with connection.cursor() as cur:
            table = _bare_table(cur, indexed=indexed)
            try:
                start = time.perf_counter()
                with transaction.atomic():
                    for rows in finished:
                        cur.execute(
                            f"INSERT INTO {table} (position, prev_hash, hash, occurred_at, actor, action, object_type, object_id, subject_ref, details)"
                            f" VALUES {', '.join([row_sql] * len(rows))} RETURNING id",
                            [value for row in rows for value in row],
                        )
                        cur.fetchall()
                return batches * BATCH / (time.perf_counter() - start)
            finally:
                _bare_drop(cur, table)

    batch_rate, bare_batch_rate, batch_ratio = _rounds(batch_service, batch_bare)
    indexed = batch_bare(indexed=True)
    batch = Result(
        name=f"audit events appended per second in batches of {BATCH:,} (audit_events_record)",
        value=batch_rate, unit="events/s", baseline=f"bare multi-row INSERTs of the same {BATCH:,} rows",
        baseline_value=bare_batch_rate, ratio=batch_ratio, target="ratio >= 0.5",
        note=(f"{batches * BATCH:,} events per transaction; median of {ROUNDS} rounds; the same rows into a copy "
              f"with the audit table's 8 indexes: {indexed:,.0f}/s (ratio {batch_rate / indexed:.2f})"),
    )
    return [single, batch]


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
