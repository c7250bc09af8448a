"""Model versions trained on record values a rectification (Art. 16) corrected since.

provenance sends ``records_rectified`` after the commit that wrote the new record versions;
``records_rectified_receive`` finds every live version whose run's snapshot holds one of the
superseded versions (snapshot membership) and applies the processing activity's latest
``RectificationPolicy``:

- none yet: the versions become ``stale`` (not served) until the DPO records one;
- ``accept``: they stay as they are, with the policy's justification in their status
  reason and an audit event per version;
- ``retrain``: they become ``stale`` and a retrain of each is queued on a *fresh* snapshot
  of the same dataset and purpose (the old snapshot still holds the old values), as an
  ordinary run that ``remediates`` the stale version: validated, charged to the privacy
  budget and registered like any other, and on registration it supersedes the stale one.

Recording a policy applies it at once to the activity's versions already stale. A run that
trained on an old snapshot after the rectification is caught at registration
(``registration_staleness``).
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied
from django.db import transaction

from governance.models import ProcessingActivity
from governance.services import ServiceError, audit_event_record, audit_events_record
from mlops.models import ModelStatus, ModelVersion, RectificationAction, RectificationPolicy, RunStatus, TrainingRun
from mlops.services.status import model_versions_status_set
from provenance.models import DataRecord, SnapshotMembership

logger = logging.getLogger(__name__)

# Versions a rectification makes stale: those that are or may become the served one.
STALEABLE = (ModelStatus.ACTIVE, ModelStatus.PENDING_AUDIT)


def rectification_policy_current(*, processing_activity_id: int) -> RectificationPolicy | None:
    return RectificationPolicy.objects.filter(processing_activity_id=processing_activity_id).order_by("-id").first()


def _stale_reason(*, snapshot_ids: list[int], records: int) -> str:
    snapshots = ", ".join(str(s) for s in snapshot_ids)
    return (f"trained on snapshot {snapshots} holding {records} record version(s) rectified since (Art. 16); "
            "awaiting the processing activity's rectification policy")


def _accepted_reason(policy: RectificationPolicy) -> str:
    return (f"trained on values since rectified (Art. 16); accepted under rectification policy {policy.pk}: "
            f"{policy.justification}")[:2000]


def _versions_trained_on(*, record_ids: list[int]) -> list[tuple[int, list[int]]]:
    """[(live version id, [snapshot ids])] of the versions whose run read a snapshot holding one of ``record_ids``."""
    snapshot_ids = sorted(set(
        SnapshotMembership.objects.filter(record_id__in=record_ids).values_list("snapshot_id", flat=True).distinct()
    ))
    if not snapshot_ids:
        return []
    return [
        (pk, [snapshot_id])
        for pk, snapshot_id in ModelVersion.objects.filter(
            training_run__snapshot_id__in=snapshot_ids, status__in=STALEABLE
        ).order_by("pk").values_list("pk", "training_run__snapshot_id")
    ]


def records_rectified_receive(
    *, old_record_ids: list[int], processing_activity_id: int, dataset_id: int, **_: Any
) -> dict[str, Any]:
    """Flag the live versions trained on ``old_record_ids`` and apply the activity's policy;
    returns what was done (``stale``, ``accepted``, ``retrains``)."""
    policy = rectification_policy_current(processing_activity_id=processing_activity_id)
    with transaction.atomic():
        found = _versions_trained_on(record_ids=old_record_ids)
        versions = list(
            ModelVersion.objects.select_for_update(no_key=True)
            .filter(pk__in=[pk for pk, _ in found], status__in=STALEABLE).order_by("pk")
        )
        snapshots = dict(found)
        # One append for the whole loop: the events, in this order, go in one batch at the end.
        stale, accepted, events = [], [], []
        for version in versions:
            if policy is not None and policy.action == RectificationAction.ACCEPT:
                # A version waiting for its audits keeps waiting (its audit policy decides);
                # the note goes on the active ones, the audit event on all.
                if version.status == ModelStatus.ACTIVE:
                    version.status_reason = _accepted_reason(policy)
                    version.save(update_fields=["status_reason"])
                accepted.append(version.pk)
                events.append({
                    "actor": None, "action": "model_version.rectification_accepted", "object_type": "model_version",
                    "object_id": version.pk,
                    "details": {"policy": policy.pk, "dataset": dataset_id, "records": len(old_record_ids)},
                })
                continue
            model_versions_status_set(
                ids=[version.pk], status=ModelStatus.STALE,
                reason=_stale_reason(snapshot_ids=snapshots[version.pk], records=len(old_record_ids)),
            )
            stale.append(version.pk)
            events.append({
                "actor": None, "action": "model_version.stale", "object_type": "model_version", "object_id": version.pk,
                "details": {"dataset": dataset_id, "snapshots": snapshots[version.pk], "records": len(old_record_ids),
                         "policy": policy.pk if policy else None},
            })
        audit_events_record(events=events)
    retrains = []
    if stale and policy is not None and policy.action == RectificationAction.RETRAIN:
        retrains = stale_versions_retrain(model_version_ids=stale)
    return {"stale": stale, "accepted": accepted, "retrains": retrains}


def stale_version_retrain(*, model_version: ModelVersion) -> TrainingRun | None:
    """Queue a retrain of stale ``model_version``'s configuration on a fresh snapshot of its
    dataset and purpose (the new record versions, none of the old); the run ``remediates``
    it. None when one is queued or running already (idempotent)."""
    from mlops.services.queueing import training_run_queue

    if TrainingRun.objects.filter(
        remediates=model_version, status__in=(RunStatus.QUEUED, RunStatus.RUNNING)
    ).exists():
        return None
    old = model_version.training_run
    snapshot = old.snapshot
    return training_run_queue(
        dataset=snapshot.dataset_id, purpose=snapshot.purpose, name=old.name, task=old.task,
        model_spec=old.model_spec, optimizer=old.optimizer, learning_rate=old.learning_rate, epochs=old.epochs,
        batch_size=old.batch_size, seed=old.seed, validation_split=old.validation_split,
        holdout_fraction=old.holdout_fraction, target_epsilon=old.target_epsilon,
        noise_multiplier=old.requested_noise_multiplier, target_delta=old.target_delta,
        max_grad_norm=old.max_grad_norm, accountant=old.accountant, allow_non_private=old.allow_non_private,
        sisa=old.sisa, release_training_metrics=old.release_training_metrics, requested_by=None,
        remediates=model_version,
    )


def stale_versions_retrain(*, model_version_ids: list[int]) -> list[dict[str, Any]]:
    """Queue a retrain of each stale version; a refusal (the budget, an empty snapshot) is
    recorded in the audit log and leaves the version stale for the DPO to decide."""
    out = []
    for version in ModelVersion.objects.filter(pk__in=model_version_ids, status=ModelStatus.STALE).select_related(
        "training_run__snapshot"
    ).order_by("pk"):
        try:
            run = stale_version_retrain(model_version=version)
        except ServiceError as exc:
            audit_event_record(
                actor=None, action="model_version.rectification_retrain_refused", object_type="model_version",
                object_id=version.pk, details={"reason": str(exc)[:1000], "field": exc.field},
            )
            out.append({"model_version": version.pk, "training_run": None, "refused": str(exc)})
            continue
        out.append({"model_version": version.pk, "training_run": run.pk if run else None, "refused": None})
    return out


def stale_versions_retrain_on_commit(*, model_version_ids: list[int]) -> None:
    def run() -> None:
        try:
            stale_versions_retrain(model_version_ids=model_version_ids)
        except Exception:  # the registration committed; a failed retrain leaves the version stale
            logger.exception("retrain of stale model versions %s failed", model_version_ids)

    transaction.on_commit(run)


def registration_staleness(*, run: TrainingRun, status: str, reason: str) -> tuple[str, str, bool]:
    """(status, reason, retrain after commit) for a version being registered: ``stale`` when
    its run's snapshot holds record versions a rectification superseded, unless the
    activity's policy accepts them; ``retrain`` policies queue a retrain after the commit."""
    snapshot = run.snapshot
    superseded = DataRecord.objects.filter(dataset_id=snapshot.dataset_id, superseded_at__isnull=False).values("id")
    held = SnapshotMembership.objects.filter(snapshot_id=snapshot.pk, record_id__in=superseded).count()
    if not held or status not in STALEABLE:
        return status, reason, False
    policy = rectification_policy_current(processing_activity_id=snapshot.dataset.processing_activity_id)
    if policy is not None and policy.action == RectificationAction.ACCEPT:
        return status, reason if status == ModelStatus.PENDING_AUDIT else _accepted_reason(policy), False
    retrain = policy is not None and policy.action == RectificationAction.RETRAIN
    return ModelStatus.STALE, f"on registration: {_stale_reason(snapshot_ids=[snapshot.pk], records=held)}", retrain


def _stale_version_accept(*, version: ModelVersion, policy: RectificationPolicy) -> None:
    """Put an accepted stale version back in service: active, or, when an audit policy
    applies to it, through that policy again (active, audit_failed, or waiting for audits)."""
    from mlops.services.audit_jobs import audit_policies_for_run, model_version_audit_policy_apply

    audited = bool(audit_policies_for_run(run=version.training_run))
    model_versions_status_set(
        ids=[version.pk], status=ModelStatus.PENDING_AUDIT if audited else ModelStatus.ACTIVE,
        reason="awaiting the privacy audits its audit policy requires" if audited else _accepted_reason(policy),
    )
    version.refresh_from_db(fields=["status", "status_reason", "status_changed_at"])
    audit_event_record(
        actor=None, action="model_version.rectification_accepted", object_type="model_version", object_id=version.pk,
        details={"policy": policy.pk, "status": version.status},
    )
    if audited:
        model_version_audit_policy_apply(model_version_id=version.pk)


def rectification_policy_set(
    *, actor: Any, processing_activity: ProcessingActivity | int, action: str, justification: str
) -> RectificationPolicy:
    """Record what is done with the activity's model versions trained on values since
    rectified (DPO only; a new row every time) and apply it to the versions stale now:
    ``accept`` puts them back in service with the justification, ``retrain`` queues their
    retrains (after the commit)."""
    from governance.roles import DPO, has_role

    if not has_role(actor, DPO):
        raise PermissionDenied("Only a DPO may set a rectification policy.")
    if action not in RectificationAction.values:
        raise ServiceError(
            f"action: must be one of {', '.join(RectificationAction.values)}", field="action"
        )
    if not isinstance(justification, str) or not justification.strip():
        raise ServiceError("justification: say why this remediation is proportionate (Art. 5(2))", field="justification")
    if not isinstance(processing_activity, ProcessingActivity):
        found = ProcessingActivity.objects.filter(pk=processing_activity).first() if isinstance(
            processing_activity, int) and not isinstance(processing_activity, bool) else None
        if found is None:
            raise ServiceError(f"processing_activity: no processing activity {processing_activity!r}",
                               field="processing_activity")
        processing_activity = found
    with transaction.atomic():
        policy = RectificationPolicy.objects.create(
            processing_activity=processing_activity, action=action, justification=justification.strip(),
            set_by=actor if getattr(actor, "pk", None) else None,
        )
        stale = list(
            ModelVersion.objects.select_for_update(of=("self",), no_key=True).select_related("training_run")
            .filter(status=ModelStatus.STALE,
                    training_run__snapshot__dataset__processing_activity=processing_activity).order_by("pk")
        )
        if action == RectificationAction.ACCEPT:
            for version in stale:
                _stale_version_accept(version=version, policy=policy)
        audit_event_record(
            actor=actor, action="rectification_policy.set", object_type="rectification_policy", object_id=policy.pk,
            details={"processing_activity": processing_activity.pk, "action": action,
                     "justification": policy.justification[:1000], "stale_versions": [v.pk for v in stale]},
        )
        if action == RectificationAction.RETRAIN and stale:
            stale_versions_retrain_on_commit(model_version_ids=[v.pk for v in stale])
    return policy
