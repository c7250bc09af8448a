"""Opening a snapshot export (issue 20): the checks a training run would make, the values
the export's headers and metadata promise, and the audit event, in one transaction.

The rows themselves are written by ``provenance.snapshot_exports`` from the selector
``snapshot_export_chunks``; this module decides whether they may leave and records that
they did.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from django.db import transaction

from governance.services import ServiceConflict, ServiceError, audit_event_record
from provenance.models import Snapshot, SnapshotAmendment
from provenance.selectors import (
    EXPORT_RECORD_ID,
)

EXPORT_FORMATS = ("parquet", "csv", "jsonl")


@dataclass(frozen=True)
class SnapshotExport:
    """What an export promises before its first byte: the headers and the Parquet metadata."""

    snapshot_id: int
    dataset_id: int
    format: str
    schema: dict
    merkle_root: str
    amendment: int
    records: int

    @property
    def schema_sha256(self) -> str:
        return schema_sha256(self.schema)


def schema_sha256(schema: dict) -> str:
    """SHA-256 (hex) of the schema's canonical JSON: keys sorted, separators ``,`` and ``:``,
    no ASCII escaping (the form record content hashes use), so a client can check the
    ``X-Ledger-Schema`` header against ``GET /api/v1/datasets/{id}/``'s schema."""
    canonical = json.dumps(schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def snapshot_export_format(*, value: Any) -> str:
    """The requested format, or a 400 naming ``format``."""
    if value in (None, ""):
        return "parquet"
    if value not in EXPORT_FORMATS:
        raise ServiceError(f"Unknown export format {value!r}: use one of {', '.join(EXPORT_FORMATS)}.", field="format")
    return value


def _refuse_unexportable(snapshot: Snapshot) -> None:
    """The data leave the ledger to be trained on elsewhere, so they are held to what a new
    training run on the snapshot is held to (``provenance.services.usable``)."""
    from provenance.services.usable import snapshot_rectified_refuse, snapshot_use_refuse

    snapshot_use_refuse(snapshot=snapshot, use="export")
    snapshot_rectified_refuse(snapshot=snapshot)


@transaction.atomic
def snapshot_export_open(*, snapshot: Snapshot, format: str, actor: Any) -> SnapshotExport:
    """Check that ``snapshot`` may be exported now, fix what the export promises (current
    Merkle root, amendment number, record count) and record ``snapshot.exported``.

    The promised values come from one read of the amendments; the stream re-reads the
    amendment number in its own transaction and stops if an amendment came in between,
    so the rows always match the headers.
    """
    format = snapshot_export_format(value=format)
    schema = snapshot.dataset.schema
    names = [f["name"] for f in schema["features"]] + [schema["label"]["name"]]
    if EXPORT_RECORD_ID in names:
        raise ServiceConflict(
            f"The dataset's schema has a field named {EXPORT_RECORD_ID!r}, the export's record id column: "
            "the columns would be ambiguous.",
            field="snapshot",
        )
    _refuse_unexportable(snapshot)
    amendments = list(
        SnapshotAmendment.objects.filter(snapshot=snapshot).order_by("sequence")
        .values_list("sequence", "new_root", "records_removed")
    )
    export = SnapshotExport(
        snapshot_id=snapshot.pk,
        dataset_id=snapshot.dataset_id,
        format=format,
        schema=schema,
        merkle_root=amendments[-1][1] if amendments else snapshot.merkle_root,
        amendment=amendments[-1][0] if amendments else 0,
        # Exact without counting a million membership rows: each amendment recorded how many
        # it removed from the count the snapshot was created with.
        records=snapshot.included_count - sum(a[2] for a in amendments),
    )
    audit_event_record(
        actor=actor, action="snapshot.exported", object_type="snapshot", object_id=snapshot.pk,
        details={
            "format": format, "records": export.records, "merkle_root": export.merkle_root,
            "amendment": export.amendment, "dataset": snapshot.dataset_id, "schema_sha256": export.schema_sha256,
        },
    )
    return export
