"""Executing training runs: claim, train outside any transaction, register, settle.

Training is deliberately NOT one transaction: it runs for minutes, and its progress must be
visible to the API while it runs. It is three short transactions instead: claim, progress
updates (single-row UPDATEs), finish.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import numpy as np
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from governance.services import ServiceConflict, audit_event_record
from mlops import artifacts, data, ledger
from mlops.models import (
    FINISHED_STATUSES,
    LedgerState,
    ModelVersion,
    PrivacyLedgerEntry,
    RunStatus,
    SisaAssignment,
    SisaCheckpoint,
    TrainingRun,
)
from mlops.services.budget import _ledger_settle
from mlops.services.config import _json_number, _schema_for, _train_config
from mlops.services.registry import model_version_register

logger = logging.getLogger(__name__)



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


def _read_training_data(run: TrainingRun):
    """The run's tensors and split, recording first how many amendments its snapshot had:
    counted before the rows are read, so an amendment committed meanwhile is never taken
    as seen (the run then counts as holding the people it removed, which is the safe side)."""
    from provenance.selectors import snapshot_amendment_count

    seen = snapshot_amendment_count(snapshot_id=run.snapshot_id)
    TrainingRun.objects.filter(pk=run.pk).update(trained_on_amendment=seen)
    run.trained_on_amendment = seen
    return _split_tensors(run)


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


def _train_single(run: TrainingRun, reporter: _ProgressReporter) -> _Outcome:
    import torch

    from mlops.engine import accounting, dp_train

    tensors, split, labelled = _read_training_data(run)
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
    run.encoding = {**run.encoding, **tensors.encoding}  # keeps the split rule recorded at queue time
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

    tensors, split, labelled = _read_training_data(run)
    run.encoding = {**run.encoding, **tensors.encoding}  # keeps the split rule recorded at queue time
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
    _ledger_settle(run=locked, state=LedgerState.SPENT, rdp=outcome.rdp, epsilon=outcome.epsilon)
    version = model_version_register(
        run=locked, artifact_path=relative, artifact_sha256=digest, metrics=outcome.metrics, epsilon=outcome.epsilon,
        delta=locked.delta, is_sisa_ensemble=bool(locked.sisa),
        status_reason=f"retrained to replace version {locked.remediates.version}" if locked.remediates_id else "",
    )
    audit_event_record(
        actor=None, action="training_run.succeeded", object_type="training_run", object_id=locked.pk,
        details={
            "model_version": version.pk, "epsilon": _json_number(outcome.epsilon), "delta": locked.delta,
            "non_private": locked.allow_non_private, "artifact_sha256": digest, "attempt": locked.attempts,
            "sisa_assignments": len(outcome.sisa_assignments), "sisa_checkpoints": len(outcome.sisa_checkpoints),
            "trained_on_amendment": locked.trained_on_amendment,
        },
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
            from celery import current_app

            current_app.control.revoke(task_id)

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
