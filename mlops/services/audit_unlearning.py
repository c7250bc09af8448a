"""Checking that a version made to forget people does not remember them (U-LiRA style).

For an erasure, the rights app hands over the erased person's records, held in memory
while the erasure runs (they are deleted from the database before the models are
remediated and never stored again). Each record's loss under a model is ranked among the
losses of people the model never saw — the hold-out of the new version's run: the share
of them with a higher loss is the record's member-likeness, 0.5 for a person like any
never seen, near 1 for one the model fits unusually well, i.e. remembers.

The new version passes when the erased records' mean member-likeness is no higher than a
reference's plus a one-sided 95% margin (``1.645·√(1/(12n))``, the spread of a mean of n
uniform ranks). The reference is a model that never saw them: for a SISA version the
shard models left as they were (trained without the person); otherwise the hold-out
people themselves (0.50). The version replaced, which did see them, is scored too, to show
what remembering looks like for these records.
"""

from __future__ import annotations

import math

import numpy as np
from django.db import IntegrityError, transaction

from governance.services import audit_event_record
from mlops import data
from mlops.models import ModelVersion, UnlearningCheck
from mlops.services.audit_data import audit_sample
from mlops.services.audits import model_version_load
from mlops.services.config import _schema_for

Z_95_ONE_SIDED = 1.645


def _member_likeness(models: list, X_records, y_records, X_population, y_population) -> float:
    """Mean share of the population with a higher loss than each record (ties count ½)."""
    from mlops.engine import mia

    records = mia.per_example_losses(models=models, X=X_records, y=y_records)
    population = np.sort(mia.per_example_losses(models=models, X=X_population, y=y_population))
    below = np.searchsorted(population, records, side="left")
    above = len(population) - np.searchsorted(population, records, side="right")
    ties = len(population) - below - above
    return float(np.mean((above + 0.5 * ties) / len(population)))


def _encoded(version: ModelVersion, records: list[dict]):
    import torch

    run = version.training_run
    mine = [r for r in records if r.get("dataset_id") == run.snapshot.dataset_id]
    if not mine:
        return None
    X, y, _ = data.encode_rows(
        record_features=[r["features"] for r in mine], labels=[r.get("label") for r in mine],
        schema=_schema_for(run, run.snapshot.dataset.schema), classes=run.encoding.get("classes") or [],
    )
    keep = y >= 0
    if not keep.any():
        return None
    return torch.from_numpy(X[keep]), torch.from_numpy(y[keep])


def unlearning_check_record(
    *, model_version_id: int, previous_version_id: int | None, erasure_request_id: int, records: list[dict],
) -> UnlearningCheck | None:
    """Score the erased ``records`` ([{"dataset_id", "features", "label"}]) against the new
    version, its reference and the version it replaced; store the summary (never the
    records). None when none of the records was a labelled record of the version's dataset.
    Idempotent per (version, erasure request)."""
    import torch

    version = ModelVersion.objects.select_related("training_run__snapshot__dataset").get(pk=model_version_id)
    existing = UnlearningCheck.objects.filter(model_version=version, erasure_request_id=erasure_request_id).first()
    if existing is not None:
        return existing
    encoded = _encoded(version, records)
    if encoded is None:
        return None
    X_rec, y_rec = encoded
    sample = audit_sample(run=version.training_run)
    X_pop = torch.from_numpy(sample.tensors.X[sample.nonmembers])
    y_pop = torch.from_numpy(sample.tensors.y[sample.nonmembers])
    models = model_version_load(model_version=version)
    new_score = _member_likeness(models, X_rec, y_rec, X_pop, y_pop)
    notes = []
    margin = Z_95_ONE_SIDED * math.sqrt(1.0 / (12.0 * len(y_rec)))
    retrained = {int(k) for k in ((version.metrics or {}).get("retrained_shards") or {})}
    untouched = [m for i, m in enumerate(models) if i not in retrained] if len(models) > 1 else []
    if untouched:
        reference_score = float(np.mean([_member_likeness([m], X_rec, y_rec, X_pop, y_pop) for m in untouched]))
        reference = f"{len(untouched)} shard model(s) of the new version never trained on them"
    else:
        reference_score = 0.5
        reference = "people the new version never saw (its hold-out)"
    threshold = min(1.0, max(0.5, reference_score) + margin)
    previous_score = None
    if previous_version_id is not None:
        previous = ModelVersion.objects.select_related("training_run__snapshot__dataset").filter(
            pk=previous_version_id).first()
        encoded_prev = _encoded(previous, records) if previous is not None else None
        if encoded_prev is not None:
            try:
                previous_score = _member_likeness(
                    model_version_load(model_version=previous), *encoded_prev, X_pop, y_pop)
            except (FileNotFoundError, ValueError) as exc:
                notes.append(f"the version replaced could not be scored ({type(exc).__name__})")
    passed = new_score <= threshold
    try:
        with transaction.atomic():
            check = UnlearningCheck.objects.create(
                model_version=version, previous_version_id=previous_version_id, erasure_request_id=erasure_request_id,
                n_records=len(y_rec), reference=reference, new_score=new_score, reference_score=reference_score,
                previous_score=previous_score, threshold=threshold, passed=passed, notes=notes,
            )
            audit_event_record(
                actor=None, action="unlearning_check.passed" if passed else "unlearning_check.failed",
                object_type="model_version", object_id=version.pk,
                details={"check": check.pk, "erasure_request": erasure_request_id, "records": len(y_rec),
                         "new_score": new_score, "reference_score": reference_score,
                         "previous_score": previous_score, "threshold": threshold},
            )
    except IntegrityError:
        return UnlearningCheck.objects.get(model_version=version, erasure_request_id=erasure_request_id)
    return check
