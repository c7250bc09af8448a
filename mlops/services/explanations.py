"""Explanations on the mlops side (issue 19): the output policy of a model, the
explanation-based membership-inference attack, and the "logic involved" summary of a
version computed after its registration.

- ``output_policy_set``: a DPO records what a model's decisions reveal (append-only);
- ``explanation_attack_run``: the membership attack scoring a record by the L1 norm of
  its Integrated Gradients attributions to its true label (smaller: member), on the same people as
  the loss attack and scored by the same code (``engine.mia.score_attack``), so its AUC,
  advantage and intervals mean the same; run in the loss attack's audit job;
- ``model_explanation_summary_compute``: global attributions over the run's validation
  split, once per version (a redelivered task finds the row and stops).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, transaction

from governance.dispatch import task_dispatch_on_commit, task_publish, unstarted_cutoff
from governance.services import ServiceError, audit_event_record
from mlops import data
from mlops.models import (
    MembershipAttack,
    MembershipInferenceAudit,
    ModelExplanationSummary,
    ModelOutputPolicy,
    ModelVersion,
    OutputPolicyKind,
)

logger = logging.getLogger(__name__)

# Validation records the logic summary averages over (a seeded sample above it).
SUMMARY_MAX_ROWS = 2000
# IG path points per record: enough for a completeness error far below the figures shown.
IG_STEPS = 32
MAX_DIGITS = 6


def output_policy_set(
    *, actor: Any, name: Any, kind: Any, digits: Any = 2, withhold_attributions: Any = False, reason: Any = "",
) -> ModelOutputPolicy:
    """Record the output policy of model ``name`` (DPO only; a new row every time, the
    latest in force for all its versions)."""
    from governance.roles import DPO, has_role

    if not has_role(actor, DPO):
        raise PermissionDenied("Only a DPO may set an output policy.")
    if not isinstance(name, str) or not name.strip():
        raise ServiceError("name: give the name of a registered model", field="name")
    name = name.strip()
    if not ModelVersion.objects.filter(name=name).exists():
        raise ServiceError(f"name: no model named {name!r} is registered", field="name")
    if kind not in OutputPolicyKind.values:
        raise ServiceError(f"kind: must be one of {', '.join(OutputPolicyKind.values)}", field="kind")
    if isinstance(digits, bool) or not isinstance(digits, int) or not 0 <= digits <= MAX_DIGITS:
        raise ServiceError(f"digits: must be an integer from 0 to {MAX_DIGITS}", field="digits")
    if not isinstance(withhold_attributions, bool):
        raise ServiceError("withhold_attributions: must be true or false", field="withhold_attributions")
    if not isinstance(reason, str):
        raise ServiceError("reason: must be text", field="reason")
    with transaction.atomic():
        policy = ModelOutputPolicy.objects.create(
            name=name, kind=kind, digits=digits, withhold_attributions=withhold_attributions,
            reason=reason.strip()[:4000], set_by=actor if getattr(actor, "pk", None) else None,
        )
        audit_event_record(
            actor=actor, action="output_policy.set", object_type="model_output_policy", object_id=policy.pk,
            details={"name": name, "kind": kind, "digits": digits, "withhold_attributions": withhold_attributions,
                     "reason": policy.reason[:1000]},
        )
    return policy


def _ensemble(version: ModelVersion):
    from mlops.engine.explain import Ensemble
    from mlops.services.audits import model_version_load

    return Ensemble(model_version_load(model_version=version))


def explanation_attack_run(
    *, model_version_id: int, max_examples: int | None = None,
    on_progress: Callable[..., None] | None = None,
) -> MembershipInferenceAudit:
    """The explanation-based membership attack (after Shokri et al. 2021) against a version.

    Score: minus the L1 norm of a record's IG attributions to its true label, against
    the schema baseline (``engine.explain.attribution_norms``): training records get
    smaller, steadier explanations (Shokri et al. 2021; measured here too: an over-fitted
    model's members have the smaller norms), so a smaller norm is more member-like.
    The members and non-members are the audit's one sample (those of the loss attack), the
    bootstrap seeded from the run's seed. Idempotent: one such audit per version.
    """
    from mlops.engine import explain, mia
    from mlops.services.audit_data import audit_sample, audit_sample_rule
    from mlops.services.audits import audit_figures

    version = ModelVersion.objects.select_related("training_run__snapshot__dataset").get(pk=model_version_id)
    existing = version.membership_inference_audits.filter(attack=MembershipAttack.EXPLANATION).first()
    if existing is not None:
        return existing
    run = version.training_run
    sample = audit_sample(run=run, limit=max_examples)
    tensors = sample.tensors
    ensemble = _ensemble(version)
    if on_progress is not None:
        on_progress(0, 2, "explanation attack: members")
    member_scores = explain.attribution_norms(
        ensemble, tensors.X[sample.members], tensors.y[sample.members], encoding=run.encoding, n_steps=IG_STEPS)
    if on_progress is not None:
        on_progress(1, 2, "explanation attack: non-members")
    nonmember_scores = explain.attribution_norms(
        ensemble, tensors.X[sample.nonmembers], tensors.y[sample.nonmembers], encoding=run.encoding, n_steps=IG_STEPS)
    if on_progress is not None:
        on_progress(2, 2, "explanation attack scored")
    result = mia.score_attack(member_scores=-member_scores, nonmember_scores=-nonmember_scores, seed=sample.seed,
                              attack="explanation")
    try:
        with transaction.atomic():
            audit = MembershipInferenceAudit.objects.create(
                model_version=version, attack=MembershipAttack.EXPLANATION, **audit_figures(result),
                members_available=sample.members_available, nonmembers_available=sample.nonmembers_available,
                sampling_seed=sample.seed, sampling_rule=audit_sample_rule(sample), notes=result.notes,
                roc=result.roc, roc_band=result.roc_band,
            )
            audit_event_record(
                actor=None, action="membership_inference_audit.completed", object_type="model_version",
                object_id=version.pk,
                details={"audit": audit.pk, "attack": "explanation", "auc": result.auc,
                         "auc_interval": [result.auc_low, result.auc_high], "advantage": result.advantage,
                         "n_members": result.n_members, "n_nonmembers": result.n_nonmembers},
            )
    except IntegrityError:
        # Another delivery of the same job finished first; its (identical) result stands.
        return version.membership_inference_audits.get(attack=MembershipAttack.EXPLANATION)
    return audit


def _validation_rows(run) -> tuple[np.ndarray, np.ndarray, int]:
    """(X, y, available) of the run's labelled validation records, a seeded sample above
    ``SUMMARY_MAX_ROWS``."""
    from mlops.services.training import _split_tensors

    tensors, split, labelled = _split_tensors(run)
    rows = np.nonzero(labelled & (split == data.SPLIT_VALIDATION))[0]
    available = len(rows)
    if available > SUMMARY_MAX_ROWS:
        rng = np.random.default_rng(np.random.SeedSequence([abs(int(run.seed)), 19]))
        rows = np.sort(rng.choice(rows, size=SUMMARY_MAX_ROWS, replace=False))
    return tensors.X[rows], tensors.y[rows], available


def model_explanation_summary_compute(*, model_version_id: int) -> ModelExplanationSummary | None:
    """Compute and store the version's logic summary; a version that has one keeps it (a
    redelivered task does nothing), a deleted one is None. A computation that cannot run
    (weights missing, the snapshot emptied) is stored with its ``error`` so it is not
    retried for ever; database faults propagate for the task to retry."""
    from mlops.engine import explain
    from mlops.services import DATABASE_FAULTS

    version = ModelVersion.objects.select_related("training_run__snapshot__dataset").filter(pk=model_version_id).first()
    if version is None:
        return None
    existing = ModelExplanationSummary.objects.filter(model_version=version).first()
    if existing is not None:
        return existing
    run = version.training_run
    encoding = run.encoding or {}
    fields: dict[str, Any] = {
        "method": "integrated_gradients", "baseline_rule": explain.BASELINE_RULE,
        "features_used": [name for name, _ in explain.feature_columns(encoding)],
    }
    try:
        X, _, available = _validation_rows(run)
        fields.update(global_attributions=explain.global_attributions(_ensemble(version), X, encoding=encoding,
                                                                      n_steps=IG_STEPS), n_rows=len(X))
        notes = [f"Averaged over {len(X):,} of the run's {available:,} validation records (people it was not "
                 "trained on), Integrated Gradients on each record's predicted class."]
        if available == 0:
            notes = ["The run had no validation records: no global attribution can be given."]
            fields["global_attributions"] = []
        fields.update(notes=notes, error="")
    except DATABASE_FAULTS:
        raise
    except Exception as exc:
        logger.exception("logic summary of model version %s could not be computed", version.pk)
        fields.update(global_attributions=[], n_rows=0, notes=[], error=f"{type(exc).__name__}: {exc}"[:2000])
    try:
        with transaction.atomic():
            summary = ModelExplanationSummary.objects.create(model_version=version, **fields)
            audit_event_record(
                actor=None, action="model_explanation_summary.computed" if not fields["error"]
                else "model_explanation_summary.failed", object_type="model_version", object_id=version.pk,
                details={"summary": summary.pk, "n_rows": fields["n_rows"], "error": fields["error"][:500]},
            )
    except IntegrityError:
        return ModelExplanationSummary.objects.get(model_version=version)
    return summary


def model_explanation_summary_queue(*, model_version: ModelVersion) -> None:
    """Send the summary's computation to the worker after the registering commit."""
    from mlops.tasks import model_explanation_summary

    task_dispatch_on_commit(model_explanation_summary, args=[model_version.pk])


def model_explanation_summaries_redispatch(*, now=None) -> int:
    """Send again the summaries of live versions that have none although their loss audit
    finished before the unstarted cutoff (the message sent with the audits was lost):
    ``audit_jobs.privacy_audit_jobs_redispatch`` calls it. A summary that could not be
    computed is stored with its error, so nothing is sent for ever."""
    from mlops.models import AuditJobStatus, AuditKind, PrivacyAuditJob
    from mlops.services.registry import LIVE_STATUSES
    from mlops.tasks import model_explanation_summary

    missing = PrivacyAuditJob.objects.filter(
        kind=AuditKind.LOSS, status__in=(AuditJobStatus.COMPLETED, AuditJobStatus.SKIPPED, AuditJobStatus.FAILED),
        finished_at__lt=unstarted_cutoff(now), model_version__status__in=LIVE_STATUSES,
        model_version__explanation_summary__isnull=True,
    ).values_list("model_version_id", flat=True)
    return sum(task_publish(model_explanation_summary, args=[pk]) for pk in missing)
