"""Executing training runs: claim, train outside any transaction, register, settle.

Training is deliberately NOT one transaction: it runs for minutes, and its progress must be
visible to the API while it runs. It is three short transactions instead: claim, progress
updates (single-row UPDATEs), finish.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError, transaction
from django.utils import timezone

from governance.dispatch import task_dispatch_on_commit
from governance.leases import lease_heartbeat, lease_refuse_if_held
from governance.services import ServiceConflict, audit_event_record
from mlops import artifacts, ledger
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
from mlops.services.config import _json_number
from mlops.services.registry import model_version_register
from mlops.services.training import (
    ProgressCallback,
    _Cancelled,
    _Outcome,
    _ProgressReporter,
    _still_ours,
    _Superseded,
    _train_single,
    _train_sisa,
)

logger = logging.getLogger(__name__)
# The database failing under a worker is not the run failing: these are raised for the
# task to retry (see training_run_execute).
DATABASE_FAULTS = (OperationalError, InterfaceError)



@transaction.atomic
def _claim(*, run_id: int, takeover: bool = False) -> tuple[TrainingRun | None, bool]:
    """Mark the run running and take its lease.

    A run found running whose lease is live is being trained by another worker: this is
    a duplicate delivery, and it waits (``LeaseHeld``). One found running with a lapsed
    lease was left by a worker that died: it starts clean, unless it has died
    ``MLOPS_MAX_ATTEMPTS`` times already (then it is failed, not tried forever).
    ``takeover`` is for a caller that knows nobody else trains it (the remediation lock).
    """
    run = TrainingRun.objects.select_for_update().filter(pk=run_id).first()
    if run is None or run.status in FINISHED_STATUSES:
        return run, False
    redelivered = run.status == RunStatus.RUNNING
    if redelivered and not takeover:
        lease_refuse_if_held(run.heartbeat_at, what=f"training run {run_id}")
    if redelivered and run.attempts >= settings.MLOPS_MAX_ATTEMPTS:
        _abandon(run_id=run_id, status=RunStatus.FAILED, reason=(
            f"the worker training it was lost {run.attempts} times (MLOPS_MAX_ATTEMPTS); not started again"
        ))
        return TrainingRun.objects.get(pk=run_id), False
    removed = 0
    if redelivered:
        # The previous worker died mid-run (acks_late redelivered the task): drop what it left.
        SisaCheckpoint.objects.filter(training_run=run).delete()
        SisaAssignment.objects.filter(training_run=run).delete()
        removed = artifacts.remove_run_files(run.pk)
    run.status = RunStatus.RUNNING
    run.attempts += 1
    run.started_at = timezone.now()
    run.heartbeat_at = run.started_at
    run.finished_at = None
    run.progress = {"epoch": 0, "epochs": run.epochs, "step": 0, "epsilon": 0.0}
    run.epoch_metrics = []
    run.error = ""
    run.save(update_fields=[
        "status", "attempts", "started_at", "heartbeat_at", "finished_at", "progress", "epoch_metrics", "error",
    ])
    audit_event_record(
        actor=None, action="training_run.started", object_type="training_run", object_id=run.pk,
        details={"attempt": run.attempts, "redelivered": redelivered, "orphan_files_removed": removed},
    )
    return run, True


def training_run_execute(
    *, run_id: int, on_progress: ProgressCallback | None = None, takeover: bool = False
) -> TrainingRun | None:
    """Train a queued run, register its model and settle its ledger entry.

    Idempotent: a finished run (succeeded, failed, cancelled) is left alone, and a run
    another live worker trains raises ``LeaseHeld`` (the task waits and finds it done). A
    run found 'running' with a lapsed lease was left by a worker that died; its partial
    files are removed and it starts again from scratch.

    A database error (connection lost, server restarting) is raised, not recorded as the
    run failing: the task retries it, and the retry takes the run over at once because the
    lease is released here (or, if the database is still unreachable, once it lapses).
    """
    run, claimed = _claim(run_id=run_id, takeover=takeover)
    if not claimed:
        return run
    run = TrainingRun.objects.select_related("snapshot__dataset", "snapshot__purpose").get(pk=run_id)
    attempt = run.attempts
    # Queueing checked the snapshot; the worker checks again before it reads a single record,
    # since people may withdraw while the run waits in the queue (seconds, or hours if the
    # broker was down). A remediation retrain (takeover) was checked by the erasure that
    # started it and must finish, or the erasure would stall.
    refusal = None if takeover else _snapshot_refusal(run)
    if refusal is not None:
        abandoned = _abandon(run_id=run_id, status=RunStatus.FAILED, reason=refusal, attempt=attempt)
        _emit_openlineage(run_id)
        return abandoned
    reporter = _ProgressReporter(run, on_progress)
    try:
        with lease_heartbeat(TrainingRun.objects.filter(pk=run_id, status=RunStatus.RUNNING, attempts=attempt)):
            outcome = _train_sisa(run, reporter) if run.sisa else _train_single(run, reporter)
            if not _still_ours(run):
                raise _Cancelled()
            relative = f"{artifacts.run_dir_relative(run.pk)}/model.safetensors"
            digest = artifacts.save_weights(
                relative=relative, state_dict=outcome.state_dict,
                metadata={"training_run": str(run.pk), "format": "sisa-ensemble" if run.sisa else "mlp",
                          **artifacts.reproducibility_metadata(run=run)},
            )
    except _Superseded:
        logger.warning("training run %s was taken over by another worker; attempt %s stops", run_id, attempt)
        return TrainingRun.objects.get(pk=run_id)
    except _Cancelled:
        abandoned = _abandon(run_id=run_id, status=RunStatus.CANCELLED, reason="cancelled while training", attempt=attempt)
        _emit_openlineage(run_id)
        return abandoned
    except DATABASE_FAULTS:
        _lease_release(run_id=run_id, attempt=attempt)
        raise
    except Exception as exc:
        logger.exception("training run %s failed", run_id)
        abandoned = _abandon(
            run_id=run_id, status=RunStatus.FAILED, reason=f"{type(exc).__name__}: {exc}", attempt=attempt
        )
        _emit_openlineage(run_id)
        return abandoned
    try:
        _finish(
            run=run, outcome=outcome, relative=relative, digest=digest, progress=reporter.metrics, attempt=attempt
        )
    except DATABASE_FAULTS:
        _lease_release(run_id=run_id, attempt=attempt)
        raise
    _emit_openlineage(run_id)
    run.refresh_from_db()
    return run


def _snapshot_refusal(run: TrainingRun) -> str | None:
    """Why ``run`` may not train on its snapshot now (a reconstruction, or people in it no
    longer covered), or None."""
    from mlops.services.queueing import snapshot_trainable_check

    try:
        snapshot_trainable_check(snapshot=run.snapshot)
    except ServiceConflict as exc:
        return f"not started: {exc}"
    return None


def _lease_release(*, run_id: int, attempt: int) -> None:
    """Best effort, on a database error: the retry then need not wait for the lease to lapse."""
    from django.db import connection

    try:
        connection.close_if_unusable_or_obsolete()  # a broken connection reconnects for this
        TrainingRun.objects.filter(pk=run_id, attempts=attempt, status=RunStatus.RUNNING).update(heartbeat_at=None)
    except DATABASE_FAULTS:
        logger.warning("lease of training run %s not released (database unreachable); it lapses", run_id)


def _emit_openlineage(run_id: int) -> None:
    from mlops.tasks import training_run_openlineage_emit

    # Best effort (the events stay downloadable); a broker that is down must not fail the run.
    task_dispatch_on_commit(training_run_openlineage_emit, args=[run_id])


@transaction.atomic
def _finish(
    *, run: TrainingRun, outcome: _Outcome, relative: str, digest: str, progress: list, attempt: int
) -> ModelVersion | None:
    locked = TrainingRun.objects.select_for_update().get(pk=run.pk)
    if locked.attempts != attempt:
        # Taken over by another worker while this one's lease had lapsed (and perhaps
        # finished by it): the files are the other attempt's; publish and touch nothing.
        return None
    if locked.status != RunStatus.RUNNING:
        # Cancelled or failed by the sweeper while training: publish nothing.
        artifacts.remove_run_files(run.pk)
        return None
    now = timezone.now()
    locked.status = RunStatus.SUCCEEDED
    locked.finished_at = now
    locked.heartbeat_at = None
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
def _abandon(*, run_id: int, status: str, reason: str, attempt: int | None = None) -> TrainingRun:
    run = TrainingRun.objects.select_for_update().get(pk=run_id)
    if attempt is not None and run.attempts != attempt:
        # Another worker took it over (it may even have succeeded): its attempt, its files.
        return run
    removed = artifacts.remove_run_files(run.pk)
    if run.status in (RunStatus.RUNNING, RunStatus.QUEUED):
        run.status = status
        run.error = reason[:2000]
        run.finished_at = timezone.now()
        run.heartbeat_at = None
        run.save(update_fields=["status", "error", "finished_at", "heartbeat_at"])
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
