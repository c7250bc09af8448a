"""LiRA against a model version: reference models trained by the engine on the people the
audit controls, then a likelihood-ratio test per record (Carlini et al. 2022).

The pool is the audit's sample of members (the run's training records) and non-members
(the records of people held out for the audit). Each reference model trains on a random
half of the pool, each record IN for exactly half of the references, with the version's
own configuration: the same network, optimiser, epochs and noise multiplier σ, and the
same sampling rate (so the expected batch is that share of the half). A SISA version's
references are SISA-like ensembles of the same number of shards. References are scored
and dropped; nothing of them is stored.

Cost: ``MLOPS_LIRA_REFERENCES`` trainings on about half the pool each, i.e. roughly
R × (pool / training set) of the version's own training (see ``make bench``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
from django.conf import settings
from django.db import IntegrityError, transaction

from governance.services import audit_event_record
from mlops.models import MembershipAttack, MembershipInferenceAudit, ModelVersion, TrainingRun
from mlops.services.audit_data import audit_sample, audit_sample_rule
from mlops.services.audit_jobs import AuditNotApplicable
from mlops.services.audits import audit_figures, model_version_load
from mlops.services.config import _train_config


def reference_train_fn(*, run: TrainingRun, n_features: int) -> Callable:
    """``train_fn(X_in, y_in, r)`` for ``engine.lira.train_references``: the run's
    configuration on the reference's IN half, as one model or as a shard ensemble."""
    from mlops.engine import dp_train

    config = _train_config(run)
    sample_rate = run.sample_rate or config.sample_rate(max(run.n_train, 1))
    shards = int(run.sisa["shards"]) if run.sisa else 1
    sigmas = list(run.shard_noise_multipliers or []) or [run.noise_multiplier] * shards

    def train_fn(X_in, y_in, r: int) -> list:
        import torch

        rng = np.random.default_rng(np.random.SeedSequence([abs(int(run.seed)), 7, r]))
        order = rng.permutation(len(X_in))
        parts = np.array_split(order, shards)
        models = []
        for shard, rows in enumerate(parts):
            if len(rows) == 0:
                continue
            n = len(rows)
            # One independent seed per (reference, shard), never one of another audit's.
            shard_seed = int(np.random.SeedSequence([abs(int(run.seed)), 7, r, shard]).generate_state(1)[0] >> 1)
            cfg = dataclasses.replace(
                config, seed=shard_seed,
                batch_size=max(1, min(n, round(sample_rate * n))),
                target_epsilon=None,
                noise_multiplier=(float(sigmas[min(shard, len(sigmas) - 1)]) if config.private else None),
                # ε of a reference is never reported; δ only has to stay valid for its size.
                target_delta=min(config.target_delta, 0.5 / n),
            )
            index = torch.from_numpy(np.sort(rows))
            result = dp_train.train(
                X_train=X_in.index_select(0, index), y_train=y_in.index_select(0, index), X_val=None, y_val=None,
                n_classes=run.n_classes, config=cfg, require_two_classes=False,
            )
            models.append(dp_train.load_model(
                state_dict=result.state_dict, n_features=n_features, n_classes=run.n_classes, config=cfg))
        return models

    return train_fn


def lira_audit_run(
    *, model_version_id: int, on_progress: Callable[..., None] | None = None, n_references: int | None = None,
) -> MembershipInferenceAudit:
    """LiRA against ``model_version_id``; idempotent (one LiRA audit per version)."""
    import torch

    from mlops.engine import lira

    version = ModelVersion.objects.select_related("training_run__snapshot__dataset").get(pk=model_version_id)
    existing = version.membership_inference_audits.filter(attack=MembershipAttack.LIRA).first()
    if existing is not None:
        return existing
    # A policy may ask for LiRA where the settings turned it off: then the engine's default.
    references = int(n_references or settings.MLOPS_LIRA_REFERENCES or lira.DEFAULT_REFERENCES)
    references = min(lira.MAX_REFERENCES, references + references % 2)  # each record IN for exactly half
    run = version.training_run
    sample = audit_sample(run=run)
    if len(sample.nonmembers) < 2 or len(sample.members) < 2:
        raise AuditNotApplicable(
            f"LiRA needs at least 2 members and 2 non-members; this run has {sample.members_available:,} "
            f"members and {sample.nonmembers_available:,} people held out for the audit."
        )
    pool = np.concatenate([sample.members, sample.nonmembers])
    X = torch.from_numpy(sample.tensors.X[pool])
    y = torch.from_numpy(sample.tensors.y[pool])

    def progress(done: int, total: int) -> None:
        if on_progress is not None:
            on_progress(done, total, "reference models trained")

    progress(0, references)
    result = lira.lira_audit(
        models=model_version_load(model_version=version), X=X, y=y,
        is_member=np.arange(len(pool)) < len(sample.members),
        train_fn=reference_train_fn(run=run, n_features=X.shape[1]), n_references=references, seed=sample.seed,
        on_progress=progress,
    )
    try:
        with transaction.atomic():
            audit = MembershipInferenceAudit.objects.create(
                model_version=version, attack=MembershipAttack.LIRA, n_references=references,
                **audit_figures(result), members_available=sample.members_available,
                nonmembers_available=sample.nonmembers_available, sampling_seed=sample.seed,
                sampling_rule=audit_sample_rule(sample), notes=result.notes, roc=result.roc, roc_band=result.roc_band,
            )
            audit_event_record(
                actor=None, action="membership_inference_audit.completed", object_type="model_version",
                object_id=version.pk,
                details={"audit": audit.pk, "attack": "lira", "references": references, "auc": result.auc,
                         "auc_interval": [result.auc_low, result.auc_high], "tpr_at_1pct_fpr": result.tpr_at_1pct_fpr,
                         "n_members": result.n_members, "n_nonmembers": result.n_nonmembers},
            )
    except IntegrityError:
        # Another delivery of the same job finished first; its (identical) result stands.
        return version.membership_inference_audits.get(attack=MembershipAttack.LIRA)
    return audit

