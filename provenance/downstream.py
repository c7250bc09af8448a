"""What was trained on snapshots, as told by the layer that trains (mlops).

Lineage runs dataset → snapshot → training run → model version, but training runs and
models live in mlops, above provenance; provenance never imports it. Instead mlops
registers a reader here in its ``AppConfig.ready`` and provenance's lineage, impact and
PROV exports ask it. Without mlops installed, lineage simply ends at the snapshot.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

# (snapshot_ids) -> (training runs, model versions): model instances ordered by id, with at
# least pk, name, status, snapshot_id, created_at, started_at, finished_at (runs) and pk,
# name, version, status, training_run_id, created_at, artifact_sha256, epsilon, delta (models).
DownstreamReader = Callable[[Sequence[int]], tuple[list[Any], list[Any]]]

_reader: DownstreamReader | None = None


def downstream_reader_register(reader: DownstreamReader) -> None:
    global _reader
    _reader = reader


def trained_on_snapshots(snapshot_ids: Sequence[int]) -> tuple[list[Any], list[Any]]:
    """The training runs on these snapshots and the model versions they produced."""
    if _reader is None or not snapshot_ids:
        return [], []
    return _reader(list(snapshot_ids))
