"""The empirical ε lower bound of a version's configuration: one audit run with canaries
(Steinke, Nasr & Jagielski 2023).

The audit run is a separate training of the version's configuration — the same network,
optimiser, epochs, batch size and noise multiplier σ — on the version's training records
plus canaries, each included with probability ½. Its model is scored on the canaries and
then dropped: canaries never reach a published model. A SISA version's audit run trains
one shard's configuration on a shard-sized share of the records (the ensemble's ε is the
largest of its shards').

The bound is a lower bound at 95% confidence: far below the claimed ε is what a correct
implementation gives (black-box canaries are weak); above the claimed ε is impossible
unless the implementation or the accounting is wrong, and is flagged as a privacy bug.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable

import numpy as np
from django.conf import settings
from django.db import IntegrityError, transaction

from governance.services import audit_event_record
from mlops import data
from mlops.models import CanaryAudit, ModelVersion
from mlops.services.audit_jobs import AuditNotApplicable
from mlops.services.config import _train_config
from mlops.services.training import _split_tensors

logger = logging.getLogger(__name__)


def canary_audit_run(*, model_version_id: int, on_progress: Callable[..., None] | None = None) -> CanaryAudit:
    """The canary audit of ``model_version_id``; idempotent (one per version)."""
    import torch

    from mlops.engine import canary

    version = ModelVersion.objects.select_related("training_run__snapshot__dataset").get(pk=model_version_id)
    existing = CanaryAudit.objects.filter(model_version=version).first()
    if existing is not None:
        return existing
    run = version.training_run
    if run.allow_non_private:
        raise AuditNotApplicable("The version was trained without differential privacy (ε = ∞): there is no claim to test.")
    tensors, split, labelled = _split_tensors(run)
    rows = np.nonzero(labelled & (split == data.SPLIT_TRAIN))[0]
    seed = abs(int(run.seed))
    config = _train_config(run)
    sigma = run.noise_multiplier
    if run.sisa:
        shards = int(run.sisa["shards"])
        rng = np.random.default_rng(np.random.SeedSequence([seed, 11]))
        rows = np.sort(rng.permutation(rows)[: max(1, len(rows) // shards)])
        sigmas = list(run.shard_noise_multipliers or [])
        sigma = float(sigmas[0]) if sigmas else sigma
    if len(rows) < 2 or sigma is None:
        raise AuditNotApplicable("The version's run has too few training records for an audit run.")
    n_canaries = int(min(settings.MLOPS_CANARY_COUNT, len(rows)))
    config = dataclasses.replace(
        config, noise_multiplier=float(sigma), target_epsilon=None,
        batch_size=max(1, min(len(rows), config.batch_size if not run.sisa else round((run.sample_rate or 0.01) * len(rows)))),
        seed=seed * 1000 + 997,
    )
    if on_progress is not None:
        on_progress(0, 1, "audit run with canaries training")
    X_rows = tensors.X[rows]
    # Canaries look like valid rows: uniform within each column's range. The range comes from
    # the records, which is harmless here: the audit run's model is never released.
    low, high = X_rows.min(axis=0), X_rows.max(axis=0)
    high = np.where(high > low, high, low + 1.0)
    result, claimed, _ = canary.canary_audit_train(
        X_train=torch.from_numpy(X_rows), y_train=torch.from_numpy(tensors.y[rows]), n_classes=run.n_classes,
        config=config, n_canaries=n_canaries, seed=seed, low=low.tolist(), high=high.tolist(),
    )
    if on_progress is not None:
        on_progress(1, 1, "audit run scored")
    flagged = bool(result.flagged)
    try:
        with transaction.atomic():
            audit = CanaryAudit.objects.create(
                model_version=version, claimed_epsilon=claimed if math.isfinite(claimed) else None,
                epsilon_lower_bound=result.epsilon_lower_bound, confidence=result.confidence, delta=config.target_delta,
                n_canaries=result.n_canaries, n_guesses=result.n_guesses, n_correct=result.n_correct,
                flagged=flagged, seed=seed, notes=list(result.notes),
            )
            audit_event_record(
                actor=None, action="canary_audit.privacy_bug" if flagged else "canary_audit.completed",
                object_type="model_version", object_id=version.pk,
                details={"audit": audit.pk, "epsilon_lower_bound": result.epsilon_lower_bound,
                         "claimed_epsilon": audit.claimed_epsilon, "confidence": result.confidence,
                         "canaries": result.n_canaries, "guesses": result.n_guesses, "correct": result.n_correct},
            )
    except IntegrityError:
        return CanaryAudit.objects.get(model_version=version)
    if flagged:
        logger.error(
            "PRIVACY BUG: model version %s: the canary audit's lower bound ε ≥ %.2f exceeds the claimed ε = %.2f",
            version.pk, result.epsilon_lower_bound, claimed,
        )
    return audit
