"""A snapshot as a torch Dataset, encoded the way the ledger's own engine encodes a schema.

Encoding (stated in :attr:`SnapshotDataset.encoding`, and reported with the run so the ledger
knows what the model's inputs mean):

* float and int features: the value as float; a feature publishing ``min`` and ``max`` is
  clipped to them and scaled to [0, 1];
* bool features: 0.0 or 1.0;
* category features: one column per entry of ``categories``, in that order (one-hot);
* the label: int as is, bool as 0/1, a category label as its index in ``categories``.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from torch.utils.data import Dataset

from privacy_ledger_client.client import SnapshotExport
from privacy_ledger_client.errors import LedgerIntegrityError
from privacy_ledger_client.merkle import content_hash, merkle_root


class SnapshotDataset(Dataset):
    """(features, label) pairs of a snapshot, with the export's record ids and Merkle root."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, *, record_ids: list[int], columns: list[str],
                 encoding: dict, export: SnapshotExport) -> None:
        self.features = features
        self.labels = labels
        self.record_ids = record_ids
        self.columns = columns
        self.encoding = encoding
        self.export = export

    @property
    def merkle_root(self) -> str:
        return self.export.merkle_root

    @property
    def snapshot_id(self) -> int:
        return self.export.snapshot_id

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.features[index], self.labels[index]

    @classmethod
    def from_jsonl(cls, export: SnapshotExport, schema: dict, *, verify: bool = True) -> SnapshotDataset:
        """Read a JSON Lines export. ``verify``: recompute the Merkle root from the rows' values
        and refuse (:class:`LedgerIntegrityError`) rows that are not exactly the snapshot's
        members as the ledger recorded them."""
        features_spec = list(schema.get("features", []))
        label_spec = schema.get("label") or {}
        label_name = label_spec.get("name", "label")
        columns = _columns(features_spec)
        rows: list[list[float]] = []
        labels: list[int] = []
        record_ids: list[int] = []
        leaves: list[tuple[int, str]] = []
        with open(export.path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                row = json.loads(line)
                try:
                    record_ids.append(int(row["record_id"]))
                    rows.append(_encode_features(row, features_spec))
                    labels.append(_encode_label(row[label_name], label_spec))
                    if verify:
                        raw = {spec["name"]: row[spec["name"]] for spec in features_spec}
                        leaves.append((record_ids[-1], content_hash(raw, row[label_name])))
                except (KeyError, TypeError, ValueError) as exc:
                    raise LedgerIntegrityError(
                        f"Row {number} of the export of snapshot {export.snapshot_id} does not fit the dataset's "
                        f"schema: {exc}.", "schema",
                    )
        if verify:
            root = merkle_root(sorted(leaves))
            if root != export.merkle_root:
                raise LedgerIntegrityError(
                    f"The rows of snapshot {export.snapshot_id} give the Merkle root {root}, the ledger states "
                    f"{export.merkle_root}: they are not the snapshot's recorded members.", "X-Ledger-Merkle-Root",
                )
        width = len(columns)
        features = torch.tensor(rows, dtype=torch.float32) if rows else torch.zeros((0, width), dtype=torch.float32)
        encoding = {"features": [_encoding_entry(spec) for spec in features_spec], "label": dict(label_spec),
                    "columns": columns}
        return cls(features, torch.tensor(labels, dtype=torch.long), record_ids=record_ids, columns=columns,
                   encoding=encoding, export=export)


def _columns(features_spec: list[dict]) -> list[str]:
    columns: list[str] = []
    for spec in features_spec:
        if spec.get("type") == "category":
            categories = spec.get("categories")
            if not categories:
                raise LedgerIntegrityError(
                    f"Category feature {spec.get('name')!r} lists no categories: it cannot be one-hot encoded.", "schema"
                )
            columns.extend(f"{spec['name']}={category}" for category in categories)
        else:
            columns.append(spec["name"])
    return columns


def _encode_features(row: dict, features_spec: list[dict]) -> list[float]:
    out: list[float] = []
    for spec in features_spec:
        value = row[spec["name"]]
        kind = spec.get("type", "float")
        if kind == "category":
            categories = spec["categories"]
            if value not in categories:
                raise ValueError(f"{spec['name']}={value!r} is not one of its categories")
            out.extend(1.0 if value == category else 0.0 for category in categories)
        elif kind == "bool":
            out.append(1.0 if _truthy(value) else 0.0)
        else:
            number = float(value)
            low, high = spec.get("min"), spec.get("max")
            if low is not None and high is not None and high > low:
                number = (min(max(number, float(low)), float(high)) - float(low)) / (float(high) - float(low))
            out.append(number)
    return out


def _encode_label(value: Any, label_spec: dict) -> int:
    kind = label_spec.get("type", "int")
    if kind == "category":
        return list(label_spec["categories"]).index(value)
    if kind == "bool":
        return 1 if _truthy(value) else 0
    number = float(value)
    if number != int(number):
        raise ValueError(f"label {value!r} is not a class index")
    return int(number)


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)


def _encoding_entry(spec: dict) -> dict:
    keep = ("name", "type", "min", "max", "categories")
    return {k: spec[k] for k in keep if k in spec}
