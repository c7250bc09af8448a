"""Turning a snapshot's records into tensors, and the subject-wise split of a run.

Every person's records fall in exactly one of train / validation / MIA hold-out, so a
held-out "non-member" is a person the model never saw (the membership-inference audit
would otherwise be measuring memorisation of that person's other records).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

import numpy as np
from django.conf import settings

from mlops.models import Executor
from provenance.models import SnapshotMembership

SPLIT_TRAIN, SPLIT_VALIDATION, SPLIT_HOLDOUT = 0, 1, 2
PERSON_SPLIT_RULE = "hmac-sha256(person-split key, '<seed>:<subject id>')[:8] / 2^64"
PERSON_SPLIT_RULE_VERSION = 1
_PERSON_SPLIT_KEY_LABEL = b"privacy-ledger/person-split/v1"
LOAD_BATCH_SIZE = 5000


@dataclass
class SnapshotLabels:
    """What the queue-time checks need: one row per record, no features."""

    subject_ids: np.ndarray  # int64 [N]
    labels: list  # raw JSON labels, in record order


@dataclass
class SnapshotTensors:
    X: np.ndarray  # float32 [N, d]
    y: np.ndarray  # int64 [N]
    subject_ids: np.ndarray  # int64 [N]
    encoding: dict


def snapshot_labels(*, snapshot_id: int) -> SnapshotLabels:
    rows = list(
        SnapshotMembership.objects.filter(snapshot_id=snapshot_id)
        .order_by("record_id")
        .values_list("subject_id", "record__label")
    )
    if not rows:
        return SnapshotLabels(subject_ids=np.zeros(0, dtype=np.int64), labels=[])
    subjects, labels = zip(*rows, strict=True)
    return SnapshotLabels(subject_ids=np.asarray(subjects, dtype=np.int64), labels=list(labels))


def label_classes(labels: list) -> list:
    """The distinct labels in a deterministic order (numbers numerically, else as text)."""
    distinct = {_label_key(v) for v in labels if v is not None}
    return [v for _, v in sorted(distinct, key=lambda kv: kv[0])]


def _label_key(value) -> tuple:
    if isinstance(value, bool):
        return ((0, int(value), ""), value)
    if isinstance(value, int | float):
        return ((1, float(value), ""), value)
    return ((2, 0.0, str(value)), str(value))


def person_split_key() -> bytes:
    """The key of the person split: ``PERSON_SPLIT_KEY`` if set, else derived from the
    pseudonymisation key (HMAC-SHA256 of a fixed label), read at call time."""
    explicit = getattr(settings, "PERSON_SPLIT_KEY", "")
    if explicit:
        return explicit.encode() if isinstance(explicit, str) else bytes(explicit)
    return hmac.new(settings.PSEUDONYMISATION_KEY.encode(), _PERSON_SPLIT_KEY_LABEL, hashlib.sha256).digest()


def person_split_rule(*, validation_split: float, holdout_fraction: float) -> dict:
    """How a run assigned people to train / validation / hold-out, for the run's record."""
    return {
        "rule": PERSON_SPLIT_RULE,
        "version": PERSON_SPLIT_RULE_VERSION,
        "holdout_below": float(holdout_fraction),
        "validation_below": float(holdout_fraction) + float(validation_split),
    }


def max_records_per_person(*, subject_ids) -> int | None:
    """The most records any one person has among ``subject_ids`` (one entry per record):
    the group size k of the person-level guarantee (mlops.engine.accounting.group_privacy)."""
    ids = np.asarray(subject_ids, dtype=np.int64)
    if ids.size == 0:
        return None
    return int(np.unique(ids, return_counts=True)[1].max())


def person_draws(*, subject_ids, seed: int) -> np.ndarray:
    """Each person's uniform draw in [0, 1): a keyed hash of the seed and the person.

    Depends on nothing but the key, the seed and that person's id, so removing other
    people (erasure) or adding new ones never moves anyone.
    """
    base = hmac.new(person_split_key(), digestmod=hashlib.sha256)
    prefix = f"{int(seed)}:"
    heads = []
    for subject_id in np.asarray(subject_ids, dtype=np.int64).tolist():
        mac = base.copy()
        mac.update(f"{prefix}{subject_id}".encode())
        heads.append(mac.digest()[:8])
    # First 8 bytes of each MAC as a big-endian unsigned integer, over 2^64.
    return np.frombuffer(b"".join(heads), dtype=">u8").astype(np.float64) / 2.0**64


def subject_split(
    *, subject_ids: np.ndarray, seed: int, validation_split: float, holdout_fraction: float
) -> np.ndarray:
    """The split (train / validation / hold-out) of every row, drawn per person.

    A person's draw is ``u = HMAC-SHA256(split key, f"{seed}:{subject_id}")[:8] / 2**64``
    (see ``person_split_rule``): hold-out if ``u < holdout_fraction``, validation if
    ``u < holdout_fraction + validation_split``, else train. Stable for a person across
    snapshot versions and erasures of others; the hash is computed once per distinct person.
    """
    unique, inverse = np.unique(np.asarray(subject_ids, dtype=np.int64), return_inverse=True)
    draws = person_draws(subject_ids=unique, seed=seed)
    per_subject = np.full(len(unique), SPLIT_TRAIN, dtype=np.int8)
    per_subject[draws < holdout_fraction + validation_split] = SPLIT_VALIDATION
    per_subject[draws < holdout_fraction] = SPLIT_HOLDOUT
    return per_subject[inverse.reshape(-1)]


def snapshot_tensors(*, snapshot_id: int, schema: dict, classes: list) -> SnapshotTensors:
    """Load a snapshot's records in batches into a feature matrix and label vector."""
    rows = SnapshotMembership.objects.filter(snapshot_id=snapshot_id).order_by("record_id")
    record_features: list = []
    labels: list = []
    subjects: list[int] = []
    for subject_id, features, label in rows.values_list(
        "subject_id", "record__features", "record__label"
    ).iterator(chunk_size=LOAD_BATCH_SIZE):
        record_features.append(features)
        labels.append(label)
        subjects.append(subject_id)
    X, y, encoding = encode_rows(record_features=record_features, labels=labels, schema=schema, classes=classes)
    return SnapshotTensors(X=X, y=y, subject_ids=np.asarray(subjects, dtype=np.int64), encoding=encoding)


def encode_rows(*, record_features: list, labels: list, schema: dict, classes: list) -> tuple[np.ndarray, np.ndarray, dict]:
    """Encode records' features and labels as (X, y, encoding); y is -1 for an unknown class.

    Features follow the dataset schema's order. Numeric features are scaled only with
    bounds published in the schema ("min"/"max"), never with statistics of the data, which
    would leak outside the DP guarantee: ``(clip(x, min, max) − min) / (max − min)``, so a
    value outside the bounds counts as the nearest bound (the records keep their values);
    a numeric feature without bounds enters as it is. Category features are one-hot encoded over the
    schema's "categories" when given, else over the sorted distinct values. Passing a run's
    recorded ``encoding`` as the schema reproduces that run's encoding exactly.
    """
    features = list(schema.get("features") or [])
    names = [f["name"] for f in features]
    raw = [
        [f.get(n) for n in names] if isinstance(f, dict) else list(f or [])
        for f in record_features
    ]
    n = len(raw)
    columns: list[np.ndarray] = []
    encoding: dict = {"features": [], "classes": classes}
    table = np.empty((n, len(names)), dtype=object)
    if n:
        table[:, :] = [r[: len(names)] + [None] * (len(names) - len(r)) for r in raw]
    for j, spec in enumerate(features):
        column = table[:, j] if n else np.empty(0, dtype=object)
        kind = spec.get("type", "float")
        if kind == "category":
            categories = spec.get("categories") or sorted({str(v) for v in column if v is not None})
            lookup = {str(c): i for i, c in enumerate(categories)}
            codes = np.fromiter((lookup.get(str(v), -1) if v is not None else -1 for v in column), dtype=np.int64, count=n)
            one_hot = np.zeros((n, len(categories)), dtype=np.float32)
            known = codes >= 0
            one_hot[np.nonzero(known)[0], codes[known]] = 1.0
            columns.append(one_hot)
            encoding["features"].append({"name": spec["name"], "type": "category", "categories": list(categories)})
        else:
            # NumPy's float conversion is float() element by element, None → NaN, in C.
            values = np.nan_to_num(np.asarray(column, dtype=np.float64), nan=0.0)
            entry: dict = {"name": spec["name"], "type": kind}
            lo, hi = spec.get("min"), spec.get("max")
            if lo is not None and hi is not None and float(hi) > float(lo):
                values = (np.clip(values, float(lo), float(hi)) - float(lo)) / (float(hi) - float(lo))
                entry.update(min=float(lo), max=float(hi))
            columns.append(values.astype(np.float32).reshape(n, 1))
            encoding["features"].append(entry)
    X = np.concatenate(columns, axis=1) if columns else np.zeros((n, 0), dtype=np.float32)
    return X, label_codes(labels=labels, classes=classes), encoding


def label_codes(*, labels: list, classes: list) -> np.ndarray:
    """Each label's index in ``classes`` (int64), −1 for a missing or unknown label: the
    rows with a code ≥ 0 are the labelled ones a run trains, validates and audits on."""
    class_index = {_label_key(c)[0]: i for i, c in enumerate(classes)}
    return np.fromiter((class_index.get(_label_key(v)[0], -1) for v in labels), dtype=np.int64, count=len(labels))


def n_input_features(schema: dict) -> int:
    """Width of the encoded input as far as the schema alone tells (for queue-time checks)."""
    width = 0
    for spec in schema.get("features") or []:
        if spec.get("type") == "category":
            width += max(1, len(spec.get("categories") or [None]))
        else:
            width += 1
    return width


ENCODING_RULE = (
    "columns in feature order; a numeric feature with min/max: (clip(x, min, max) - min) / (max - min), "
    "without: x as a number (bool: 1.0/0.0); a category feature: one column per listed category, in order, "
    "1.0 for the record's category (all 0.0 for a value not listed); float32. "
    "Label: its index in classes (-1, and left out, when missing or not listed)"
)


def reproducibility_record(*, run) -> dict:
    """What an outsider needs to rebuild a run's inputs from the raw records: the feature
    order and encoding (scaling bounds, one-hot categories), the class order, the keyed
    person-split rule with its thresholds (never the key) and the seed.

    ``run`` is a TrainingRun whose encoding has been recorded (after its data were read);
    reads only the run and its snapshot (no other query). The same dict, JSON-encoded, is
    in the safetensors metadata of the run's weights.
    """
    if run.executor == Executor.EXTERNAL:
        return _external_reproducibility_record(run=run)
    encoding = run.encoding or {}
    features = [dict(f) for f in encoding.get("features") or []]
    label = (run.snapshot.dataset.schema or {}).get("label") or {}
    return {
        "executor": run.executor,
        "feature_order": [f["name"] for f in features],
        "features": features,
        "encoding_rule": ENCODING_RULE,
        "n_inputs": sum(len(f.get("categories") or []) if f.get("type") == "category" else 1 for f in features),
        "label": {"name": label.get("name"), "type": label.get("type")},
        "classes": list(encoding.get("classes") or []),
        "person_split": {
            **(encoding.get("split") or person_split_rule(
                validation_split=run.validation_split, holdout_fraction=run.holdout_fraction)),
            "seed": int(run.seed),
            "key": "not disclosed: PERSON_SPLIT_KEY, held by the controller",
        },
        "seed": int(run.seed),
        "snapshot": {"id": run.snapshot_id, "merkle_root": run.snapshot.merkle_root},
        "release_training_metrics": run.release_training_metrics,
    }


EXTERNAL_ENCODING_RULE = (
    "trained outside the ledger on the snapshot's export (GET /api/v1/snapshots/{id}/export/): record_id, "
    "the features in schema order with their stored values, then the label. Any further encoding, the split "
    "into training and validation data and the seed were the owner's own and are not recorded by the ledger"
)


def _external_reproducibility_record(*, run) -> dict:
    """A version trained anywhere (issue 20): the ledger knows what it exported, not what the
    owner's code did with it, so the record claims no encoding, person split or seed of its own."""
    schema = run.snapshot.dataset.schema or {}
    features = [{"name": f["name"], "type": f.get("type", "")} for f in schema.get("features") or []]
    label = schema.get("label") or {}
    return {
        "executor": run.executor,
        "feature_order": [f["name"] for f in features],
        "features": features,
        "encoding_rule": EXTERNAL_ENCODING_RULE,
        "n_inputs": None,
        "label": {"name": label.get("name"), "type": label.get("type")},
        "classes": [],
        "person_split": None,
        "seed": None,
        "snapshot": {"id": run.snapshot_id, "merkle_root": run.snapshot.merkle_root},
        "release_training_metrics": run.release_training_metrics,
    }
