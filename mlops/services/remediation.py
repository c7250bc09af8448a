"""Remediation of a model lineage after people's data were removed from its snapshot:
retrain from scratch, or unlearn a SISA model's affected shards exactly (Bourtoule et
al. 2021).

``model_lineage_remediate`` is the one entry point. It holds the lineage's remediation
lock (see ``registry``) and always starts from the version that is live *now*, so any
number of erasures executing at once on any number of workers end with one live version
that holds none of their people: the first to get the lock retrains or unlearns for every
person removed so far (their snapshot amendments committed before it read the data), and
the others find the head clean and are done — one retrain and one ledger charge for all.

Retraining goes through the ordinary services (``training_run_queue`` without enqueueing,
then ``training_run_execute``), so the new run is validated, charged and registered like
any other. SISA unlearning reuses the original run's placement of people (its
SisaAssignment rows, through ``sisa_placements_from``): the shards that held someone no
longer in the snapshot are retrained from the checkpoint taken before the first slice that
contained them, with the shard's original noise multiplier and seeds (``unlearning``).
"""

from __future__ import annotations

import logging
from typing import Any

from governance.services import ServiceError
from mlops.models import ModelVersion, RunStatus, TrainingRun
from mlops.services.registry import (
    erasure_amendments_after,
    lineage_files_remove,
    lineage_head,
    lineage_remediation_lock,
    model_version_keep_on_dp,
    model_version_retire,
)
from mlops.services.unlearning import _abandon_orphans, _sisa_unlearn

logger = logging.getLogger(__name__)

RETRAIN = "retrain"
SISA_UNLEARN = "sisa_unlearn"
RELY_ON_DP = "rely_on_dp"
RETIRE = "retire"
ACTIONS = (RETRAIN, SISA_UNLEARN, RELY_ON_DP, RETIRE)


def _retraining_refusal(*, head: ModelVersion) -> str | None:
    """Why ``head``'s snapshot may not be trained on again now (None: it may): retraining and
    SISA unlearning read it afresh, so they pass the same check as any new run."""
    from governance.services import ServiceConflict
    from mlops.services.queueing import snapshot_trainable_check

    if TrainingRun.objects.filter(
        remediates=head, status__in=(RunStatus.QUEUED, RunStatus.RUNNING), sisa_placements_from__isnull=True,
    ).exists():
        return None  # a retraining a dead worker left behind: it passed the check when queued
    try:
        snapshot_trainable_check(snapshot=head.training_run.snapshot)
    except ServiceConflict as exc:
        return str(exc)
    return None


def _retrain(*, head: ModelVersion) -> ModelVersion:
    """Retrain ``head``'s configuration from scratch on its snapshot as it is now; resumes
    a retraining a dead worker left behind instead of starting (and charging) another."""
    from mlops.services.execution import training_run_execute
    from mlops.services.queueing import training_run_queue

    _abandon_orphans(head=head)  # an unlearning a dead worker left, if the policy changed to retrain
    run = (
        TrainingRun.objects.filter(
            remediates=head, status__in=(RunStatus.QUEUED, RunStatus.RUNNING), sisa_placements_from__isnull=True,
        ).order_by("-pk").first()
    )
    if run is None:
        old = head.training_run
        run = training_run_queue(
            snapshot=old.snapshot_id, name=old.name, task=old.task, model_spec=old.model_spec, optimizer=old.optimizer,
            learning_rate=old.learning_rate, epochs=old.epochs, batch_size=old.batch_size, seed=old.seed,
            validation_split=old.validation_split, holdout_fraction=old.holdout_fraction,
            target_epsilon=old.target_epsilon, noise_multiplier=old.requested_noise_multiplier,
            target_delta=old.target_delta, max_grad_norm=old.max_grad_norm, accountant=old.accountant,
            allow_non_private=old.allow_non_private, sisa=old.sisa, requested_by=None, enqueue=False, remediates=head,
            release_training_metrics=old.release_training_metrics,
        )
    # Trained here, outside any transaction, while this worker holds the lineage.
    # takeover: the lineage lock is ours, so a run left 'running' is a dead worker's.
    training_run_execute(run_id=run.pk, takeover=True)
    run.refresh_from_db()
    if run.status != RunStatus.SUCCEEDED:
        raise ServiceError(
            f"Retraining run {run.pk} of {head.name} did not succeed ({run.status}): {run.error}", field="model_version"
        )
    return run.model_versions.get()


def model_lineage_remediate(
    *, name: str, action: str, erasure_request_id: int | None = None, reason: str = ""
) -> dict[str, Any]:
    # ``reason`` names the cause ("erasure request 12") in the status reasons written.
    """Bring lineage ``name`` to a live version trained on none of the people erased from
    its snapshot so far, or retire it; idempotent (a clean head is left alone).

    ``action`` is what the DPO's policy asks for this lineage: ``sisa_unlearn`` (a SISA
    head; any other head is retrained), ``retrain``, ``rely_on_dp`` (keep the head on its
    DP guarantee for ``erasure_request_id``) or ``retire``. Returns what was done and the
    version that now stands for the lineage, and the files of replaced versions removed.
    A head trained outside the ledger that must be retrained or unlearned is left as it is,
    outcome ``awaiting_owner``: only its owner can retrain it.
    """
    if action not in ACTIONS:
        raise ServiceError(f"Unknown remediation {action!r}; one of {', '.join(ACTIONS)}.", field="action")
    with lineage_remediation_lock(name):
        head = lineage_head(name=name)
        result: dict[str, Any] = {"name": name, "action": action}
        if head is None:
            result["outcome"] = "no_live_version"
        elif not erasure_amendments_after(run=head.training_run):
            result.update(outcome="clean", model_version=head.pk, version=head.version)
        elif action == RETIRE:
            model_version_retire(model_version=head, reason=f"retired after {reason or 'an erasure'}")
            result.update(outcome="retired", model_version=head.pk, version=head.version)
        elif action == RELY_ON_DP:
            kept = model_version_keep_on_dp(
                model_version=head, accepted_erasure_requests={erasure_request_id} if erasure_request_id else set(),
                reason=f"kept on its DP guarantee (ε={head.epsilon}) after {reason or 'an erasure'} (accepted risk)",
            )
            result.update(outcome="kept_on_dp" if kept else "kept_on_dp_pending_other_erasures",
                          model_version=head.pk, version=head.version, epsilon=head.epsilon)
        elif head.external:
            # Trained outside the ledger: it holds no weights to retrain or unlearn. The head
            # stays tainted (not to be served; its owner is told by its status and webhooks)
            # until the owner reports a version retrained on the amended snapshot (an external
            # run that ``remediates`` it) or it is retired; the caller waits for that.
            owner = head.training_run.requested_by
            result.update(outcome="awaiting_owner", model_version=head.pk, version=head.version,
                          executor="external", owner=owner.get_username() if owner else "")
        elif (blocked := _retraining_refusal(head=head)) is not None:
            # Retraining or unlearning would process people the snapshot no longer covers
            # (or a reconstruction): the erasure must still complete, so the head is taken
            # out of service instead; a new version is trained on a fresh snapshot.
            model_version_retire(
                model_version=head,
                reason=f"retired after {reason or 'an erasure'} instead of retrained: {blocked}",
            )
            result.update(outcome="retired", model_version=head.pk, version=head.version, retired_because=blocked)
        else:
            replaced = head
            if action == SISA_UNLEARN and replaced.is_sisa_ensemble:
                new = _sisa_unlearn(head=replaced)
                result["outcome"] = "unlearned"
                result["retrained_shards"] = new.metrics.get("retrained_shards", {})
            else:
                new = _retrain(head=replaced)
                result["outcome"] = "retrained"
            result.update(
                model_version=new.pk, version=new.version, replaced_model_version=replaced.pk,
                replaced_version=replaced.version, new_training_run=new.training_run_id, epsilon=new.epsilon,
                artifact_sha256=new.artifact_sha256,
            )
        result["files_removed"] = lineage_files_remove(name=name)
    return result
