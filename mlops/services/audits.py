"""Privacy audits of model versions: loading a version's models, the records an audit
attacked (for outsiders), and the loss-threshold membership-inference baseline."""

from __future__ import annotations

import logging

import numpy as np
from django.conf import settings
from django.db import IntegrityError, transaction

from governance.services import audit_event_record
from mlops import artifacts, data
from mlops.models import MembershipAttack, MembershipInferenceAudit, ModelVersion
from mlops.services.audit_data import SAMPLING_RULE, audit_sample, audit_sample_rows, audit_sample_rule
from mlops.services.config import _train_config

logger = logging.getLogger(__name__)


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
    """float64 losses from the logits (single model or SISA mean of probabilities)."""
    from mlops.engine import mia

    return mia.per_example_losses(models=models, X=X, y=y)


def audit_record_ids(*, model_version: ModelVersion, max_examples: int | None = None) -> dict:
    """The DataRecord ids the membership-inference audit of ``model_version`` attacks as
    members and as non-members, recomputed with the audit's own sampling (never stored).

    The limit per side is ``max_examples``, else the one the version's recorded audit used
    (read from its sizes), else ``MLOPS_MIA_MAX_EXAMPLES``. Reads the snapshot's record
    ids, subjects and labels only (one query, no features). ``matches_audit`` is None before
    an audit is recorded, and False when the counts differ from the recorded audit's: people
    were removed from the snapshot since (erasure), and the ids are those of the snapshot as
    it is now.
    """
    from provenance.models import SnapshotMembership

    run = model_version.training_run
    # The loss-threshold audit's sample: other attacks (LiRA) are recorded beside it.
    audit = next(
        (a for a in model_version.membership_inference_audits.all() if getattr(a, "attack", "loss") == "loss"), None
    )
    limit = max_examples
    if limit is None and audit is not None and audit.members_available is not None:
        # A side sampled down has exactly `limit` records; neither sampled: any limit ≥ both sizes.
        if audit.n_members < audit.members_available:
            limit = audit.n_members
        elif audit.n_nonmembers < (audit.nonmembers_available or 0):
            limit = audit.n_nonmembers
        else:
            limit = max(audit.members_available, audit.nonmembers_available or 0, 1)
    limit = limit or settings.MLOPS_MIA_MAX_EXAMPLES
    rows = list(
        SnapshotMembership.objects.filter(snapshot_id=run.snapshot_id).order_by("record_id")
        .values_list("record_id", "subject_id", "record__label")
    )
    record_ids = np.asarray([r[0] for r in rows], dtype=np.int64)
    subject_ids = np.asarray([r[1] for r in rows], dtype=np.int64)
    # A run with no recorded classes (never trained) has no labelled row: nothing was attacked.
    classes = (run.encoding or {}).get("classes") or []
    labelled = data.label_codes(labels=[r[2] for r in rows], classes=classes) >= 0
    # The split exactly as training._split_tensors draws it for the run.
    split = data.subject_split(
        subject_ids=subject_ids, seed=run.seed,
        validation_split=run.validation_split, holdout_fraction=run.holdout_fraction,
    )
    members, nonmembers, members_available, nonmembers_available, seed = audit_sample_rows(
        run=run, split=split, labelled=labelled, limit=limit
    )
    return {
        "members": record_ids[members].tolist(),
        "nonmembers": record_ids[nonmembers].tolist(),
        "members_available": members_available,
        "nonmembers_available": nonmembers_available,
        "limit_per_side": int(limit),
        "sampling_seed": seed,
        "sampling_rule": f"{SAMPLING_RULE}; at most {limit:,} of each",
        "audit": audit.pk if audit is not None else None,
        "matches_audit": None if audit is None else (
            audit.members_available == members_available and audit.nonmembers_available == nonmembers_available
            and audit.n_members == len(members) and audit.n_nonmembers == len(nonmembers)
        ),
    }


def membership_inference_audit_run(
    *, model_version_id: int, max_examples: int | None = None, on_progress=None,
) -> MembershipInferenceAudit:
    """Loss-threshold membership inference (Yeom et al. 2018) against a model version: the
    cheap baseline beside LiRA (``audit_lira``).

    Members and non-members are the audit's one sample (``audit_data.audit_sample``), the
    bootstrap seeded from the run's seed, so the same version always gets the same audit.
    Idempotent: one loss audit per model version.
    """
    import torch

    from mlops.engine import mia

    version = ModelVersion.objects.select_related("training_run__snapshot__dataset").get(pk=model_version_id)
    existing = version.membership_inference_audits.filter(attack=MembershipAttack.LOSS).first()
    if existing is not None:
        return existing
    sample = audit_sample(run=version.training_run, limit=max_examples)
    tensors, members, nonmembers = sample.tensors, sample.members, sample.nonmembers
    models = model_version_load(model_version=version)
    member_losses = _per_example_losses(models, torch.from_numpy(tensors.X[members]), tensors.y[members])
    nonmember_losses = _per_example_losses(models, torch.from_numpy(tensors.X[nonmembers]), tensors.y[nonmembers])
    result = mia.loss_threshold_attack(member_losses=member_losses, nonmember_losses=nonmember_losses, seed=sample.seed)
    try:
        with transaction.atomic():
            audit = MembershipInferenceAudit.objects.create(
                model_version=version, attack=MembershipAttack.LOSS, **audit_figures(result),
                members_available=sample.members_available, nonmembers_available=sample.nonmembers_available,
                sampling_seed=sample.seed, sampling_rule=audit_sample_rule(sample), notes=result.notes,
                roc=result.roc, roc_band=result.roc_band,
            )
            audit_event_record(
                actor=None, action="membership_inference_audit.completed", object_type="model_version",
                object_id=version.pk,
                details={"audit": audit.pk, "attack": "loss", "auc": result.auc,
                         "auc_interval": [result.auc_low, result.auc_high], "advantage": result.advantage,
                         "tpr_at_1pct_fpr": result.tpr_at_1pct_fpr, "n_members": result.n_members,
                         "n_nonmembers": result.n_nonmembers, "members_available": sample.members_available,
                         "nonmembers_available": sample.nonmembers_available},
            )
    except IntegrityError:
        # Another delivery of the same job finished first; its (identical) result stands.
        return version.membership_inference_audits.get(attack=MembershipAttack.LOSS)
    return audit


def audit_figures(result) -> dict:
    """The figure fields of a MembershipInferenceAudit from an engine ``MIAResult``."""
    figures = {}
    for name in ("auc", "advantage", "tpr_at_1pct_fpr", "tpr_at_01pct_fpr"):
        figures[name] = getattr(result, name)
        figures[f"{name}_low"] = getattr(result, f"{name}_low")
        figures[f"{name}_high"] = getattr(result, f"{name}_high")
    figures.update(n_members=result.n_members, n_nonmembers=result.n_nonmembers,
                   bootstrap_resamples=result.bootstrap_resamples)
    return figures
