"""Serving decisions (issue 19): one explained row, and 10,000 rows without explanations.

For each of the DP-training bench's MLPs (``bench_dp_training.MODELS``: 10→64→2 and
100→256→256→2), a model version is trained through the services on a dataset whose every
feature has published bounds (so the counterfactual search has every feature to try, its
worst case), then:

1. **One row with its explanation** through ``decisions_make`` (validate, encode, predict,
   output policy, Integrated Gradients through Captum, the counterfactual hint, the decision
   and its audit event recorded), 200 calls on 200 different rows; median and p95 against
   the bare forward pass of the same ``nn.Module`` on the same rows (``torch.no_grad``).
2. **10,000 rows without explanations**:
   (a) the compute path, no database: validation against the schema, encoding, forward,
       output policy and the keyed input hashes, against a bare ``torch`` forward of the
       same model over the same tensor; the note gives where the time goes and the floor
       any caller of a JSON API pays (turning 10,000 objects of values into that tensor);
   (b) the full service call, recording the 10,000 decisions, against a hand-written
       multi-row INSERT of the same 10,000 rows (the values the service stored, read back)
       into a plain table of the same columns, same database, committed.

Every arm runs on one intra-op thread, as the engine does (``explain._single_threaded``)
and as issue 21's plain-PyTorch baseline; the note gives the bare forward on the process's
default threads too. Repetitions alternate service and baseline; medians are compared.
"""

from __future__ import annotations

import cProfile
import hashlib
import hmac
import json
import pstats
import statistics
import time
import uuid

import numpy as np
import torch
from django.db import connection, transaction

from benchmarks.bench_dp_training import MODELS
from benchmarks.harness import BenchContext, Result, percentiles
from benchmarks.worlds import consented_snapshot

BOUNDS = (-4.0, 4.0)
EXPLAIN_CALLS = 200
BATCH_ROWS = 10_000
BATCH_REPEATS = 5
SERVICE_REPEATS = 3
FORWARD_CALLS = 2000


def _version(*, d: int, hidden: list[int], ctx: BenchContext):
    """A DP model version trained through the services on ``d`` bounded float features."""
    from mlops import services
    from mlops.models import ModelVersion, RunStatus

    snapshot = consented_snapshot(ctx.n(4000, 1000), d, seed=21 + d, bounds=BOUNDS, tag="bench-decisions")
    run = services.training_run_queue(
        snapshot=snapshot, name=f"bench-decisions-{d}-{uuid.uuid4().hex[:6]}", epochs=3, batch_size=256,
        noise_multiplier=1.0, holdout_fraction=0.0, model_spec={"hidden_sizes": hidden}, seed=5, enqueue=False,
    )
    run = services.training_run_execute(run_id=run.pk)
    if run.status != RunStatus.SUCCEEDED:
        raise RuntimeError(f"bench training run {run.pk} {run.status}: {run.error}")
    return ModelVersion.objects.select_related("training_run__snapshot__dataset").get(training_run=run)


def _rows(n: int, d: int, seed: int) -> list[dict]:
    """Rows as a JSON request body gives them: dicts of Python floats."""
    values = np.random.default_rng(seed).uniform(BOUNDS[0], BOUNDS[1], size=(n, d))
    return [{f"x{j}": float(v) for j, v in enumerate(r)} for r in values.tolist()]


def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    return previous


def _bare_forward_seconds(module: torch.nn.Module, X: torch.Tensor, calls: int) -> list[float]:
    out = []
    with torch.no_grad():
        for _ in range(calls):
            start = time.perf_counter()
            module(X)
            out.append(time.perf_counter() - start)
    return out


def _bench_explained_row(version, *, label: str) -> Result:
    from decisions.services import decisions_make, predictions
    from decisions.serving import served_model
    from mlops.selectors import output_policy_for

    d = len(version.training_run.encoding["features"])
    rows = _rows(EXPLAIN_CALLS, d, seed=7)
    ensemble = served_model(model_version=version)
    module = ensemble.shards[0]
    encoding = version.training_run.encoding
    schema = version.training_run.snapshot.dataset.schema
    classes = list(encoding["classes"])
    policy = output_policy_for(model_version=version)
    X_rows, _ = predictions.decisions_compute(ensemble=ensemble, clean=rows, encoding=encoding, kind=policy.kind,
                                              digits=policy.digits)
    previous = _one_thread()
    try:
        for r in rows[:10]:  # warm-up: Captum's imports, first-call allocations
            decisions_make(model_version=version, rows=[r], explain=True, actor="bench")
        service, explain_only, forward = [], [], []
        hints = 0
        for i, r in enumerate(rows):
            start = time.perf_counter()
            answer = decisions_make(model_version=version, rows=[r], explain=True, actor="bench")
            service.append(time.perf_counter() - start)
            hints += answer["decisions"][0]["explanation"]["counterfactual"] is not None
            x = X_rows[i: i + 1]
            start = time.perf_counter()
            predictions._explanations(ensemble, x, encoding=encoding, schema=schema, classes=classes)
            explain_only.append(time.perf_counter() - start)
            forward.extend(_bare_forward_seconds(module, torch.from_numpy(np.ascontiguousarray(x)), 10))
        # The two halves of an explanation, for the note.
        from mlops.engine import explain as engine

        actionable = predictions._actionable(encoding, schema)
        ig, cf = [], []
        for i in range(50):
            x = X_rows[i: i + 1]
            start = time.perf_counter()
            engine.explain(ensemble, x, encoding=encoding)
            ig.append(time.perf_counter() - start)
            start = time.perf_counter()
            engine.counterfactual_hint(ensemble, x[0], encoding=encoding, actionable=actionable)
            cf.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    p50, p95 = percentiles(service)
    f50, f95 = percentiles(forward)
    e50, e95 = percentiles(explain_only)
    return Result(
        name=f"one explained decision, MLP {label}: p95 of {EXPLAIN_CALLS} service calls", value=p95 * 1000, unit="ms",
        baseline="bare forward of the same module on the same row, p95", baseline_value=f95 * 1000,
        target="p95 < 50 ms",
        note=(f"median {p50 * 1000:.1f} ms (ratio {p50 / f50:.0f}), p95 {p95 * 1000:.1f} ms; bare forward median "
              f"{f50 * 1e6:.0f} µs; the explanation alone (IG + counterfactual, no database) median "
              f"{e50 * 1000:.1f} / p95 {e95 * 1000:.1f} ms, of which IG (Captum, 50 steps) "
              f"{statistics.median(ig) * 1000:.1f} ms and the counterfactual search "
              f"{statistics.median(cf) * 1000:.1f} ms; a counterfactual found for {hints} of {EXPLAIN_CALLS} rows; "
              f"the rest is validation, the policy read and the recorded decision + audit event"),
    )


def _compute_path(ensemble, rows: list[dict], *, schema: dict, encoding: dict, kind: str, digits: int):
    """What ``decisions_make`` does for a batch outside the database, in its order."""
    from decisions.services import predictions

    clean = predictions._rows_validate(rows, schema=schema)
    X, outputs = predictions.decisions_compute(ensemble=ensemble, clean=clean, encoding=encoding, kind=kind,
                                               digits=digits)
    hashes = predictions.input_hashes(clean)
    return X, outputs, hashes


def _profile_lines(fn, limit: int = 6) -> str:
    """The top functions by own time of one call, as 'name x ms' parts."""
    profiler = cProfile.Profile()
    profiler.enable()
    fn()
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = sum(row[2] for row in stats.stats.values())
    top = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:limit]
    parts = [f"{func[2]} ({func[0].rsplit('/', 1)[-1]}) {row[2] * 1000:.0f} ms" for func, row in top]
    return f"profile, own time of {total * 1000:.0f} ms under cProfile: " + ", ".join(parts)


def _bench_batch(version, *, label: str, ctx: BenchContext) -> list[Result]:
    from decisions.services import decisions_make, predictions
    from decisions.serving import served_model
    from mlops.selectors import output_policy_for

    n = ctx.n(BATCH_ROWS, 500)
    encoding = version.training_run.encoding
    schema = version.training_run.snapshot.dataset.schema
    d = len(encoding["features"])
    rows = _rows(n, d, seed=8)
    ensemble = served_model(model_version=version)
    module = ensemble.shards[0]
    policy = output_policy_for(model_version=version)
    X, _, _ = _compute_path(ensemble, rows, schema=schema, encoding=encoding, kind=policy.kind, digits=policy.digits)
    tensor = torch.from_numpy(np.ascontiguousarray(X))
    names = [f["name"] for f in encoding["features"]]

    def floor() -> None:
        # The least a JSON API must do with these rows: read the values into a tensor.
        torch.tensor([[r[k] for k in names] for r in rows], dtype=torch.float32)

    def hash_floor() -> None:
        # The least any service that records a keyed hash per decided row must do (item 2 of
        # the issue), whatever its input format: one HMAC-SHA-256 per row over the row's raw
        # float64 bytes, already in memory (the cheapest keyed hash of a row Python offers).
        raw = np.ascontiguousarray(X, dtype=np.float64)
        data, width = raw.tobytes(), raw.shape[1] * 8
        base = hmac.new(b"k" * 32, digestmod=hashlib.sha256)
        for i in range(len(raw)):
            mac = base.copy()
            mac.update(data[i * width:(i + 1) * width])
            mac.digest()

    previous = _one_thread()
    try:
        compute, bare, floors, hash_floors = [], [], [], []
        parts = {"validate": [], "encode+forward+policy": [], "hashes": []}
        for _ in range(BATCH_REPEATS):
            start = time.perf_counter()
            _compute_path(ensemble, rows, schema=schema, encoding=encoding, kind=policy.kind, digits=policy.digits)
            compute.append(time.perf_counter() - start)
            bare.append(min(_bare_forward_seconds(module, tensor, 3)))
            start = time.perf_counter()
            floor()
            floors.append(time.perf_counter() - start)
            start = time.perf_counter()
            hash_floor()
            hash_floors.append(time.perf_counter() - start)
            start = time.perf_counter()
            clean = predictions._rows_validate(rows, schema=schema)
            parts["validate"].append(time.perf_counter() - start)
            start = time.perf_counter()
            predictions.decisions_compute(ensemble=ensemble, clean=clean, encoding=encoding, kind=policy.kind,
                                          digits=policy.digits)
            parts["encode+forward+policy"].append(time.perf_counter() - start)
            start = time.perf_counter()
            predictions.input_hashes(clean)
            parts["hashes"].append(time.perf_counter() - start)
        profile = _profile_lines(lambda: _compute_path(ensemble, rows, schema=schema, encoding=encoding,
                                                       kind=policy.kind, digits=policy.digits))
    finally:
        torch.set_num_threads(previous)
    with torch.no_grad():
        default_threads = min(_bare_forward_seconds(module, tensor, 5))
    c, b, fl = statistics.median(compute), statistics.median(bare), statistics.median(floors)
    hf = statistics.median(hash_floors)
    split = ", ".join(f"{k} {statistics.median(v) * 1000:.1f} ms" for k, v in parts.items())
    compute_result = Result(
        name=f"{n} decisions, compute path (no database), MLP {label}", value=n / c, unit="rows/s",
        baseline="bare torch forward of the same module over the same tensor", baseline_value=n / b,
        target="ratio >= 0.5",
        note=(f"compute {c * 1000:.1f} ms ({split}), bare forward {b * 1000:.2f} ms "
              f"({default_threads * 1000:.2f} ms on {previous} threads); the floor of any JSON API, reading the "
              f"rows' values into a tensor, is {fl * 1000:.1f} ms alone: floor + forward against the forward is "
              f"ratio {b / (fl + b):.2f}, the compute path against that floor + forward {(fl + b) / c:.2f}; "
              f"whatever the input format, one keyed hash per row over its raw bytes is {hf * 1000:.1f} ms, "
              f"so no service recording one can pass ratio {b / (hf + b):.2f}; {profile}"),
    )

    service, inserts = [], []
    bare_rows: list[tuple] = []
    columns = ["model_version_id", "decided_at", "batch", "position", "outcome", "output", "output_policy",
               "explanation", "attributions_withheld", "subject_pseudonym", "input_hash", "requested_by_id"]
    from decisions.models import Decision

    table = f"bench_decision_plain_{uuid.uuid4().hex[:8]}"
    with connection.cursor() as cur:
        cur.execute(f"CREATE TABLE {table} AS SELECT {', '.join(columns)} FROM {Decision._meta.db_table} WHERE false")
    try:
        previous = _one_thread()
        try:
            decisions_make(model_version=version, rows=rows[:100], explain=False, actor="bench")  # warm-up
            for rep in range(SERVICE_REPEATS):
                start = time.perf_counter()
                answer = decisions_make(model_version=version, rows=rows, explain=False, actor="bench")
                service.append(time.perf_counter() - start)
                if rep == 0:
                    # The rows exactly as the service stored them, ready as SQL parameters.
                    stored = Decision.objects.filter(batch=answer["batch"]).order_by("position").values_list(*columns)
                    bare_rows = [tuple(json.dumps(v) if isinstance(v, (dict, list)) else v for v in row)
                                 for row in stored]
                inserts.append(_plain_insert(table, columns, bare_rows))
        finally:
            torch.set_num_threads(previous)
    finally:
        with connection.cursor() as cur:
            cur.execute(f"DROP TABLE {table}")
    s, i = statistics.median(service), statistics.median(inserts)
    service_result = Result(
        name=f"{n} decisions through decisions_make (recorded), MLP {label}", value=n / s, unit="rows/s",
        baseline=f"one hand-written multi-row INSERT of the same {n} rows into a plain table", baseline_value=n / i,
        target="ratio >= 0.5",
        note=(f"service {s * 1000:.0f} ms, INSERT {i * 1000:.0f} ms (committed), compute path {c * 1000:.0f} ms of "
              f"the service's; medians of {SERVICE_REPEATS}; the service also bulk-inserts into a table with 6 "
              f"indexes, a unique constraint and two foreign keys, and appends one audit event"),
    )
    return [compute_result, service_result]


def _plain_insert(table: str, columns: list[str], rows: list[tuple]) -> float:
    """Seconds for one multi-row INSERT of ``rows`` (SQLite: in chunks under its variable limit), committed."""
    per_statement = len(rows) if connection.vendor == "postgresql" else max(1, 30000 // len(columns))
    start = time.perf_counter()
    with transaction.atomic(), connection.cursor() as cur:
        for offset in range(0, len(rows), per_statement):
            chunk = rows[offset: offset + per_statement]
            value_lists = ", ".join(["(" + ", ".join(["%s"] * len(columns)) + ")"] * len(chunk))
            cur.execute(f"INSERT INTO {table} ({', '.join(columns)}) VALUES {value_lists}",
                        [v for row in chunk for v in row])
    return time.perf_counter() - start


def run(ctx: BenchContext) -> list[Result]:
    from decisions.serving import served_models_clear

    results = []
    for d, hidden in MODELS:
        label = "→".join(str(w) for w in [d, *hidden, 2])
        version = _version(d=d, hidden=hidden, ctx=ctx)
        served_models_clear()
        results.append(_bench_explained_row(version, label=label))
        results.extend(_bench_batch(version, label=label, ctx=ctx))
    return results
