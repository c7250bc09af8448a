"""Removing members: a retention purge or an erasure takes records out of every snapshot
holding them, one amendment per snapshot, set-based."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import connection, transaction
from django.db.models import Count, Exists, Min, OuterRef, Q, QuerySet
from django.utils import timezone

from governance.models import ProcessingActivity
from governance.services import ServiceConflict, ServiceError, audit_event_record
from provenance.models import (
    AmendmentReason,
    DataRecord,
    Snapshot,
    SnapshotAmendment,
    SnapshotMembership,
)
from provenance.services.snapshots import snapshot_merkle_root


def snapshot_records_remove(
    *, records: QuerySet[DataRecord], reason: str, erasure_request_id: int | None = None, details: dict | None = None,
    subject_ids: list[int] | None = None,
) -> list[SnapshotAmendment]:
    """Remove ``records`` from every snapshot holding them, recording one amendment per snapshot.

    The snapshot keeps its original Merkle root; each amendment records the root before
    and after, and ``subject_ids`` when the caller removes whole people (an erasure). Does not delete the records and records no audit event: the caller (the
    retention purge, the erasure service) does both in the same transaction.
    """
    if reason not in AmendmentReason.values:
        raise ServiceError(f"Unknown amendment reason {reason!r}.", field="reason")
    with transaction.atomic():
        # Amendments of one snapshot queue behind each other on its row: each computes its
        # root and counts over the membership the previous one committed, and sequence
        # numbers follow commit order. Locked in id order, so two erasures never deadlock.
        touched = SnapshotMembership.objects.filter(record_id__in=records.values("id")).values("snapshot_id")
        locked = list(
            Snapshot.objects.select_for_update().filter(pk__in=touched).order_by("pk").values_list("pk", flat=True)
        )
        if not locked:
            return []
        if connection.vendor == "postgresql":
            removed = _memberships_delete_postgresql(records=records)
        else:
            removed = _memberships_delete_generic(records=records)
        affected = sorted(removed)
        if not affected:
            return []
        latest: dict[int, tuple[int, str]] = {}
        for sid, sequence, root in (
            SnapshotAmendment.objects.filter(snapshot_id__in=affected).order_by("snapshot_id", "sequence")
            .values_list("snapshot_id", "sequence", "new_root")
        ):
            latest[sid] = (sequence, root)
        originals = dict(Snapshot.objects.filter(pk__in=affected).values_list("pk", "merkle_root"))
        amendments = [
            SnapshotAmendment(
                snapshot_id=sid, reason=reason, erasure_request_id=erasure_request_id,
                sequence=latest.get(sid, (0, ""))[0] + 1,
                records_removed=removed[sid][0],
                subjects_removed=removed[sid][1],
                previous_root=latest[sid][1] if sid in latest else originals[sid],
                new_root=snapshot_merkle_root(snapshot_id=sid),
                details=details or {},
                removed_subject_ids=sorted(subject_ids) if subject_ids is not None else None,
            )
            for sid in affected
        ]
        return SnapshotAmendment.objects.bulk_create(amendments)


@transaction.atomic
def subject_records_delete(*, subject_id: int) -> dict[str, Any]:
    """Delete every record of one person (erasure), after their snapshot memberships were
    removed with ``snapshot_records_remove``; returns the count per dataset.

    Refused while a snapshot still holds one of the records (the membership's foreign key
    protects it): a record is never deleted behind a snapshot's back.
    """
    per_dataset = {
        row["dataset_id"]: row["n"]
        for row in DataRecord.objects.filter(subject_id=subject_id).values("dataset_id").annotate(n=Count("id")).order_by()
    }
    if SnapshotMembership.objects.filter(subject_id=subject_id).exists():
        raise ServiceConflict(
            "The person's records are still members of a snapshot: amend the snapshots first.", field="subject"
        )
    deleted = DataRecord.objects.filter(subject_id=subject_id)._raw_delete(DataRecord.objects.db)
    return {"records_deleted": deleted, "per_dataset": {str(k): v for k, v in sorted(per_dataset.items())}}


_REMOVAL_CHUNK = 50_000


def _memberships_delete_postgresql(*, records: QuerySet[DataRecord]) -> dict[int, tuple[int, int]]:
    """Delete the memberships of ``records`` in chunks of record ids (a retention purge may
    remove millions); {snapshot: (rows removed, people removed)}. Summing over chunks is
    exact: a later chunk sees the earlier chunks' deletions, so a person whose rows span
    chunks counts as removed once, in the chunk that removes their last row."""
    totals: dict[int, tuple[int, int]] = {}
    ids = records.order_by("id").values_list("id", flat=True)
    last = 0
    while True:
        chunk = list(ids.filter(id__gt=last)[:_REMOVAL_CHUNK])
        if not chunk:
            return totals
        last = chunk[-1]
        for snapshot_id, (n, people) in _memberships_delete_chunk(record_ids=chunk).items():
            before = totals.get(snapshot_id, (0, 0))
            totals[snapshot_id] = (before[0] + n, before[1] + people)


def _memberships_delete_chunk(*, record_ids: list[int]) -> dict[int, tuple[int, int]]:
    """Delete the memberships of ``record_ids``; {snapshot: (rows removed, people removed)}.

    One statement driven by the id list (an index probe per record), so its plan does not
    hinge on table statistics: without them PostgreSQL was seen walking a 3.4-million-row
    membership table to amend 100 snapshots. A person counts as removed from a snapshot
    when none of their rows there survives. The counting query sees the table as it was
    before the DELETE in the same statement, hence the explicit exclusion of removed rows.
    """
    with connection.cursor() as cur:
        cur.execute(
            f"""WITH removed AS (
                    DELETE FROM {SnapshotMembership._meta.db_table} WHERE record_id = ANY(%s::bigint[])
                    RETURNING id, snapshot_id, subject_id
                )
                SELECT r.snapshot_id, count(*), count(DISTINCT r.subject_id) FILTER (WHERE NOT EXISTS (
                    SELECT 1 FROM {SnapshotMembership._meta.db_table} o
                    WHERE o.subject_id = r.subject_id AND o.snapshot_id = r.snapshot_id
                      AND o.id NOT IN (SELECT id FROM removed)))
                FROM removed r GROUP BY r.snapshot_id""",
            [record_ids],
        )
        return {snapshot_id: (n, people) for snapshot_id, n, people in cur.fetchall()}


def _memberships_delete_generic(*, records: QuerySet[DataRecord]) -> dict[int, tuple[int, int]]:
    members = SnapshotMembership.objects.filter(record_id__in=records.values("id"))
    survives = SnapshotMembership.objects.filter(
        snapshot_id=OuterRef("snapshot_id"), subject_id=OuterRef("subject_id")
    ).exclude(record_id__in=records.values("id"))
    removed = {
        row["snapshot_id"]: (row["n"], row["s"])
        for row in members.annotate(survives=Exists(survives)).values("snapshot_id").annotate(
            n=Count("id"), s=Count("subject_id", distinct=True, filter=Q(survives=False))
        ).order_by()
    }
    members._amendment_delete()
    return removed


def retention_purge(*, at: datetime | None = None, actor: Any = None) -> dict:
    """Delete every record whose retention period has passed (Art. 5(1)(e)), set-based.

    A record's retention is the shortest retention among its processing activity's data
    categories, counted from ingestion. Snapshots holding purged records are amended.
    One audit event records the purge with its counts, even when nothing was due.
    """
    at = at or timezone.now()
    with transaction.atomic():
        deleted = 0
        per_activity = []
        amendments: list[SnapshotAmendment] = []
        datasets: set[int] = set()
        activities = (
            ProcessingActivity.objects.filter(datasets__isnull=False, retention_rules__isnull=False)
            .annotate(retention=Min("retention_rules__retention")).distinct().order_by("pk")
        )
        for activity in activities:  # one iteration per activity; each statement is set-based
            cutoff = at - activity.retention
            expired = DataRecord.objects.filter(dataset__processing_activity=activity, ingested_at__lt=cutoff)
            dataset_ids = set(expired.values_list("dataset_id", flat=True).distinct())
            if not dataset_ids:
                continue
            amendments += snapshot_records_remove(
                records=expired, reason=AmendmentReason.RETENTION,
                details={"cutoff": cutoff.isoformat(), "retention": str(activity.retention)},
            )
            count = DataRecord.objects.filter(dataset_id__in=dataset_ids, ingested_at__lt=cutoff)._raw_delete(
                DataRecord.objects.db
            )
            deleted += count
            datasets |= dataset_ids
            per_activity.append({"processing_activity": activity.pk, "records_deleted": count, "cutoff": cutoff.isoformat()})
        result = {
            "at": at.isoformat(),
            "records_deleted": deleted,
            "datasets": len(datasets),
            "snapshots_amended": len(amendments),
            "activities": per_activity,
        }
        audit_event_record(
            actor=actor, action="dataset.retention_purged", object_type="dataset", object_id="",
            details=result,
        )
    return result
