"""Services that write MLOps records: queueing and executing DP training runs, the
privacy-budget ledger, membership-inference audits.

Keyword-only, atomic where a write must be all-or-nothing, audited. Training itself is
deliberately NOT one transaction: it runs for minutes, and its progress must be visible
to the API while it runs. It is three short transactions instead: claim, progress
updates (single-row UPDATEs), finish.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import numpy as np
from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from governance.models import Purpose
from governance.roles import DPO, has_role
from governance.services import ServiceConflict, ServiceError, audit_event_record
from mlops import artifacts, data, ledger
from mlops.engine.spec import ACCOUNTANTS, TASKS, TrainConfig
from mlops.models import (
    FINISHED_STATUSES,
    LedgerState,
    MembershipInferenceAudit,
    ModelStatus,
    ModelVersion,
    PrivacyBudget,
    PrivacyLedgerEntry,
    RunStatus,
    SisaAssignment,
    SisaCheckpoint,
    TrainingRun,
)
from provenance.models import Dataset, Snapshot

logger = logging.getLogger(__name__)

# Errors the engine raises as "<field>: <reason>" for fields that the API groups.
_ENGINE_FIELD_TO_API = {
    "hidden_sizes": "model_spec",
    "activation": "model_spec",
    "dropout": "model_spec",
    "n_features": "snapshot",
    "n_train": "snapshot",
    "n_classes": "snapshot",
    "plan": "snapshot",
}
MODEL_SPEC_KEYS = frozenset({"hidden_sizes", "activation", "dropout"})
MAX_SISA_SHARDS = 64
MAX_SISA_SLICES = 32


def _engine_error(exc: ValueError) -> ServiceError:
    message = str(exc)
    prefix, _, reason = message.partition(":")
    prefix = prefix.strip()
    if reason and prefix.isidentifier():
        return ServiceError(message, field=_ENGINE_FIELD_TO_API.get(prefix, prefix))
    return ServiceError(message)


# --- Queueing ------------------------------------------------------------------------


@dataclass
class _Plan:
    """The privacy cost a run is expected to have, computed before it is queued."""

    noise_multiplier: float | None
    sample_rate: float | None
    steps: int | None
    epsilon: float | None  # by the run's own accountant at its δ; None = ∞
    rdp: np.ndarray | None  # the ledger's RDP curve; None = non-private
    shard_sizes: list[int] = field(default_factory=list)
    shard_noise_multipliers: list[float] | None = None


def _resolve_snapshot(*, snapshot: Snapshot | int | None, dataset: Dataset | int | None, purpose, requested_by) -> Snapshot:
    if snapshot is not None:
        if isinstance(snapshot, Snapshot):
            return snapshot
        found = Snapshot.objects.select_related("dataset").filter(pk=snapshot).first()
        if found is None:
            raise ServiceError(f"Snapshot {snapshot} does not exist.", field="snapshot")
        return found
    if dataset is None:
        raise ServiceError("Give a snapshot, or a dataset and a purpose to take one now.", field="snapshot")
    if not isinstance(dataset, Dataset):
        found_dataset = Dataset.objects.filter(pk=dataset).first()
        if found_dataset is None:
            raise ServiceError(f"Dataset {dataset} does not exist.", field="dataset")
        dataset = found_dataset
    if purpose is None:
        raise ServiceError("A purpose is required to take a snapshot of the dataset.", field="purpose")
    if not isinstance(purpose, Purpose):
        found_purpose = Purpose.objects.filter(code=purpose).first()
        if found_purpose is None:
            raise ServiceError(f"Unknown purpose {purpose!r}.", field="purpose")
        purpose = found_purpose
    try:
        from provenance.services import snapshot_create
    except ImportError:
        raise ServiceError("Snapshots cannot be taken here yet; give an existing snapshot.", field="snapshot")
    return snapshot_create(dataset=dataset, purpose=purpose, requested_by=requested_by)


def _train_config(run: TrainingRun) -> TrainConfig:
    spec = run.model_spec or {}
    return TrainConfig(
        task=run.task,
        hidden_sizes=list(spec.get("hidden_sizes", [64])),
        activation=spec.get("activation", "relu"),
        dropout=spec.get("dropout", 0.0),
        optimizer=run.optimizer,
        learning_rate=run.learning_rate,
        epochs=run.epochs,
        batch_size=run.batch_size,
        seed=run.seed,
        max_grad_norm=run.max_grad_norm,
        # The engine derives σ from the target itself (per shard for SISA, where shard sizes differ).
        noise_multiplier=run.requested_noise_multiplier if not run.allow_non_private else None,
        target_epsilon=run.target_epsilon if not run.allow_non_private else None,
        target_delta=run.target_delta,
        accountant=run.accountant,
        private=not run.allow_non_private,
    )


def _default_delta(n: int) -> float:
    # Well below 1/N, the usual choice (δ ≪ 1/N) so no single record can leak outright.
    return min(1e-5, 0.1 / max(n, 1))


def _plan_single(*, config: TrainConfig, n_train: int) -> _Plan:
    from mlops.engine import accounting

    sample_rate = config.sample_rate(n_train)
    steps = config.total_steps(n_train)
    if not config.private:
        return _Plan(None, sample_rate, steps, None, None)
    sigma = config.noise_multiplier
    if sigma is None:
        sigma = accounting.noise_multiplier_for(
            target_epsilon=config.target_epsilon,
            target_delta=config.target_delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=config.accountant,
        )
    history = [[sigma, sample_rate, steps]]
    epsilon = accounting.epsilon_of_history(history=history, delta=config.target_delta, accountant=config.accountant)
    rdp = np.asarray(accounting.rdp_curve(noise_multiplier=sigma, sample_rate=sample_rate, steps=steps))
    return _Plan(sigma, sample_rate, steps, epsilon, rdp)


def _sisa_stage_plan(*, config: TrainConfig, slice_sizes: list[int]) -> list[tuple[float, int]]:
    """[(sample_rate, steps)] of a shard's stages, exactly as the engine will train them."""
    from mlops.engine import sisa

    slice_of_row = np.repeat(np.arange(len(slice_sizes)), slice_sizes)
    return [tuple(p) for p in sisa.shard_plan(slice_of_row=slice_of_row, slices=len(slice_sizes), config=config)]


def _plan_sisa(*, config: TrainConfig, shard_slice_sizes: list[list[int]]) -> _Plan:
    """Per-shard plans; shards are disjoint by person, so the ensemble's ε is the maximum."""
    from mlops.engine import accounting

    if not config.private:
        return _Plan(None, None, None, None, None, [sum(s) for s in shard_slice_sizes])
    worst_eps, worst_sigma, worst_rdp = 0.0, None, None
    sigmas: list[float] = []
    for slice_sizes in shard_slice_sizes:
        plan = _sisa_stage_plan(config=config, slice_sizes=slice_sizes)
        sigma = config.noise_multiplier
        if sigma is None:
            sigma = accounting.noise_multiplier_for_plan(
                target_epsilon=config.target_epsilon, target_delta=config.target_delta, plan=plan,
                accountant=config.accountant,
            )
        sigmas.append(float(sigma))
        history = [[sigma, q, steps] for q, steps in plan]
        eps = accounting.epsilon_of_history(history=history, delta=config.target_delta, accountant=config.accountant)
        rdp = np.asarray(accounting.rdp_curve_of_history(history=history))
        worst_rdp = rdp if worst_rdp is None else np.maximum(worst_rdp, rdp)
        if eps >= worst_eps:
            worst_eps, worst_sigma = eps, sigma
    return _Plan(worst_sigma, None, None, worst_eps, worst_rdp, [sum(s) for s in shard_slice_sizes], sigmas)


def _check_number(value: Any, name: str, *, low: float | None = None, high: float | None = None,
                  low_inclusive: bool = True, high_inclusive: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ServiceError(f"{name}: must be a number", field=name)
    if low is not None and (value < low or (value == low and not low_inclusive)):
        raise ServiceError(f"{name}: must be {'at least' if low_inclusive else 'above'} {low}", field=name)
    if high is not None and (value > high or (value == high and not high_inclusive)):
        raise ServiceError(f"{name}: must be {'at most' if high_inclusive else 'below'} {high}", field=name)


@transaction.atomic
def training_run_queue(
    *,
    snapshot: Snapshot | int | None = None,
    dataset: Dataset | int | None = None,
    purpose: Purpose | str | None = None,
    name: str = "",
    task: str = "binary",
    model_spec: dict | None = None,
    optimizer: str = "sgd",
    learning_rate: float = 0.1,
    epochs: int = 5,
    batch_size: int = 256,
    seed: int = 0,
    validation_split: float = 0.1,
    holdout_fraction: float = 0.2,
    target_epsilon: float | None = None,
    noise_multiplier: float | None = None,
    target_delta: float | None = None,
    max_grad_norm: float = 1.0,
    accountant: str = "rdp",
    allow_non_private: bool = False,
    sisa: dict | None = None,
    requested_by: Any = None,
    queue: str | None = None,
    enqueue: bool = True,
) -> TrainingRun:
    """Validate a training request, check it against the dataset's budget, queue it.

    Refuses (400, naming the field) what cannot train or would not give the promised
    guarantee, and (409, with cap, spent, reserved and planned ε) what would exceed the
    dataset's privacy budget. Nothing is written when it refuses. ``queue`` routes the
    task to a dedicated Celery queue (e.g. workers with more memory).
    """
    if task not in TASKS:
        raise ServiceError(f"task: must be one of {', '.join(TASKS)}", field="task")
    if accountant not in ACCOUNTANTS:
        raise ServiceError(f"accountant: must be one of {', '.join(ACCOUNTANTS)}", field="accountant")
    spec = dict(model_spec or {})
    unknown = sorted(set(spec) - MODEL_SPEC_KEYS)
    if unknown:
        raise ServiceError(f"model_spec: unknown option {unknown[0]!r}", field="model_spec")
    _check_number(validation_split, "validation_split", low=0.0, high=0.5)
    _check_number(holdout_fraction, "holdout_fraction", low=0.0, high=0.5)
    if target_epsilon is not None:
        _check_number(target_epsilon, "target_epsilon", low=0.0, low_inclusive=False)
    if noise_multiplier is not None:
        _check_number(noise_multiplier, "noise_multiplier", low=0.0, low_inclusive=False)
    _check_number(max_grad_norm, "max_grad_norm", low=0.0, low_inclusive=False)
    if allow_non_private and (target_epsilon is not None or noise_multiplier is not None):
        raise ServiceError(
            "target_epsilon: non-private training takes no target_epsilon or noise_multiplier", field="target_epsilon"
        )
    if sisa is not None:
        if not isinstance(sisa, dict) or set(sisa) != {"shards", "slices"}:
            raise ServiceError('sisa: must be {"shards": S, "slices": R}', field="sisa")
        for key, limit in (("shards", MAX_SISA_SHARDS), ("slices", MAX_SISA_SLICES)):
            value = sisa[key]
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
                raise ServiceError(f"sisa: {key} must be an integer from 1 to {limit}", field="sisa")

    snap = _resolve_snapshot(snapshot=snapshot, dataset=dataset, purpose=purpose, requested_by=requested_by)
    labels = data.snapshot_labels(snapshot_id=snap.pk)
    if not labels.labels:
        raise ServiceError(f"Snapshot {snap.pk} has no records: nothing to train on.", field="snapshot")
    classes = data.label_classes(labels.labels)
    if len(classes) < 2:
        raise ServiceError(
            f"Snapshot {snap.pk} has {len(classes)} class(es) only; classification needs at least two.",
            field="snapshot",
        )
    if task == "binary" and len(classes) != 2:
        raise ServiceError(f"task: binary classification needs two classes, the snapshot has {len(classes)}", field="task")
    labelled = np.array([v is not None for v in labels.labels])
    split = data.subject_split(
        subject_ids=labels.subject_ids, seed=seed if isinstance(seed, int) else 0,
        validation_split=validation_split, holdout_fraction=holdout_fraction,
    )
    train_mask = labelled & (split == data.SPLIT_TRAIN)
    n_train = int(train_mask.sum())
    n_validation = int((labelled & (split == data.SPLIT_VALIDATION)).sum())
    n_holdout = int((labelled & (split == data.SPLIT_HOLDOUT)).sum())
    if n_train == 0:
        raise ServiceError("No records are left for training after the validation and hold-out split.", field="snapshot")

    shard_slice_sizes: list[list[int]] = []
    if sisa is not None:
        from mlops.engine import sisa as engine_sisa

        train_subjects = labels.subject_ids[train_mask]
        unique_subjects, counts = np.unique(train_subjects, return_counts=True)
        assignment = engine_sisa.assign_shards(
            subject_ids=[int(s) for s in unique_subjects], shards=sisa["shards"], slices=sisa["slices"], seed=seed
        )
        sizes = np.zeros((sisa["shards"], sisa["slices"]), dtype=np.int64)
        for subject_id, count in zip(unique_subjects.tolist(), counts.tolist(), strict=True):
            shard, slice_ = assignment[subject_id]
            sizes[shard, slice_] += count
        shard_slice_sizes = sizes.tolist()
        smallest = int(sizes.sum(axis=1).min())
        if smallest == 0:
            raise ServiceError("sisa: a shard would receive no records; use fewer shards", field="sisa")

    if target_delta is None:
        target_delta = _default_delta(n_train)
    config_values = {
        "task": task, "hidden_sizes": spec.get("hidden_sizes", [64]), "activation": spec.get("activation", "relu"),
        "dropout": spec.get("dropout", 0.0), "optimizer": optimizer, "learning_rate": learning_rate,
        "epochs": epochs, "batch_size": batch_size, "seed": seed, "max_grad_norm": max_grad_norm,
        "noise_multiplier": noise_multiplier, "target_epsilon": target_epsilon, "target_delta": target_delta,
        "accountant": accountant, "private": not allow_non_private,
    }
    try:
        config = TrainConfig.from_dict(config_values)
        # Each SISA shard is its own DP release, so δ < 1/N must hold for the smallest shard.
        config.validate(min(sum(s) for s in shard_slice_sizes) if shard_slice_sizes else n_train)
        from mlops.engine.models import build_model

        build_model(n_features=max(1, data.n_input_features(snap.dataset.schema)), n_classes=len(classes), config=config)
        if shard_slice_sizes:
            plan = _plan_sisa(config=config, shard_slice_sizes=shard_slice_sizes)
        else:
            plan = _plan_single(config=config, n_train=n_train)
    except ValueError as exc:
        raise _engine_error(exc)

    run = TrainingRun.objects.create(
        name=name or snap.dataset.name,
        snapshot=snap,
        task=task,
        model_spec={"hidden_sizes": list(config.hidden_sizes), "activation": config.activation, "dropout": config.dropout},
        optimizer=optimizer,
        learning_rate=learning_rate,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        validation_split=validation_split,
        holdout_fraction=holdout_fraction,
        target_epsilon=target_epsilon,
        requested_noise_multiplier=noise_multiplier,
        target_delta=target_delta,
        max_grad_norm=max_grad_norm,
        accountant=accountant,
        allow_non_private=allow_non_private,
        sisa=sisa,
        requested_by=requested_by if getattr(requested_by, "pk", None) else None,
        celery_task_id=str(uuid.uuid4()),
        n_train=n_train,
        n_validation=n_validation,
        n_holdout=n_holdout,
        n_classes=len(classes),
        planned_epsilon=plan.epsilon,
        noise_multiplier=plan.noise_multiplier,
        shard_noise_multipliers=plan.shard_noise_multipliers,
        sample_rate=plan.sample_rate,
        steps=plan.steps,
        delta=target_delta,
        encoding={"classes": classes},
    )
    ledger_numbers = _ledger_reserve(run=run, dataset_id=snap.dataset_id, plan=plan)
    audit_event_record(
        actor=requested_by,
        action="training_run.queued",
        object_type="training_run",
        object_id=run.pk,
        details={
            "snapshot": snap.pk, "dataset": snap.dataset_id, "private": not allow_non_private,
            "planned_epsilon": plan.epsilon, "delta": target_delta, "noise_multiplier": plan.noise_multiplier,
            "accountant": accountant, "sisa": sisa, "n_train": n_train, "n_holdout": n_holdout, **ledger_numbers,
        },
    )
    if enqueue:
        # enqueue=False is for a caller that runs training_run_execute itself (erasure remediation).
        _enqueue_training(run_id=run.pk, task_id=run.celery_task_id, queue=queue)
    return run


def _enqueue_training(*, run_id: int, task_id: str, queue: str | None) -> None:
    from mlops.tasks import train_model

    options: dict[str, Any] = {"task_id": task_id}
    if queue:
        options["queue"] = queue
    transaction.on_commit(lambda: train_model.apply_async(args=[run_id], **options))


# --- Ledger ----------------------------------------------------------------------------


def _json_number(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


def _ledger_reserve(*, run: TrainingRun, dataset_id: int, plan: _Plan) -> dict:
    """Add the run's planned cost to the ledger, refusing it (409) if the cap would be exceeded."""
    total = ledger.ledger_total_locked(dataset_id=dataset_id)
    budget = PrivacyBudget.objects.filter(dataset_id=dataset_id).first()
    numbers: dict = {}
    if budget is not None:
        spent = ledger.curve_from_json(total.spent_rdp)
        reserved = ledger.curve_from_json(total.reserved_rdp)
        spent_eps = math.inf if total.non_private_runs else ledger.epsilon_of_curve(spent, delta=budget.delta)
        committed = ledger.sum_curves([c for c in (spent, reserved) if c is not None])
        committed_eps = math.inf if total.non_private_runs else ledger.epsilon_of_curve(committed, delta=budget.delta)
        planned_eps = math.inf if plan.rdp is None else ledger.epsilon_of_curve(plan.rdp, delta=budget.delta)
        after = math.inf if plan.rdp is None or total.non_private_runs else ledger.epsilon_of_curve(
            ledger.sum_curves([c for c in (committed, plan.rdp) if c is not None]), delta=budget.delta
        )
        numbers = {
            "epsilon_cap": budget.epsilon_cap,
            "budget_delta": budget.delta,
            "spent_epsilon": _json_number(spent_eps),
            "committed_epsilon": _json_number(committed_eps),
            "planned_epsilon_at_budget_delta": _json_number(planned_eps),
            "epsilon_after": _json_number(after),
        }
        if after > budget.epsilon_cap:
            reason = "non-private training (ε = ∞)" if plan.rdp is None else f"ε would reach {after:.4g}"
            raise ServiceConflict(
                f"Over the privacy budget of dataset {dataset_id}: {reason} at δ={budget.delta:g}, "
                f"the cap is {budget.epsilon_cap:g} (spent {spent_eps:.4g}, including runs in progress "
                f"{committed_eps:.4g}, this run {planned_eps:.4g}).",
                **numbers,
            )
    PrivacyLedgerEntry.objects.create(
        dataset_id=dataset_id,
        training_run=run,
        state=LedgerState.RESERVED,
        non_private=plan.rdp is None,
        planned_epsilon=plan.epsilon,
        planned_rdp=ledger.curve_to_json(plan.rdp),
        delta=run.target_delta,
    )
    ledger.ledger_total_recompute(total=total)
    return numbers


def _ledger_settle(*, run: TrainingRun, state: str, rdp: np.ndarray | None = None, epsilon: float | None = None) -> None:
    entry = PrivacyLedgerEntry.objects.filter(training_run=run).first()
    if entry is None:
        return
    total = ledger.ledger_total_locked(dataset_id=entry.dataset_id)
    entry.state = state
    if state == LedgerState.SPENT:
        entry.rdp_curve = ledger.curve_to_json(rdp)
        entry.epsilon = epsilon
    entry.save(update_fields=["state", "rdp_curve", "epsilon", "updated_at"])
    ledger.ledger_total_recompute(total=total)


@transaction.atomic
def privacy_budget_set(*, dataset: Dataset, epsilon_cap: float, delta: float, actor: Any) -> PrivacyBudget:
    """Set a dataset's ε cap at δ (DPO only); the previous value is kept in the audit event."""
    if not has_role(actor, DPO):
        raise PermissionDenied("Only a DPO may set a privacy budget.")
    _check_number(epsilon_cap, "epsilon_cap", low=0.0, low_inclusive=False)
    _check_number(delta, "delta", low=0.0, high=1.0, low_inclusive=False)
    budget = PrivacyBudget.objects.select_for_update().filter(dataset=dataset).first()
    previous = {"epsilon_cap": budget.epsilon_cap, "delta": budget.delta} if budget else None
    if budget is None:
        budget = PrivacyBudget(dataset=dataset)
    budget.epsilon_cap = float(epsilon_cap)
    budget.delta = float(delta)
    budget.set_by = actor if getattr(actor, "pk", None) else None
    budget.set_at = timezone.now()
    budget.save()
    audit_event_record(
        actor=actor,
        action="privacy_budget.set",
        object_type="dataset",
        object_id=dataset.pk,
        details={"epsilon_cap": budget.epsilon_cap, "delta": budget.delta, "previous": previous},
    )
    return budget


# --- Execution -------------------------------------------------------------------------


class _Cancelled(Exception):
    pass


ProgressCallback = Callable[[dict], None]


@transaction.atomic
def _claim(*, run_id: int) -> tuple[TrainingRun | None, bool]:
    """Mark the run running; a run found already running was redelivered and starts clean."""
    run = TrainingRun.objects.select_for_update().filter(pk=run_id).first()
    if run is None or run.status in FINISHED_STATUSES:
        return run, False
    redelivered = run.status == RunStatus.RUNNING
    removed = 0
    if redelivered:
        # The previous worker died mid-run (acks_late redelivered the task): drop what it left.
        SisaCheckpoint.objects.filter(training_run=run).delete()
        SisaAssignment.objects.filter(training_run=run).delete()
        removed = artifacts.remove_run_files(run.pk)
    run.status = RunStatus.RUNNING
    run.attempts += 1
    run.started_at = timezone.now()
    run.finished_at = None
    run.progress = {"epoch": 0, "epochs": run.epochs, "step": 0, "epsilon": 0.0}
    run.epoch_metrics = []
    run.error = ""
    run.save(update_fields=["status", "attempts", "started_at", "finished_at", "progress", "epoch_metrics", "error"])
    audit_event_record(
        actor=None, action="training_run.started", object_type="training_run", object_id=run.pk,
        details={"attempt": run.attempts, "redelivered": redelivered, "orphan_files_removed": removed},
    )
    return run, True


def _status_of(run_id: int) -> str | None:
    return TrainingRun.objects.filter(pk=run_id).values_list("status", flat=True).first()


@dataclass
class _Outcome:
    state_dict: dict
    metrics: dict
    epsilon: float | None
    noise_multiplier: float | None
    sample_rate: float | None
    steps: int | None
    history: Any
    rdp: np.ndarray | None
    sisa_assignments: list[SisaAssignment] = field(default_factory=list)
    sisa_checkpoints: list[SisaCheckpoint] = field(default_factory=list)


class _ProgressReporter:
    """Writes progress to the run row and the caller's callback after every epoch."""

    def __init__(self, run: TrainingRun, on_progress: ProgressCallback | None):
        self.run = run
        self.on_progress = on_progress
        self.metrics: list[dict] = []
        self.steps_done = 0
        self._last_check = 0.0
        self._cancelled = False

    def epoch(self, report, *, shard: int | None = None, epochs: int | None = None) -> None:
        self.steps_done = int(report.steps)  # the engine reports cumulative steps
        row = {
            "epoch": report.epoch, "steps": report.steps, "loss": _json_number(report.loss),
            "train_accuracy": report.train_accuracy, "val_accuracy": report.val_accuracy,
            "epsilon": _json_number(report.epsilon),
        }
        if shard is not None:
            row["shard"] = shard
        self.metrics.append(row)
        progress = {"epoch": report.epoch, "epochs": epochs or self.run.epochs, "step": self.steps_done,
                    "epsilon": _json_number(report.epsilon)}
        if shard is not None:
            progress.update(shard=shard, shards=self.run.sisa["shards"])
        TrainingRun.objects.filter(pk=self.run.pk, status=RunStatus.RUNNING).update(
            progress=progress, epoch_metrics=self.metrics
        )
        if self.on_progress is not None:
            self.on_progress({"run_id": self.run.pk, **progress})

    def should_stop(self) -> bool:
        # At most one query a second: cancellation need not be instant, training steps are.
        now = time.monotonic()
        if now - self._last_check >= 1.0:
            self._last_check = now
            self._cancelled = _status_of(self.run.pk) != RunStatus.RUNNING
        return self._cancelled


def _split_tensors(run: TrainingRun):
    dataset = run.snapshot.dataset
    tensors = data.snapshot_tensors(
        snapshot_id=run.snapshot_id, schema=_schema_for(run, dataset.schema), classes=run.encoding["classes"]
    )
    split = data.subject_split(
        subject_ids=tensors.subject_ids, seed=run.seed,
        validation_split=run.validation_split, holdout_fraction=run.holdout_fraction,
    )
    labelled = tensors.y >= 0
    return tensors, split, labelled


def _schema_for(run: TrainingRun, schema: dict) -> dict:
    """The dataset schema, with the category lists the run was trained with once known."""
    features = run.encoding.get("features")
    if not features:
        return schema
    return {"features": features, "label": schema.get("label")}


def _train_single(run: TrainingRun, reporter: _ProgressReporter) -> _Outcome:
    import torch

    from mlops.engine import accounting, dp_train

    tensors, split, labelled = _split_tensors(run)
    train = labelled & (split == data.SPLIT_TRAIN)
    val = labelled & (split == data.SPLIT_VALIDATION)
    config = _train_config(run)
    result = dp_train.train(
        X_train=torch.from_numpy(tensors.X[train]), y_train=torch.from_numpy(tensors.y[train]),
        X_val=torch.from_numpy(tensors.X[val]) if val.any() else None,
        y_val=torch.from_numpy(tensors.y[val]) if val.any() else None,
        n_classes=run.n_classes, config=config, on_epoch=reporter.epoch, should_stop=reporter.should_stop,
    )
    if result.stopped or _status_of(run.pk) != RunStatus.RUNNING:
        raise _Cancelled()
    run.encoding = tensors.encoding
    last = result.epochs[-1] if result.epochs else None
    metrics = {
        "loss": _json_number(last.loss) if last else None,
        "train_accuracy": last.train_accuracy if last else None,
        "val_accuracy": last.val_accuracy if last else None,
        "n_train": int(train.sum()), "n_validation": int(val.sum()), "n_holdout": run.n_holdout,
    }
    rdp = None
    if config.private:
        rdp = np.asarray(accounting.rdp_curve_of_history(history=result.accountant_history))
    return _Outcome(
        state_dict=artifacts.strip_wrapper_prefix(result.state_dict), metrics=metrics,
        epsilon=result.epsilon if config.private else None, noise_multiplier=result.noise_multiplier,
        sample_rate=result.sample_rate, steps=result.steps, history=result.accountant_history, rdp=rdp,
    )


def _train_sisa(run: TrainingRun, reporter: _ProgressReporter) -> _Outcome:
    import torch

    from mlops.engine import accounting, sisa
    from mlops.engine.models import build_model

    tensors, split, labelled = _split_tensors(run)
    run.encoding = tensors.encoding
    train = labelled & (split == data.SPLIT_TRAIN)
    val = labelled & (split == data.SPLIT_VALIDATION)
    shards, slices = run.sisa["shards"], run.sisa["slices"]
    config = _train_config(run)
    subject_ids = tensors.subject_ids[train]
    unique_subjects, inverse = np.unique(subject_ids, return_inverse=True)
    assignment = sisa.assign_shards(subject_ids=[int(s) for s in unique_subjects], shards=shards, slices=slices, seed=run.seed)
    placed = np.array([assignment[int(s)] for s in unique_subjects], dtype=np.int64).reshape(-1, 2)
    shard_of_row, slice_of_row = placed[inverse, 0], placed[inverse, 1]
    X_train, y_train = tensors.X[train], tensors.y[train]

    run_dir = artifacts.run_dir_relative(run.pk)
    ensemble_state: dict = {}
    checkpoints: list[SisaCheckpoint] = []
    histories: dict[str, Any] = {}
    shard_eps: list[float] = []
    curves: list[np.ndarray] = []
    sigmas: list[float] = []
    models = []
    for shard in range(shards):
        rows = shard_of_row == shard
        shard_config = config
        if config.private and run.shard_noise_multipliers:
            # σ was derived per shard at queue time; passing it spares a second bisection.
            shard_config = replace(config, noise_multiplier=run.shard_noise_multipliers[shard], target_epsilon=None)
        result = sisa.train_shard(
            X=torch.from_numpy(X_train[rows]), y=torch.from_numpy(y_train[rows]), slice_of_row=slice_of_row[rows],
            slices=slices, n_classes=run.n_classes, config=shard_config, shard=shard,
            on_epoch=lambda report, shard=shard: reporter.epoch(report, shard=shard),
            should_stop=reporter.should_stop,
        )
        if result.result.stopped or reporter.should_stop():
            raise _Cancelled()
        for slice_, state in enumerate(result.checkpoints):
            relative = f"{run_dir}/shard-{shard}-slice-{slice_}.safetensors"
            digest = artifacts.save_weights(relative=relative, state_dict=artifacts.strip_wrapper_prefix(state))
            checkpoints.append(SisaCheckpoint(
                training_run=run, shard=shard, slice=slice_, artifact_path=relative, artifact_sha256=digest,
                n_records=int((rows & (slice_of_row <= slice_)).sum()),
            ))
        final = artifacts.strip_wrapper_prefix(result.result.state_dict)
        ensemble_state.update({f"shard{shard}.{k}": v for k, v in final.items()})
        model = build_model(n_features=tensors.X.shape[1], n_classes=run.n_classes, config=config)
        model.load_state_dict(final)
        models.append(model)
        histories[str(shard)] = result.result.accountant_history
        if config.private:
            shard_eps.append(result.result.epsilon)
            curves.append(np.asarray(accounting.rdp_curve_of_history(history=result.result.accountant_history)))
            sigmas.append(result.result.noise_multiplier or 0.0)
        if config.private:
            # ε of checkpoint r is the composition of stages 0..r only.
            stages = sisa.shard_plan(slice_of_row=slice_of_row[rows], slices=slices, config=config)
            sigma = result.result.noise_multiplier
            for checkpoint in checkpoints[len(checkpoints) - len(result.checkpoints):]:
                history = [[sigma, q, steps] for q, steps in stages[: checkpoint.slice + 1]]
                checkpoint.epsilon = accounting.epsilon_of_history(
                    history=history, delta=config.target_delta, accountant=config.accountant
                )
    val_accuracy = None
    if val.any():
        proba = sisa.ensemble_predict_proba(models=models, X=torch.from_numpy(tensors.X[val]))
        val_accuracy = float((proba.argmax(dim=1).numpy() == tensors.y[val]).mean())
    proba_train = sisa.ensemble_predict_proba(models=models, X=torch.from_numpy(X_train))
    train_accuracy = float((proba_train.argmax(dim=1).numpy() == y_train).mean())
    assignments = [
        SisaAssignment(training_run=run, subject_id=int(s), shard=int(p[0]), slice=int(p[1]))
        for s, p in zip(unique_subjects.tolist(), placed.tolist(), strict=True)
    ]
    metrics = {
        "train_accuracy": train_accuracy, "val_accuracy": val_accuracy, "n_train": int(train.sum()),
        "n_validation": int(val.sum()), "n_holdout": run.n_holdout, "shards": shards, "slices": slices,
        "shard_epsilons": shard_eps,
    }
    return _Outcome(
        state_dict=ensemble_state, metrics=metrics,
        epsilon=max(shard_eps) if config.private else None,
        noise_multiplier=min(sigmas) if sigmas else None, sample_rate=None, steps=None, history=histories,
        rdp=np.max(np.vstack(curves), axis=0) if curves else None,
        sisa_assignments=assignments, sisa_checkpoints=checkpoints,
    )


def training_run_execute(*, run_id: int, on_progress: ProgressCallback | None = None) -> TrainingRun | None:
    """Train a queued run, register its model and settle its ledger entry.

    Idempotent: a finished run (succeeded, failed, cancelled) is left alone. A run found
    'running' was redelivered after its worker died; its partial files are removed and
    it starts again from scratch.
    """
    run, claimed = _claim(run_id=run_id)
    if not claimed:
        return run
    run = TrainingRun.objects.select_related("snapshot__dataset").get(pk=run_id)
    reporter = _ProgressReporter(run, on_progress)
    try:
        outcome = _train_sisa(run, reporter) if run.sisa else _train_single(run, reporter)
        relative = f"{artifacts.run_dir_relative(run.pk)}/model.safetensors"
        digest = artifacts.save_weights(
            relative=relative, state_dict=outcome.state_dict,
            metadata={"training_run": str(run.pk), "format": "sisa-ensemble" if run.sisa else "mlp"},
        )
    except _Cancelled:
        abandoned = _abandon(run_id=run_id, status=RunStatus.CANCELLED, reason="cancelled while training")
        _emit_openlineage(run_id)
        return abandoned
    except Exception as exc:
        logger.exception("training run %s failed", run_id)
        abandoned = _abandon(run_id=run_id, status=RunStatus.FAILED, reason=f"{type(exc).__name__}: {exc}")
        _emit_openlineage(run_id)
        return abandoned
    model_version = _finish(run=run, outcome=outcome, relative=relative, digest=digest, progress=reporter.metrics)
    if model_version is not None and run.n_holdout > 0:
        from mlops.tasks import audit_membership_inference

        audit_membership_inference.delay_on_commit(model_version.pk)
    _emit_openlineage(run_id)
    run.refresh_from_db()
    return run


def _emit_openlineage(run_id: int) -> None:
    from mlops.tasks import training_run_openlineage_emit

    training_run_openlineage_emit.delay_on_commit(run_id)


@transaction.atomic
def _finish(*, run: TrainingRun, outcome: _Outcome, relative: str, digest: str, progress: list) -> ModelVersion | None:
    locked = TrainingRun.objects.select_for_update().get(pk=run.pk)
    if locked.status != RunStatus.RUNNING:
        # Cancelled or failed by the sweeper while training: publish nothing.
        artifacts.remove_run_files(run.pk)
        return None
    now = timezone.now()
    locked.status = RunStatus.SUCCEEDED
    locked.finished_at = now
    locked.epoch_metrics = progress
    locked.progress = {**locked.progress, "epsilon": _json_number(outcome.epsilon)}
    locked.epsilon = outcome.epsilon
    locked.delta = run.target_delta if not run.allow_non_private else None
    locked.noise_multiplier = outcome.noise_multiplier
    locked.sample_rate = outcome.sample_rate
    locked.steps = outcome.steps
    locked.accountant_history = outcome.history
    locked.rdp_curve = ledger.curve_to_json(outcome.rdp)
    locked.encoding = {**run.encoding, "classes": run.encoding.get("classes", locked.encoding.get("classes"))}
    locked.save()
    SisaAssignment.objects.bulk_create(outcome.sisa_assignments, batch_size=5000)
    SisaCheckpoint.objects.bulk_create(outcome.sisa_checkpoints)
    previous = (
        ModelVersion.objects.select_for_update()
        .filter(name=locked.name, status=ModelStatus.ACTIVE)
        .order_by("-version")
        .first()
    )
    number = (ModelVersion.objects.filter(name=locked.name).aggregate(m=Max("version"))["m"] or 0) + 1
    version = ModelVersion.objects.create(
        training_run=locked, name=locked.name, version=number, artifact_path=relative, artifact_sha256=digest,
        metrics=outcome.metrics, epsilon=outcome.epsilon, delta=locked.delta,
        non_private=locked.allow_non_private, is_sisa_ensemble=bool(locked.sisa), supersedes=previous,
    )
    if previous is not None:
        ModelVersion.objects.filter(pk=previous.pk).update(
            status=ModelStatus.SUPERSEDED, status_reason=f"superseded by version {number}"
        )
    _ledger_settle(run=locked, state=LedgerState.SPENT, rdp=outcome.rdp, epsilon=outcome.epsilon)
    audit_event_record(
        actor=None, action="training_run.succeeded", object_type="training_run", object_id=locked.pk,
        details={
            "model_version": version.pk, "epsilon": _json_number(outcome.epsilon), "delta": locked.delta,
            "non_private": locked.allow_non_private, "artifact_sha256": digest, "attempt": locked.attempts,
            "sisa_assignments": len(outcome.sisa_assignments), "sisa_checkpoints": len(outcome.sisa_checkpoints),
        },
    )
    audit_event_record(
        actor=None, action="model_version.registered", object_type="model_version", object_id=version.pk,
        details={"name": version.name, "version": number, "training_run": locked.pk,
                 "supersedes": previous.pk if previous else None},
    )
    return version


@transaction.atomic
def _abandon(*, run_id: int, status: str, reason: str) -> TrainingRun:
    run = TrainingRun.objects.select_for_update().get(pk=run_id)
    removed = artifacts.remove_run_files(run.pk)
    if run.status in (RunStatus.RUNNING, RunStatus.QUEUED):
        run.status = status
        run.error = reason[:2000]
        run.finished_at = timezone.now()
        run.save(update_fields=["status", "error", "finished_at"])
        _ledger_settle(run=run, state=LedgerState.RELEASED)
    audit_event_record(
        actor=None, action=f"training_run.{status}", object_type="training_run", object_id=run.pk,
        details={"reason": reason[:500], "files_removed": removed},
    )
    return run


@transaction.atomic
def training_run_cancel(*, run: TrainingRun, actor: Any) -> TrainingRun:
    """Cancel a queued or running run; a running worker notices within about a second."""
    run = TrainingRun.objects.select_for_update().get(pk=run.pk)
    if run.status in FINISHED_STATUSES:
        raise ServiceConflict(f"Training run {run.pk} is already {run.status}; it cannot be cancelled.")
    was = run.status
    run.status = RunStatus.CANCELLED
    run.finished_at = timezone.now()
    run.error = f"cancelled by {getattr(actor, 'get_username', lambda: actor)()}"
    run.save(update_fields=["status", "finished_at", "error"])
    _ledger_settle(run=run, state=LedgerState.RELEASED)
    audit_event_record(
        actor=actor, action="training_run.cancelled", object_type="training_run", object_id=run.pk,
        details={"was": was},
    )
    if was == RunStatus.QUEUED and run.celery_task_id and not settings.CELERY_EMBEDDED:
        task_id = run.celery_task_id

        def _revoke() -> None:
            from config.celery import app

            app.control.revoke(task_id)

        transaction.on_commit(_revoke)
    return run


@transaction.atomic
def training_run_fail_stuck(*, time_limit: timedelta | None = None) -> int:
    """Fail runs 'running' for longer than the time limit (their worker is gone or hung)."""
    limit = time_limit or timedelta(seconds=settings.MLOPS_TRAINING_TIME_LIMIT)
    cutoff = timezone.now() - limit
    stuck = list(
        TrainingRun.objects.select_for_update()
        .filter(status=RunStatus.RUNNING, started_at__lt=cutoff)
        .values_list("pk", flat=True)
    )
    if not stuck:
        return 0
    reason = f"no result within the time limit of {int(limit.total_seconds())} s; failed by the sweeper"
    TrainingRun.objects.filter(pk__in=stuck).update(status=RunStatus.FAILED, error=reason, finished_at=timezone.now())
    datasets = set(
        PrivacyLedgerEntry.objects.filter(training_run_id__in=stuck).values_list("dataset_id", flat=True)
    )
    for dataset_id in sorted(datasets):
        total = ledger.ledger_total_locked(dataset_id=dataset_id)
        PrivacyLedgerEntry.objects.filter(training_run_id__in=stuck, dataset_id=dataset_id).update(
            state=LedgerState.RELEASED
        )
        ledger.ledger_total_recompute(total=total)
    for run_id in stuck:
        artifacts.remove_run_files(run_id)
    audit_event_record(
        actor=None, action="training_run.stuck_failed", object_type="training_run", object_id="",
        details={"count": len(stuck), "time_limit_seconds": int(limit.total_seconds())},
    )
    return len(stuck)


# --- Membership-inference audit ------------------------------------------------------


def model_version_load(*, model_version: ModelVersion):
    """The model(s) of a version, built from the registry's weights (hash checked)."""
    from mlops.engine.models import build_model

    run = model_version.training_run
    state = artifacts.load_weights(relative=model_version.artifact_path, expected_sha256=model_version.artifact_sha256)
    config = _train_config(run)
    n_features = sum(
        len(f["categories"]) if f.get("type") == "category" else 1 for f in run.encoding.get("features", [])
    )
    if not run.sisa:
        model = build_model(n_features=n_features, n_classes=run.n_classes, config=config)
        model.load_state_dict(state)
        return [model]
    models = []
    for shard in range(run.sisa["shards"]):
        prefix = f"shard{shard}."
        model = build_model(n_features=n_features, n_classes=run.n_classes, config=config)
        model.load_state_dict({k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)})
        models.append(model)
    return models


def _per_example_losses(models: list, X, y: np.ndarray) -> np.ndarray:
    import torch

    from mlops.engine import sisa

    with torch.no_grad():
        for m in models:
            m.eval()
        proba = sisa.ensemble_predict_proba(models=models, X=X).numpy()
    return -np.log(np.clip(proba[np.arange(len(y)), y], 1e-12, 1.0))


@transaction.atomic
def membership_inference_audit_run(*, model_version_id: int, max_examples: int | None = None) -> MembershipInferenceAudit:
    """Loss-threshold membership inference (Yeom et al. 2018) against a model version.

    Members are the run's training records, non-members the records of the persons held
    out of training for this purpose. Idempotent: one audit per model version.
    """
    import torch

    from mlops.engine import mia

    version = ModelVersion.objects.select_related("training_run__snapshot__dataset").get(pk=model_version_id)
    existing = version.membership_inference_audits.first()
    if existing is not None:
        return existing
    run = version.training_run
    limit = max_examples or settings.MLOPS_MIA_MAX_EXAMPLES
    tensors, split, labelled = _split_tensors(run)
    members = np.nonzero(labelled & (split == data.SPLIT_TRAIN))[0]
    nonmembers = np.nonzero(labelled & (split == data.SPLIT_HOLDOUT))[0]
    if len(nonmembers) == 0:
        raise ServiceConflict(f"Training run {run.pk} held out no one: there are no non-members to audit against.")
    rng = np.random.default_rng(run.seed)
    if len(members) > limit:
        members = np.sort(rng.choice(members, size=limit, replace=False))
    if len(nonmembers) > limit:
        nonmembers = np.sort(rng.choice(nonmembers, size=limit, replace=False))
    models = model_version_load(model_version=version)
    member_losses = _per_example_losses(models, torch.from_numpy(tensors.X[members]), tensors.y[members])
    nonmember_losses = _per_example_losses(models, torch.from_numpy(tensors.X[nonmembers]), tensors.y[nonmembers])
    result = mia.loss_threshold_attack(member_losses=member_losses, nonmember_losses=nonmember_losses)
    audit = MembershipInferenceAudit.objects.create(
        model_version=version, auc=result.auc, advantage=result.advantage,
        tpr_at_1pct_fpr=result.tpr_at_1pct_fpr, tpr_at_01pct_fpr=result.tpr_at_01pct_fpr,
        n_members=result.n_members, n_nonmembers=result.n_nonmembers, roc=result.roc,
    )
    audit_event_record(
        actor=None, action="membership_inference_audit.completed", object_type="model_version", object_id=version.pk,
        details={"audit": audit.pk, "auc": result.auc, "advantage": result.advantage,
                 "tpr_at_1pct_fpr": result.tpr_at_1pct_fpr, "n_members": result.n_members,
                 "n_nonmembers": result.n_nonmembers},
    )
    return audit
