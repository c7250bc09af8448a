"""Privacy audits of model versions: loading a version's models, membership inference.
"""

from __future__ import annotations

import logging

import numpy as np
from django.conf import settings
from django.db import transaction

from governance.services import ServiceConflict, audit_event_record
from mlops import artifacts, data
from mlops.models import (
    MembershipInferenceAudit,
    ModelVersion,
)
from mlops.services.config import _train_config
from mlops.services.training import _split_tensors

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


SAMPLING_RULE = (
    "members: the run's training records; non-members: the records of persons held out for the audit; "
    "each side, when above the limit, sampled uniformly without replacement with numpy default_rng(seed), "
    "members first"
)


@transaction.atomic
def membership_inference_audit_run(*, model_version_id: int, max_examples: int | None = None) -> MembershipInferenceAudit:
    """Loss-threshold membership inference (Yeom et al. 2018) against a model version.

    Members are the run's training records, non-members the records of the persons held
    out of training for this purpose. The sample (at most ``max_examples`` of each) and the
    bootstrap are seeded from the run's seed, so the same version always gets the same
    audit. Idempotent: one audit per model version.
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
    members_available, nonmembers_available = len(members), len(nonmembers)
    if nonmembers_available == 0:
        raise ServiceConflict(f"Training run {run.pk} held out no one: there are no non-members to audit against.")
    if members_available == 0:
        raise ServiceConflict(f"Training run {run.pk} trained on no labelled record: there are no members to audit.")
    # A negative seed cannot seed a SeedSequence; the API only accepts seeds ≥ 0.
    seed = abs(int(run.seed))
    rng = np.random.default_rng(seed)
    if len(members) > limit:
        members = np.sort(rng.choice(members, size=limit, replace=False))
    if len(nonmembers) > limit:
        nonmembers = np.sort(rng.choice(nonmembers, size=limit, replace=False))
    models = model_version_load(model_version=version)
    member_losses = _per_example_losses(models, torch.from_numpy(tensors.X[members]), tensors.y[members])
    nonmember_losses = _per_example_losses(models, torch.from_numpy(tensors.X[nonmembers]), tensors.y[nonmembers])
    result = mia.loss_threshold_attack(member_losses=member_losses, nonmember_losses=nonmember_losses, seed=seed)
    audit = MembershipInferenceAudit.objects.create(
        model_version=version, auc=result.auc, auc_low=result.auc_low, auc_high=result.auc_high,
        advantage=result.advantage, advantage_low=result.advantage_low, advantage_high=result.advantage_high,
        tpr_at_1pct_fpr=result.tpr_at_1pct_fpr, tpr_at_1pct_fpr_low=result.tpr_at_1pct_fpr_low,
        tpr_at_1pct_fpr_high=result.tpr_at_1pct_fpr_high, tpr_at_01pct_fpr=result.tpr_at_01pct_fpr,
        tpr_at_01pct_fpr_low=result.tpr_at_01pct_fpr_low, tpr_at_01pct_fpr_high=result.tpr_at_01pct_fpr_high,
        n_members=result.n_members, n_nonmembers=result.n_nonmembers, members_available=members_available,
        nonmembers_available=nonmembers_available, sampling_seed=seed,
        sampling_rule=f"{SAMPLING_RULE}; at most {limit:,} of each", bootstrap_resamples=result.bootstrap_resamples,
        notes=result.notes, roc=result.roc,
    )
    audit_event_record(
        actor=None, action="membership_inference_audit.completed", object_type="model_version", object_id=version.pk,
        details={"audit": audit.pk, "auc": result.auc, "auc_interval": [result.auc_low, result.auc_high],
                 "advantage": result.advantage, "tpr_at_1pct_fpr": result.tpr_at_1pct_fpr,
                 "n_members": result.n_members, "n_nonmembers": result.n_nonmembers,
                 "members_available": members_available, "nonmembers_available": nonmembers_available},
    )
    return audit
