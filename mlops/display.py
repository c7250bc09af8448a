"""Training figures in people's words, shared by the admin, the reports and the demo.

One home for what a run's numbers mean, so a page and a PDF cannot describe the same figure
differently (the record counts were once called "people" on one and "subjects" on another).
"""

from __future__ import annotations

import math
from typing import Any

from governance import display

# Keys of ModelVersion.metrics. The sizes count records: the split puts whole people on
# one side, but DP-SGD samples, clips and counts records.
METRIC_LABELS = {
    "loss": "Training loss (last epoch)",
    "train_accuracy": "Training accuracy",
    "val_accuracy": "Validation accuracy",
    "n_train": "Records trained on",
    "n_validation": "Records in validation",
    "n_holdout": "Records held out (non-members for the audits)",
    "shards": "SISA shards",
    "slices": "SISA slices per shard",
    "shard_epsilons": "ε per shard",
    "unlearned_from": "Unlearned from model version",
    "retrained_shards": "Shards retrained",
}


def metric_label(key: str) -> str:
    return METRIC_LABELS.get(key, key.replace("_", " ").capitalize())


def metric_value(key: str, value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {metric_value(key, v)}" for k, v in value.items()) or display.DASH
    if isinstance(value, list | tuple):
        return ", ".join(metric_value(key, v) for v in value) or display.DASH
    if key.endswith("accuracy") and isinstance(value, int | float) and not isinstance(value, bool):
        return display.percent(value)
    return display.number(value)


def metric_rows(metrics: dict | None) -> list[tuple[str, str]]:
    return [(metric_label(k), metric_value(k, v)) for k, v in (metrics or {}).items()]


def split_words(*, n_train: int, n_validation: int, n_holdout: int) -> str:
    return (f"{n_train:,} records trained on, {n_validation:,} in validation, {n_holdout:,} held out for the "
            "privacy audits (each person's records all on one side)")


def person_guarantee(*, epsilon: float | None, delta: float | None, max_records_per_person: int | None
                     ) -> tuple[float, float] | None:
    """(ε, δ) for one person, by group privacy over their records; None when not known."""
    from mlops.engine.accounting import group_privacy

    if epsilon is None or delta is None or not max_records_per_person:
        return None
    return group_privacy(epsilon=epsilon, delta=delta, k=max_records_per_person)


def person_guarantee_words(*, epsilon: float | None, delta: float | None, max_records_per_person: int | None,
                           non_private: bool = False) -> str:
    """What the record-level ε means for a person, as a sentence a DPO can repeat."""
    if non_private:
        return "None: trained without differential privacy."
    if epsilon is None:
        return "Not known yet (the run has not finished)."
    k = max_records_per_person
    if not k:
        return ("ε bounds what one record changes; how many records a person has in the training set was not "
                "recorded for this run (trained before that was kept), so no figure per person can be given.")
    if k == 1:
        return ("Every person has one record in the training set, so the record-level guarantee is also each "
                "person's.")
    person_epsilon, person_delta = person_guarantee(epsilon=epsilon, delta=delta, max_records_per_person=k)
    head = (f"ε bounds what one record changes, and a person has up to {k:,} records in the training set. "
            f"By group privacy a person is protected at ε = {display.epsilon(person_epsilon)}")
    if not math.isfinite(person_delta) or person_delta >= 1:
        return head + " with δ ≥ 1: no guarantee for a person at all."
    return head + f", δ = {display.number(person_delta)} only."
