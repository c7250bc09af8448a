"""Attribute inference against a model version, for every feature the dataset marks as
special-category data (Art. 9) or sensitive (Jayaraman & Evans 2022).

An attacker who knows a person's other features and label, and can query the model,
guesses the sensitive feature; a second attacker imputes it from the same features without
the model. The gain of the first over the second is what the model itself gives away (the
risk of model inversion); both are trained on the people held out for the audit and
tested on the audit's members, the first also on the sensitive values of some other members
(``KNOWN_MEMBER_FOLDS``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from django.db import IntegrityError, transaction

from governance.services import audit_event_record
from mlops.models import AttributeInferenceAudit, ModelVersion
from mlops.services.audit_data import audit_sample
from mlops.services.audit_jobs import AuditNotApplicable
from mlops.services.audits import model_version_load

# A numeric sensitive feature is attacked as a choice among its distinct values; past this
# many it is continuous, which this classification attack does not cover.
MAX_NUMERIC_CANDIDATES = 10
MIN_POPULATION = 20
# The attacker also knows the sensitive value of some members (side knowledge, e.g. a leaked
# part of the training set): members are split into this many folds and each fold is
# attacked by classifiers trained on the others. An attacker who knows no member learns only
# how the model treats strangers and never beats imputation, even against a model that
# memorised its members (Jayaraman & Evans 2022 found the same).
KNOWN_MEMBER_FOLDS = 5


def sensitive_features(*, schema: dict) -> list[dict]:
    """The schema's features marked ``special_category`` (Art. 9) or ``sensitive``."""
    return [f for f in schema.get("features") or [] if f.get("special_category") is True or f.get("sensitive") is True]


def attribute_inference_audits_run(*, model_version_id: int, on_progress: Callable[..., None] | None = None) -> str:
    """Attribute inference of every sensitive feature; idempotent (one row per feature).

    Answers a note for the DPO: which features were audited or why none was."""
    version = ModelVersion.objects.select_related("training_run__snapshot__dataset").get(pk=model_version_id)
    run = version.training_run
    flagged = sensitive_features(schema=run.snapshot.dataset.schema or {})
    if not flagged:
        return "No feature of the dataset is marked special-category (Art. 9) or sensitive: nothing to attack."
    import torch

    from mlops.engine import attribute

    sample = audit_sample(run=run)
    if len(sample.members) < KNOWN_MEMBER_FOLDS:
        raise AuditNotApplicable(
            f"Attribute inference needs at least {KNOWN_MEMBER_FOLDS} members; this run trained on "
            f"{len(sample.members):,}."
        )
    if len(sample.nonmembers) < MIN_POPULATION:
        raise AuditNotApplicable(
            f"Attribute inference trains its attackers on the people held out for the audit: it needs at least "
            f"{MIN_POPULATION}, this run held out {len(sample.nonmembers):,}."
        )
    encoded = {f["name"] for f in (run.encoding or {}).get("features") or []}
    done_features = set(version.attribute_inference_audits.values_list("feature", flat=True))
    models = model_version_load(model_version=version)
    X, y = sample.tensors.X, sample.tensors.y
    notes = []
    for i, spec in enumerate(flagged):
        name = spec["name"]
        if on_progress is not None:
            on_progress(i, len(flagged), f"attacking {name}")
        if name in done_features or name not in encoded:
            continue
        cols, _ = attribute.feature_columns(encoding=run.encoding, name=name)
        if spec.get("type") == "category":
            candidates = attribute.candidates_for(columns=cols, kind="category")
        else:
            # From both sides: a member's value that no held-out person has is still a candidate.
            values = np.unique(X[np.concatenate([sample.nonmembers, sample.members])][:, cols[0]])
            if len(values) > MAX_NUMERIC_CANDIDATES:
                notes.append(f"{name}: continuous ({len(values):,} distinct values); not attacked")
                continue
            candidates = attribute.candidates_for(columns=cols, kind="numeric", values=list(values))
        result = attribute.attribute_inference(
            models=models, X_population=torch.from_numpy(X[sample.nonmembers]),
            y_population=torch.from_numpy(y[sample.nonmembers]), X_members=torch.from_numpy(X[sample.members]),
            y_members=torch.from_numpy(y[sample.members]), n_classes=run.n_classes, columns=cols,
            candidates=candidates, feature_name=name, seed=sample.seed, known_member_folds=KNOWN_MEMBER_FOLDS,
        )
        threat = (f"Attacker: knows {name} for {KNOWN_MEMBER_FOLDS - 1} of every {KNOWN_MEMBER_FOLDS} members "
                  f"and for the {result.n_population:,} held-out people; each member is guessed by classifiers "
                  "that never saw that member's value.")
        try:
            with transaction.atomic():
                audit = AttributeInferenceAudit.objects.create(
                    model_version=version, feature=name, special_category=spec.get("special_category") is True,
                    attack_accuracy=result.attack_accuracy, imputation_accuracy=result.imputation_accuracy,
                    inversion_accuracy=result.inversion_accuracy, majority_accuracy=result.majority_accuracy,
                    gain=result.gain, gain_low=result.gain_low, gain_high=result.gain_high,
                    n_population=result.n_population, n_members=result.n_members, notes=[threat, *result.notes],
                )
                audit_event_record(
                    actor=None, action="attribute_inference_audit.completed", object_type="model_version",
                    object_id=version.pk,
                    details={"audit": audit.pk, "feature": name, "gain": result.gain,
                             "gain_interval": [result.gain_low, result.gain_high]},
                )
        except IntegrityError:
            continue
    if on_progress is not None:
        on_progress(len(flagged), len(flagged), "done")
    audited = [f["name"] for f in flagged if f["name"] not in {n.split(":")[0] for n in notes}]
    return "; ".join([f"audited: {', '.join(audited)}" if audited else "no feature audited", *notes])
