"""Snapshot integrity: recompute a snapshot from its records and name the first difference.

The manifest check in docs/provenance.md trusts each record's stored ``content_hash``,
so it cannot see a record whose features or label were changed in place, a membership
row pointing at the wrong person, or a member inserted together with a rewritten root.
This verifier trusts none of the derived columns. For one snapshot it checks, in order:

1. every current member, in ascending record id order (the order of the Merkle leaves):
   the record belongs to the snapshot's dataset and existed at the snapshot's moment,
   the membership's subject is the record's subject, and the record's content hash,
   recomputed from its features and label exactly the way ingestion computed it
   (``schema.record_validate`` then ``schema.content_hash``), equals the stored one;
2. the counts: ``included_count`` and ``included_subjects``, less what the amendments
   removed, against the members and their distinct subjects;
3. the Merkle root recomputed from those leaves against the current root (the last
   amendment's ``new_root``, or ``merkle_root`` when there is none);
4. the history: amendments numbered 1..n, each starting from the root the previous one
   left, and the root and counts the audit log recorded when the snapshot was created
   and when an erasure amended it (an attacker who rewrote the root and the counts to
   match a tampered membership still has to rewrite the hash-chained audit log);
5. the processing limits: no member's person was restricted (Art. 18) or, where objections
   apply, objecting to the purpose (Art. 21) at the moments the creation event says the
   snapshot read them (``limits_at``). The rule is evaluated at the snapshot's moments, as
   consent is: a restriction recorded afterwards leaves the snapshot as it was. Snapshots
   whose creation event predates the rule (no ``limits_at``) skip this step.

Members are read once, in chunks, with one streamed query; nothing per row.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.db import connection, transaction
from django.db.models import Count

from governance.models import AuditEvent
from provenance import merkle
from provenance.models import AmendmentReason, DataRecord, Snapshot, SnapshotAmendment, SnapshotMembership
from provenance.schema import RowError, content_hash, record_validate

CHUNK_SIZE = 5000
# Float zeros whose sign is searched exhaustively when a hash does not match (2**n hashes).
MAX_SIGNED_ZEROS = 10
# The erasure workflow (rights) records the roots it left in this event; provenance only
# reads it, by name, so no import crosses the layers.
ERASURE_AMENDED_ACTION = "erasure.snapshots_amended"


@dataclass(frozen=True)
class SnapshotVerification:
    ok: bool
    snapshot_id: int
    checked_members: int
    first_difference: str | None = None
    # False when the audit log holds no creation event to compare the root and counts with
    # (snapshots built outside snapshot_create, e.g. by fixtures); the rest is still checked.
    audit_checked: bool = False

    def line(self) -> str:
        """One line for a person: 'snapshot 7: ok (40 members)' or the first difference."""
        if self.ok:
            note = "" if self.audit_checked else "; no creation event in the audit log to compare with"
            return f"snapshot {self.snapshot_id}: ok ({self.checked_members} members checked{note})"
        return f"snapshot {self.snapshot_id}: FAILED after {self.checked_members} members: {self.first_difference}"


def _signed_zero_variants(features: dict, label: Any, schema: dict):
    """(features, label) with the float zeros given every other sign.

    PostgreSQL's jsonb has no negative zero: a float sent as -0.0 was hashed as "-0.0" on
    ingestion but reads back as 0.0. -0.0 == 0.0, so accepting either sign loses nothing.
    """
    slots: list[str | None] = [
        spec["name"] for spec in schema["features"] if spec["type"] == "float" and features[spec["name"]] == 0.0
    ]
    if schema["label"]["type"] == "float" and label == 0.0:
        slots.append(None)  # None stands for the label
    if not slots:
        return
    if len(slots) <= MAX_SIGNED_ZEROS:
        signs = itertools.product((0.0, -0.0), repeat=len(slots))
    else:
        signs = iter([(-0.0,) * len(slots), (0.0,) * len(slots)])
    for combination in signs:
        varied, varied_label = dict(features), label
        for slot, zero in zip(slots, combination, strict=True):
            if slot is None:
                varied_label = zero
            else:
                varied[slot] = zero
        yield varied, varied_label


def _content_matches(features: Any, label: Any, schema: dict, stored_hash: str) -> str | None:
    """None when the record's content hashes to ``stored_hash``, else what is wrong.

    Ingestion hashes the values normalised to the schema (``record_validate``), so a
    mismatch is settled by normalising them the same way (a float that jsonb gives back as
    100000000000000000000 is 1e+20 again) before it counts. The stored values are hashed
    as read first: most rows read back exactly as they were hashed, a match proves the
    content is what was hashed just the same, and it spares the validation per row. It
    also accepts rows written around ingestion (fixtures, imports) with values the schema
    path would rewrite.
    """
    if isinstance(features, dict) and content_hash(features, label) == stored_hash:
        return None
    try:
        clean, clean_label = record_validate(features, label, schema)
    except RowError as exc:
        return (
            "features or label differ from its content hash (and they no longer fit the dataset's schema: "
            f"field '{exc.field}': {exc.reason})"
        )
    if content_hash(clean, clean_label) == stored_hash:
        return None
    for varied, varied_label in _signed_zero_variants(clean, clean_label, schema):
        if content_hash(varied, varied_label) == stored_hash:
            return None
    return "features or label differ from its content hash"


def _lock_against_amendments(snapshot_id: int) -> None:
    # An amendment committed between reading the amendments and reading the members would
    # look like tampering. Amendments take FOR UPDATE on the snapshot row; FOR SHARE makes
    # them wait for this read (and lets other verifiers and training queues run alongside).
    # SQLite serialises writers and reads one snapshot of the file per transaction.
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT 1 FROM {Snapshot._meta.db_table} WHERE id = %s FOR SHARE", [snapshot_id])


def _creation_event(snapshot: Snapshot) -> tuple[int, dict] | None:
    """(position, details) of the snapshot's creation event in the audit log, or None."""
    return (
        AuditEvent.objects.filter(action="snapshot.created", object_type="snapshot", object_id=str(snapshot.pk))
        .order_by("position").values_list("position", "details").first()
    )


def _history_difference(
    snapshot: Snapshot, amendments: list[SnapshotAmendment], created: tuple[int, dict] | None
) -> str | None:
    """The amendment chain and the audit log's record of the roots and counts."""
    previous = snapshot.merkle_root
    for expected, amendment in enumerate(amendments, start=1):
        if amendment.sequence != expected:
            return f"amendment {expected} is missing (found amendment {amendment.sequence} next)"
        if amendment.previous_root != previous:
            before = "the snapshot's merkle_root" if expected == 1 else f"amendment {expected - 1}'s new root"
            return f"amendment {expected}: its previous root differs from {before}"
        previous = amendment.new_root
    if created is not None:
        position, details = created
        for key, field, stored in (
            ("merkle_root", "merkle_root", snapshot.merkle_root),
            ("included", "included_count", snapshot.included_count),
            ("included_subjects", "included_subjects", snapshot.included_subjects),
        ):
            if key in details and details[key] != stored:
                return f"{field} {stored} differs from {details[key]} recorded at creation (audit event #{position})"
    erasures = {a.erasure_request_id for a in amendments if a.reason == AmendmentReason.ERASURE and a.erasure_request_id}
    if erasures:
        recorded: dict[int, set[tuple[int, int, str]]] = {}
        for object_id, details in AuditEvent.objects.filter(
            action=ERASURE_AMENDED_ACTION, object_type="erasure_request", object_id__in=[str(i) for i in erasures]
        ).values_list("object_id", "details"):
            recorded.setdefault(int(object_id), set()).update(
                (a.get("snapshot"), a.get("sequence"), a.get("new_root")) for a in details.get("amendments", [])
            )
        for amendment in amendments:
            seen = recorded.get(amendment.erasure_request_id or 0)
            # An erasure recorded by the workflow names every amendment it made; one amended
            # through snapshot_records_remove alone has no event, and only the chain applies.
            if seen is not None and (snapshot.pk, amendment.sequence, amendment.new_root) not in seen:
                return (
                    f"amendment {amendment.sequence}: its new root differs from the one erasure request "
                    f"{amendment.erasure_request_id} recorded in the audit log"
                )
    return None


def _limits_difference(snapshot: Snapshot, created: tuple[int, dict] | None) -> str | None:
    """The first member whose person the limits excluded at the snapshot's moments, or None."""
    from governance.moments import moment_parse
    from provenance.services.snapshots import limits_reason_branches

    details = created[1] if created is not None else None
    if not isinstance(details, dict) or not details.get("limits_at"):
        return None
    moments = [moment_parse(value) for value in details["limits_at"]]
    branches, params = limits_reason_branches(
        purpose=snapshot.purpose, moments=moments, objections=bool(details.get("objections_apply")), alias="m",
    )
    sql = (
        f"SELECT record_id, reason FROM (SELECT m.record_id AS record_id, CASE {' '.join(branches)} ELSE NULL END "
        f"AS reason FROM {SnapshotMembership._meta.db_table} m WHERE m.snapshot_id = %s) limited "
        "WHERE reason IS NOT NULL ORDER BY record_id LIMIT 1"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, snapshot.pk])
        row = cursor.fetchone()
    if row is None:
        return None
    why = "restricted (Art. 18)" if row[1] == "restricted" else "objecting to the purpose (Art. 21)"
    return f"record {row[0]}: its person was {why} at the moment the snapshot was taken, yet is a member"


def _json(value: str | None) -> Any:
    # The query reads JSON columns as text (see _member_rows); decoded here the way
    # JSONField.from_db_value does, and SQL NULL is None.
    return None if value is None else json.loads(value)


def _member_rows(snapshot: Snapshot, chunk_size: int) -> Iterator[tuple]:
    """(record id, subject matches, record's dataset, ingested by T, features, label,
    content hash) of every member in record id order: one query, streamed in chunks from a
    server-side cursor on PostgreSQL. The comparisons run in the database, which spares a
    datetime conversion per row; a LEFT JOIN keeps members whose record is gone."""
    # Text whatever the driver's jsonb loaders do (SQLite stores JSON as text already).
    text = "::text" if connection.vendor == "postgresql" else ""
    sql = (
        "SELECT m.record_id, CASE WHEN m.subject_id = r.subject_id THEN 1 ELSE 0 END, r.dataset_id, "
        f"CASE WHEN r.ingested_at <= %s THEN 1 ELSE 0 END, r.features{text}, r.label{text}, r.content_hash "
        f"FROM {SnapshotMembership._meta.db_table} m LEFT JOIN {DataRecord._meta.db_table} r ON r.id = m.record_id "
        "WHERE m.snapshot_id = %s ORDER BY m.record_id"
    )
    with connection.chunked_cursor() as cursor:
        cursor.execute(sql, [snapshot.taken_for, snapshot.pk])
        while True:
            chunk = cursor.fetchmany(chunk_size)
            if not chunk:
                return
            yield from chunk


def _verify(snapshot: Snapshot, *, chunk_size: int) -> SnapshotVerification:
    sid = snapshot.pk
    schema = snapshot.dataset.schema
    amendments = list(SnapshotAmendment.objects.filter(snapshot_id=sid).order_by("sequence", "id"))
    created = _creation_event(snapshot)
    audit_checked = created is not None

    def result(difference: str | None, checked: int) -> SnapshotVerification:
        return SnapshotVerification(difference is None, sid, checked, difference, audit_checked)

    if len(snapshot.merkle_root) != 64:
        return result("the snapshot has no Merkle root: its creation did not complete", 0)

    acc = merkle.MerkleAccumulator()
    checked = 0
    leaves: list[str] = []
    for record_id, subject_ok, dataset_id, in_time, features, label, stored in _member_rows(snapshot, chunk_size):
        position = checked + 1
        where = f"record {record_id} (membership position {position})"
        if dataset_id is None:
            return result(f"{where}: the record does not exist", checked)
        if dataset_id != snapshot.dataset_id:
            return result(f"{where}: belongs to dataset {dataset_id}, not the snapshot's dataset {snapshot.dataset_id}", checked)
        if not in_time:
            return result(f"{where}: was ingested after the moment the snapshot was taken for", checked)
        if not subject_ok:
            return result(f"membership position {position} (record {record_id}): subject differs from the record's subject", checked)
        problem = _content_matches(_json(features), _json(label), schema, stored)
        if problem is not None:
            return result(f"{where}: {problem}", checked)
        # The stored hash now provably is the content's, so the leaf is the documented one.
        leaves.append(merkle.leaf_hash(record_id, stored))
        checked = position
        if len(leaves) >= merkle.BLOCK:
            acc.add_leaves(leaves)
            leaves = []
    acc.add_leaves(leaves)

    totals = SnapshotMembership.objects.filter(snapshot_id=sid).aggregate(subjects=Count("subject_id", distinct=True))
    for field, stored_count, removed_count, actual, noun in (
        ("included_count", snapshot.included_count, sum(a.records_removed for a in amendments), checked, "members"),
        (
            "included_subjects", snapshot.included_subjects, sum(a.subjects_removed for a in amendments),
            totals["subjects"], "distinct subjects among the members",
        ),
    ):
        if stored_count - removed_count != actual:
            less = f" less {removed_count} removed by amendments" if removed_count else ""
            return result(f"{field} {stored_count}{less} but {actual} {noun}", checked)

    current_root = amendments[-1].new_root if amendments else snapshot.merkle_root
    if acc.root() != current_root:
        stored_as = f"amendment {amendments[-1].sequence}'s new root" if amendments else "the stored root"
        return result(f"root recomputed from the members differs from {stored_as}", checked)
    return result(
        _history_difference(snapshot, amendments, created) or _limits_difference(snapshot, created), checked
    )


def snapshot_verify(*, snapshot_id: int, chunk_size: int = CHUNK_SIZE) -> SnapshotVerification:
    """Recompute one snapshot's leaves, counts and root from its records; see the module."""
    with transaction.atomic():
        _lock_against_amendments(snapshot_id)
        snapshot = Snapshot.objects.select_related("dataset", "purpose").filter(pk=snapshot_id).first()
        if snapshot is None:
            return SnapshotVerification(False, snapshot_id, 0, "the snapshot does not exist")
        return _verify(snapshot, chunk_size=chunk_size)


def snapshots_verify(*, dataset_id: int | None = None, chunk_size: int = CHUNK_SIZE) -> list[SnapshotVerification]:
    """Verify every snapshot (of one dataset, when given), oldest first, each in its own
    transaction so an erasure waits for one snapshot's read at most."""
    ids = Snapshot.objects.order_by("pk")
    if dataset_id is not None:
        ids = ids.filter(dataset_id=dataset_id)
    return [snapshot_verify(snapshot_id=pk, chunk_size=chunk_size) for pk in ids.values_list("pk", flat=True)]


def verification_failed_message(verification: SnapshotVerification) -> str:
    """The sentence a refusal to use the snapshot gives."""
    return f"Snapshot {verification.snapshot_id} fails its integrity check: {verification.first_difference}."

