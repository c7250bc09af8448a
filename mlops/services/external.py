"""Runs trained outside the ledger (issue 20): the ledger is the gate and the record.

``external_run_start`` checks the snapshot as for an internal run, plans what Opacus will
do with a DataLoader of ``batch_size`` over the exported records, reserves that ε and
answers a run token (shown once, stored hashed). The trainer exports the snapshot, trains
with Opacus anywhere and reports the accountant's history: ``external_run_report``
recomputes ε from the history itself (a sent ε is never trusted), settles the ledger with
the recomputed RDP curve (the unspent part of the reservation is released) and registers
the model version. ``external_run_fail`` and the expiry sweep release the reservation of
a run that will not report.

Opacus 1.6, ``make_private(poisson_sampling=True)`` on a DataLoader of batch size B over N
records (``PrivacyEngine._prepare_data_loader`` → ``DPDataLoader.from_data_loader``):
sample_rate = 1 / len(loader) = 1 / ceil(N / B), and the Poisson sampler takes
``int(1 / sample_rate)`` steps per epoch (``UniformWithReplacementSampler``), which is
ceil(N / B) except where the float 1 / (1 / k) falls just below k (k = 93, 99, ...): the
plan takes the same ``int`` so it matches what the trainer's accountant will record.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import re
import secrets
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.utils import timezone

from governance.models import Purpose
from governance.roles import DPO, has_role
from governance.services import ServiceConflict, ServiceError, audit_event_record
from mlops import artifacts, data, ledger
from mlops.engine.accounting import MAX_SIGMA, MAX_TARGET_EPSILON
from mlops.engine.spec import ACCOUNTANTS
from mlops.models import Executor, ModelVersion, RunStatus, TrainingRun
from mlops.services.budget import _ledger_reserve, _ledger_settle_reported
from mlops.services.config import (
    _check_number,
    _default_delta,
    _engine_error,
    _json_number,
    _Plan,
    privacy_arguments_check,
)
from mlops.services.queueing import _resolve_snapshot, given_snapshot_check
from provenance.models import Dataset, Snapshot

logger = logging.getLogger(__name__)

MAX_DESCRIPTION = 2000
MAX_HISTORY_SEGMENTS = 10_000
MAX_METRICS = 200
MAX_EPOCHS = 1000
SHA256 = re.compile(r"^[0-9a-f]{64}$")
# Relative ε slack when comparing a recomputed ε with the reservation: the same history
# recomputed gives the same float, this only absorbs a last-bit difference across platforms.
EPSILON_TOLERANCE = 1e-9


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def opacus_plan(*, n_records: int, batch_size: int, epochs: int) -> tuple[float, int]:
    """(sample_rate, steps) of ``make_private(poisson_sampling=True)`` over ``n_records``."""
    batches = math.ceil(n_records / batch_size)
    sample_rate = 1 / batches
    return sample_rate, epochs * int(1 / sample_rate)


@transaction.atomic
def external_run_start(
    *,
    snapshot: Snapshot | int | None = None,
    dataset: Dataset | int | None = None,
    purpose: Purpose | str | None = None,
    name: str = "",
    epochs: int = 5,
    batch_size: int = 256,
    target_epsilon: float | None = None,
    noise_multiplier: float | None = None,
    target_delta: float | None = None,
    max_grad_norm: float = 1.0,
    accountant: str = "rdp",
    allow_non_private: bool = False,
    remediates: ModelVersion | int | None = None,
    description: str = "",
    requested_by: Any = None,
) -> tuple[TrainingRun, str]:
    """Reserve the budget of a run trained outside the ledger; returns (run, run token).

    Refuses (400, naming the field) what cannot be planned, and (409) a snapshot internal
    training would refuse, a dataset whose audit policy requires audits (the ledger cannot
    audit weights it never holds) and a plan over the dataset's budget. Nothing is written
    when it refuses.
    """
    if accountant not in ACCOUNTANTS:
        raise ServiceError(f"accountant: must be one of {', '.join(ACCOUNTANTS)}", field="accountant")
    for value, field, high in ((epochs, "epochs", MAX_EPOCHS), (batch_size, "batch_size", 2**31 - 1)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
            raise ServiceError(f"{field}: must be an integer from 1 to {high}", field=field)
    privacy_arguments_check(target_epsilon=target_epsilon, noise_multiplier=noise_multiplier,
                            target_delta=target_delta, max_grad_norm=max_grad_norm,
                            allow_non_private=allow_non_private)
    if not allow_non_private and (target_epsilon is None) == (noise_multiplier is None):
        raise ServiceError("target_epsilon: give target_epsilon or noise_multiplier, not both", field="target_epsilon")
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
        raise ServiceError(f"description: text of at most {MAX_DESCRIPTION} characters", field="description")
    replaced = _replaced_version(remediates, name=name)

    snap = _resolve_snapshot(snapshot=snapshot, dataset=dataset, purpose=purpose, requested_by=requested_by)
    if snapshot is not None:
        # The same checks as an internal run on a named snapshot (integrity, consent now,
        # restriction, objection, rectified records).
        given_snapshot_check(snapshot=snap)
    from mlops.services.audit_jobs import audit_policies_for_run

    policies = audit_policies_for_run(run=TrainingRun(snapshot=snap))
    if policies:
        raise ServiceConflict(
            f"Dataset {snap.dataset_id} is under an audit policy: its model versions must pass privacy audits the "
            "ledger runs on weights it trains itself, so it cannot be trained outside the ledger.",
            field="snapshot", audit_policies=[p.pk for p in policies],
        )
    labels = data.snapshot_labels(snapshot_id=snap.pk)
    n_records = len(labels.labels)
    if n_records == 0:
        raise ServiceError(f"Snapshot {snap.pk} has no records: nothing to train on.", field="snapshot")
    if target_delta is None:
        target_delta = _default_delta(n_records)
    if not allow_non_private and target_delta >= 1 / n_records:
        raise ServiceError(
            f"target_delta: must be below 1/N = {1 / n_records:.3g} for the {n_records} exported records",
            field="target_delta",
        )
    plan = _plan(n_records=n_records, batch_size=batch_size, epochs=epochs, target_epsilon=target_epsilon,
                 noise_multiplier=noise_multiplier, target_delta=target_delta, accountant=accountant,
                 private=not allow_non_private)

    from provenance.selectors import snapshot_amendment_count

    token = secrets.token_urlsafe(32)
    now = timezone.now()
    run = TrainingRun.objects.create(
        name=name or (replaced.name if replaced else snap.dataset.name),
        snapshot=snap, executor=Executor.EXTERNAL, status=RunStatus.RUNNING,
        epochs=epochs, batch_size=batch_size, target_epsilon=target_epsilon,
        requested_noise_multiplier=noise_multiplier, target_delta=target_delta, max_grad_norm=max_grad_norm,
        accountant=accountant, allow_non_private=allow_non_private, remediates=replaced,
        requested_by=requested_by if getattr(requested_by, "pk", None) else None,
        # What the trainer will read: the export is of the snapshot's current members, so
        # the amendments it has now are the ones the run has seen (an erasure after this
        # counts as missed, the safe side). No started_at or lease: nothing here runs it,
        # so the stuck-run and lease sweeps leave it alone; its reservation expires instead.
        trained_on_amendment=snapshot_amendment_count(snapshot_id=snap.pk),
        run_token_hash=token_hash(token),
        reservation_expires_at=now + timedelta(hours=settings.EXTERNAL_RUN_REPORT_HOURS),
        description=description,
        n_train=n_records,
        # The export holds every current member, so no person can have trained on more.
        max_records_per_person=data.max_records_per_person(subject_ids=labels.subject_ids),
        planned_epsilon=plan.epsilon, noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate,
        steps=plan.steps, delta=target_delta if not allow_non_private else None,
        progress={"epoch": 0, "epochs": epochs, "step": 0, "epsilon": 0.0},
    )
    ledger_numbers = _ledger_reserve(run=run, dataset_id=snap.dataset_id, plan=plan)
    audit_event_record(
        actor=requested_by, action="training_run.external_started", object_type="training_run", object_id=run.pk,
        details={
            "snapshot": snap.pk, "dataset": snap.dataset_id, "private": not allow_non_private,
            "planned_epsilon": plan.epsilon, "delta": target_delta, "noise_multiplier": plan.noise_multiplier,
            "sample_rate": plan.sample_rate, "steps": plan.steps, "accountant": accountant, "n_records": n_records,
            "batch_size": batch_size, "epochs": epochs, "remediates": replaced.pk if replaced else None,
            "reservation_expires_at": run.reservation_expires_at.isoformat(), **ledger_numbers,
        },
    )
    return run, token


def _replaced_version(remediates: ModelVersion | int | None, *, name: str) -> ModelVersion | None:
    """The external version this run retrains (after an erasure or a rectification tainted it)."""
    if remediates is None:
        return None
    pk = remediates.pk if isinstance(remediates, ModelVersion) else remediates
    version = ModelVersion.objects.filter(pk=pk).first() if isinstance(pk, int) and not isinstance(pk, bool) else None
    if version is None:
        raise ServiceError(f"remediates: model version {remediates} does not exist", field="remediates")
    if not version.external:
        raise ServiceError(
            f"remediates: model version {version.pk} was trained by the ledger, which remediates it itself",
            field="remediates",
        )
    if name and name != version.name:
        raise ServiceError(f"name: a version replacing {version.name} v{version.version} is named {version.name}",
                           field="name")
    return version


def _plan(*, n_records: int, batch_size: int, epochs: int, target_epsilon: float | None,
          noise_multiplier: float | None, target_delta: float, accountant: str, private: bool) -> _Plan:
    from mlops.engine import accounting

    sample_rate, steps = opacus_plan(n_records=n_records, batch_size=batch_size, epochs=epochs)
    if not private:
        return _Plan(None, sample_rate, steps, None, None)
    try:
        sigma = noise_multiplier
        if sigma is None:
            sigma = accounting.noise_multiplier_for(
                target_epsilon=target_epsilon, target_delta=target_delta, sample_rate=sample_rate, steps=steps,
                accountant=accountant,
            )
        history = [[float(sigma), sample_rate, steps]]
        epsilon = accounting.epsilon_of_history(history=history, delta=target_delta, accountant=accountant)
    except ValueError as exc:
        raise _engine_error(exc)
    if epsilon > MAX_TARGET_EPSILON:
        raise ServiceError(
            f"noise_multiplier: gives ε = {epsilon:.4g} at δ = {target_delta:g}, above the most a private run may "
            f"spend ({MAX_TARGET_EPSILON:g}); add noise, or train with allow_non_private",
            field="noise_multiplier",
        )
    rdp = np.asarray(accounting.rdp_curve(noise_multiplier=float(sigma), sample_rate=sample_rate, steps=steps))
    return _Plan(float(sigma), sample_rate, steps, epsilon, rdp)


# --- The report -------------------------------------------------------------------------


def _history_checked(history: Any) -> list[list]:
    """[[σ, q, steps], ...] as Opacus's accountants keep it, or a 400 naming ``history``."""
    if not isinstance(history, list | tuple) or len(history) > MAX_HISTORY_SEGMENTS:
        raise ServiceError(
            f"history: a list of at most {MAX_HISTORY_SEGMENTS} [noise_multiplier, sample_rate, steps] triples",
            field="history",
        )
    checked = []
    for i, segment in enumerate(history):
        if not isinstance(segment, list | tuple) or len(segment) != 3:
            raise ServiceError(f"history: entry {i} is not a [noise_multiplier, sample_rate, steps] triple",
                               field="history")
        sigma, q, steps = segment
        for value, what in ((sigma, "noise_multiplier"), (q, "sample_rate")):
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ServiceError(f"history: entry {i}: {what} must be a number", field="history")
        if not 0 < sigma <= MAX_SIGMA:
            raise ServiceError(f"history: entry {i}: noise_multiplier must be above 0 and at most {MAX_SIGMA:g}",
                               field="history")
        if not 0 < q <= 1:
            raise ServiceError(f"history: entry {i}: sample_rate must be in (0, 1]", field="history")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ServiceError(f"history: entry {i}: steps must be a positive integer", field="history")
        checked.append([float(sigma), float(q), int(steps)])
    return checked


def _metrics_checked(metrics: Any) -> dict[str, float]:
    if metrics is None:
        return {}
    if not isinstance(metrics, dict) or len(metrics) > MAX_METRICS:
        raise ServiceError(f"metrics: an object of at most {MAX_METRICS} names to numbers", field="metrics")
    for key, value in metrics.items():
        if not isinstance(key, str) or not 0 < len(key) <= 200:
            raise ServiceError("metrics: names are texts of 1 to 200 characters", field="metrics")
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ServiceError(f"metrics: {key!r} must be a finite number", field="metrics")
    return {k: float(v) if isinstance(v, float) else v for k, v in metrics.items()}


def _external_run_authorised(*, run_id: int, run_token: Any, actor: Any, action: str) -> TrainingRun:
    """The external run ``run_id`` if ``run_token`` is its token; a wrong token is refused
    (403) and audited, in a transaction of its own so the refusal is recorded."""
    run = TrainingRun.objects.filter(pk=run_id).first()
    if run is None:
        from django.http import Http404

        raise Http404(f"Training run {run_id} does not exist.")
    if run.executor != Executor.EXTERNAL:
        raise ServiceConflict(
            f"Training run {run.pk} is trained by the ledger; only an external run takes a {action}.",
            field="executor",
        )
    if not isinstance(run_token, str) or not run_token:
        raise ServiceError("run_token: required", field="run_token")
    if not hmac.compare_digest(token_hash(run_token), run.run_token_hash):
        with transaction.atomic():
            audit_event_record(
                actor=actor, action="training_run.token_refused", object_type="training_run", object_id=run.pk,
                details={"action": action},
            )
        raise PermissionDenied(f"This run token is not the one of training run {run.pk}.")
    return run


def external_run_report(
    *,
    run_id: int,
    run_token: str,
    accountant: str,
    history: Any,
    artifact_sha256: str,
    metrics: Any = None,
    description: str = "",
    mlflow_run_id: str = "",
    encoding: Any = None,
    sent_epsilon: Any = None,
    artifact: Any = None,
    actor: Any = None,
) -> ModelVersion:
    """Settle and register an external run from its accountant history.

    ε is recomputed at the run's δ by Opacus's accountant from ``history``; a sent ε
    (``sent_epsilon``) is never used, only recorded in the audit event as ignored. Refused
    with 409 (nothing written) when the recomputed ε exceeds the reservation without a DPO's
    approval, or the approved limit, or the dataset's cap; 409 when the run is not waiting
    for a report (a second report finds it succeeded). ``artifact``: the uploaded weights,
    kept when their SHA-256 is ``artifact_sha256``.
    """
    if accountant not in ACCOUNTANTS:
        raise ServiceError(f"accountant: must be one of {', '.join(ACCOUNTANTS)}", field="accountant")
    checked = _history_checked(history)
    metrics = _metrics_checked(metrics)
    if not isinstance(artifact_sha256, str) or not SHA256.match(artifact_sha256.lower()):
        raise ServiceError("artifact_sha256: 64 hexadecimal characters", field="artifact_sha256")
    artifact_sha256 = artifact_sha256.lower()
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
        raise ServiceError(f"description: text of at most {MAX_DESCRIPTION} characters", field="description")
    if not isinstance(mlflow_run_id, str) or len(mlflow_run_id) > 100:
        raise ServiceError("mlflow_run_id: text of at most 100 characters", field="mlflow_run_id")
    if encoding is not None and not isinstance(encoding, dict):
        raise ServiceError("encoding: an object", field="encoding")
    run = _external_run_authorised(run_id=run_id, run_token=run_token, actor=actor, action="report")
    if not run.allow_non_private and not checked:
        raise ServiceError("history: a private run reports at least one segment", field="history")
    if run.allow_non_private and checked:
        raise ServiceError("history: a non-private run spent ε = ∞ and reports no history", field="history")

    from mlops.engine import accounting

    epsilon: float | None = None
    rdp = None
    if checked:
        try:
            epsilon = accounting.epsilon_of_history(history=checked, delta=run.target_delta, accountant=accountant)
        except ValueError as exc:
            raise _engine_error(exc)
        rdp = np.asarray(accounting.rdp_curve_of_history(history=checked))
    stored_path = _artifact_store(run=run, artifact=artifact, expected=artifact_sha256) if artifact else ""
    try:
        version = _report_commit(
            run_id=run.pk, run_token=run_token, accountant=accountant, history=checked, epsilon=epsilon, rdp=rdp,
            metrics=metrics, artifact_sha256=artifact_sha256, artifact_path=stored_path, description=description,
            mlflow_run_id=mlflow_run_id, encoding=encoding, sent_epsilon=sent_epsilon, actor=actor,
        )
    except BaseException:
        if stored_path:
            artifacts.remove_run_files(run.pk)
        raise
    from mlops.services.execution import _emit_openlineage

    _emit_openlineage(run.pk)
    return version


def _artifact_store(*, run: TrainingRun, artifact: Any, expected: str) -> str:
    relative = f"{artifacts.run_dir_relative(run.pk)}/external-artifact"
    path = artifacts.absolute(relative)
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with open(path, "wb") as handle:
        for chunk in artifact.chunks() if hasattr(artifact, "chunks") else iter(lambda: artifact.read(1 << 20), b""):
            digest.update(chunk)
            handle.write(chunk)
    if digest.hexdigest() != expected:
        path.unlink(missing_ok=True)
        raise ServiceError(
            f"file: its SHA-256 is {digest.hexdigest()}, not the artifact_sha256 sent ({expected})", field="file"
        )
    return relative


@transaction.atomic
def _report_commit(
    *, run_id: int, run_token: str, accountant: str, history: list, epsilon: float | None, rdp, metrics: dict,
    artifact_sha256: str, artifact_path: str, description: str, mlflow_run_id: str, encoding: dict | None,
    sent_epsilon: Any, actor: Any,
) -> ModelVersion:
    from mlops.services.registry import model_version_register

    # The row lock serialises concurrent reports of one run: the second finds it succeeded.
    run = TrainingRun.objects.select_for_update(of=("self",)).select_related("snapshot", "remediates").get(pk=run_id)
    if not hmac.compare_digest(token_hash(run_token), run.run_token_hash):
        raise PermissionDenied(f"This run token is not the one of training run {run.pk}.")
    if run.status != RunStatus.RUNNING:
        raise ServiceConflict(
            f"Training run {run.pk} is {run.status}{': ' + run.error if run.error else ''}; it takes no report.",
            status=run.status,
        )
    limit = run.overspend_epsilon_limit if run.overspend_epsilon_limit is not None else run.planned_epsilon
    figures = {"epsilon": _json_number(epsilon), "planned_epsilon": _json_number(run.planned_epsilon),
               "approved_epsilon_limit": run.overspend_epsilon_limit, "delta": run.target_delta}
    if epsilon is not None and limit is not None and epsilon > limit * (1 + EPSILON_TOLERANCE):
        if run.overspend_epsilon_limit is None:
            raise ServiceConflict(
                f"The reported history spends ε = {epsilon:.6g} at δ = {run.target_delta:g}, more than the "
                f"{run.planned_epsilon:.6g} reserved for training run {run.pk}; a DPO may approve the overspend "
                f"(POST /api/v1/training-runs/{run.pk}/approve-overspend/).",
                field="history", **figures,
            )
        raise ServiceConflict(
            f"The reported history spends ε = {epsilon:.6g} at δ = {run.target_delta:g}, more than the "
            f"{run.overspend_epsilon_limit:.6g} a DPO approved for training run {run.pk}.",
            field="history", **figures,
        )
    ledger_numbers = _ledger_settle_reported(run=run, rdp=rdp, epsilon=epsilon)
    now = timezone.now()
    planned_accountant = run.accountant
    run.status = RunStatus.SUCCEEDED
    run.finished_at = now
    run.reported_at = now
    run.accountant = accountant
    run.accountant_history = history
    run.epsilon = epsilon
    run.delta = run.target_delta if not run.allow_non_private else None
    run.rdp_curve = ledger.curve_to_json(rdp)
    run.noise_multiplier = max((h[0] for h in history), default=run.noise_multiplier)
    run.steps = sum(h[2] for h in history) or run.steps
    run.sample_rate = history[-1][1] if history else run.sample_rate
    run.progress = {"epoch": run.epochs, "epochs": run.epochs, "step": run.steps, "epsilon": _json_number(epsilon)}
    if description:
        run.description = description
    run.mlflow_run_id = mlflow_run_id
    if encoding is not None:
        # Kept apart from the keys the ledger's own engine writes (features, classes, split),
        # which readers of internal runs rely on: this is the trainer's account, as sent.
        run.encoding = {**run.encoding, "reported": encoding}
    run.save()
    version = model_version_register(
        run=run, artifact_path=artifact_path, artifact_sha256=artifact_sha256, metrics=metrics, epsilon=epsilon,
        delta=run.delta, is_sisa_ensemble=False, external=True, description=run.description,
        status_reason=(f"retrained outside the ledger to replace version {run.remediates.version}"
                       if run.remediates_id else ""),
        details={"external": True, "mlflow_run_id": mlflow_run_id or None},
    )
    audit_event_record(
        actor=actor, action="training_run.reported", object_type="training_run", object_id=run.pk,
        details={
            "model_version": version.pk, "epsilon": _json_number(epsilon), "delta": run.delta,
            "accountant": accountant, "planned_accountant": planned_accountant,
            "planned_epsilon": _json_number(run.planned_epsilon),
            "approved_epsilon_limit": run.overspend_epsilon_limit, "history_segments": len(history),
            "steps": run.steps, "artifact_sha256": artifact_sha256, "artifact_uploaded": bool(artifact_path),
            "mlflow_run_id": mlflow_run_id or None,
            # A client's own ε is never used: recorded only so a discrepancy is visible.
            "sent_epsilon_ignored": sent_epsilon is not None,
            "sent_epsilon": sent_epsilon if isinstance(sent_epsilon, int | float | str | None) else str(sent_epsilon),
            **ledger_numbers,
        },
    )
    return version


def external_run_fail(*, run_id: int, run_token: str, reason: str, actor: Any = None) -> TrainingRun:
    """The trainer gave up: the run is failed and its reservation released (409 if it is
    not waiting for a report)."""
    if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_DESCRIPTION:
        raise ServiceError(f"reason: text of 1 to {MAX_DESCRIPTION} characters", field="reason")
    run = _external_run_authorised(run_id=run_id, run_token=run_token, actor=actor, action="failure")
    from mlops.services.execution import _abandon, _emit_openlineage

    with transaction.atomic():
        locked = TrainingRun.objects.select_for_update().get(pk=run.pk)
        if locked.status != RunStatus.RUNNING:
            raise ServiceConflict(f"Training run {run.pk} is {locked.status}; it cannot be failed.", status=locked.status)
        failed = _abandon(run_id=run.pk, status=RunStatus.FAILED, reason=f"reported failed by its trainer: {reason}")
    _emit_openlineage(run.pk)
    return failed


@transaction.atomic
def external_run_approve_overspend(*, run: TrainingRun, epsilon_limit: Any, reason: str, actor: Any) -> TrainingRun:
    """Let an external run report up to ``epsilon_limit`` (at its δ) instead of the ε it
    reserved (DPO only, audited). The dataset's cap is checked again when it reports."""
    if not has_role(actor, DPO):
        raise PermissionDenied("Only a DPO may approve an overspend.")
    _check_number(epsilon_limit, "epsilon_limit", low=0.0, low_inclusive=False, high=MAX_TARGET_EPSILON,
                  high_inclusive=True)
    if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_DESCRIPTION:
        raise ServiceError(f"reason: text of 1 to {MAX_DESCRIPTION} characters", field="reason")
    locked = TrainingRun.objects.select_for_update().get(pk=run.pk)
    if locked.executor != Executor.EXTERNAL:
        raise ServiceConflict(f"Training run {locked.pk} is trained by the ledger; it reports no history.",
                              field="executor")
    if locked.status != RunStatus.RUNNING:
        raise ServiceConflict(f"Training run {locked.pk} is {locked.status}; it takes no report.", status=locked.status)
    if locked.allow_non_private:
        raise ServiceConflict(f"Training run {locked.pk} is non-private: ε = ∞ has no limit to approve.")
    previous = {"epsilon_limit": locked.overspend_epsilon_limit, "reason": locked.overspend_reason or None}
    locked.overspend_epsilon_limit = float(epsilon_limit)
    locked.overspend_reason = reason
    locked.overspend_approved_by = actor if getattr(actor, "pk", None) else None
    locked.overspend_approved_at = timezone.now()
    locked.save(update_fields=["overspend_epsilon_limit", "overspend_reason", "overspend_approved_by",
                               "overspend_approved_at"])
    audit_event_record(
        actor=actor, action="training_run.overspend_approved", object_type="training_run", object_id=locked.pk,
        details={"epsilon_limit": locked.overspend_epsilon_limit, "planned_epsilon": locked.planned_epsilon,
                 "delta": locked.target_delta, "reason": reason[:500], "previous": previous},
    )
    return locked


def external_runs_expire(*, now: datetime | None = None) -> int:
    """Fail the external runs whose reservation expired unreported and release it (the
    stuck-run beat sweep calls this); returns how many."""
    from mlops.services.execution import _abandon, _emit_openlineage

    now = now or timezone.now()
    count = 0
    expired = list(
        TrainingRun.objects.filter(
            executor=Executor.EXTERNAL, status=RunStatus.RUNNING, reservation_expires_at__lt=now
        ).order_by("pk").values_list("pk", "reservation_expires_at")
    )
    hours = settings.EXTERNAL_RUN_REPORT_HOURS
    for run_id, expires_at in expired:
        with transaction.atomic():
            # Re-read under the row lock: a run reported (or failed) meanwhile is left alone.
            locked = TrainingRun.objects.select_for_update().filter(pk=run_id, status=RunStatus.RUNNING).first()
            if locked is None:
                continue
            _abandon(run_id=run_id, status=RunStatus.FAILED, reason=(
                f"no report by {expires_at.isoformat()} (EXTERNAL_RUN_REPORT_HOURS = {hours}): "
                "its privacy-budget reservation was released by the sweeper"
            ))
            _emit_openlineage(run_id)
        count += 1
    return count
