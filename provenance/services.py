"""Services that write provenance records. Keyword-only, atomic, audited, set-based."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, Exists, Min, OuterRef, Q, QuerySet
from django.utils import timezone

from governance.consent_clock import consent_ledger_moment
from governance.dispatch import task_dispatch_on_commit
from governance.models import LawfulBasis, ProcessingActivity, Purpose, PurposeCompatibility
from governance.pseudonymisation import pseudonymise_many
from governance.selectors import consent_state_sql
from governance.services import ServiceConflict, ServiceError, audit_event_record, data_subject_ensure_many
from provenance import merkle
from provenance.models import (
    AmendmentReason,
    DataRecord,
    Dataset,
    Snapshot,
    SnapshotAmendment,
    SnapshotKind,
    SnapshotMembership,
)
from provenance.schema import RowError, content_hash, record_validate, schema_validate

EXCLUSION_REASONS = ("no_consent", "withdrawn", "expired", "retention_passed")
# How far ``at`` may lie from the moment a snapshot is taken and still count as that moment
# (clocks of the caller and the server disagree): beyond it in the past, a reconstruction.
SNAPSHOT_CLOCK_SKEW = timedelta(minutes=5)
MAX_ERRORS_REPORTED = 20


def _max_rows() -> int:
    return settings.PROVENANCE_MAX_ROWS_PER_REQUEST


# --- Datasets --------------------------------------------------------------------------


@transaction.atomic
def dataset_create(
    *,
    name: str,
    owner: str,
    processing_activity: ProcessingActivity,
    schema: Any,
    description: str = "",
    source_system: str = "",
    parents: Iterable[Dataset] = (),
    transformation: str = "",
    actor: Any = None,
) -> Dataset:
    clean_schema = schema_validate(schema)
    parents = list(parents)
    if parents and not transformation.strip():
        raise ServiceError("A derived dataset must describe the transformation from its parents.", field="transformation")
    if transformation.strip() and not parents:
        raise ServiceError("A transformation is described only for a dataset derived from parents.", field="parents")
    if Dataset.objects.filter(name=name).exists():
        raise ServiceError(f"A dataset named {name!r} already exists.", field="name")
    try:
        with transaction.atomic():
            dataset = Dataset.objects.create(
                name=name, description=description, owner=owner, processing_activity=processing_activity,
                source_system=source_system, schema=clean_schema, transformation=transformation,
                created_by=actor if getattr(actor, "pk", None) else None,
            )
    except IntegrityError:
        raise ServiceError(f"A dataset named {name!r} already exists.", field="name")
    if parents:
        dataset.parents.set(parents)
    audit_event_record(
        actor=actor, action="dataset.created", object_type="dataset", object_id=dataset.pk,
        details={
            "name": name, "processing_activity": processing_activity.pk,
            "features": len(clean_schema["features"]), "parents": [p.pk for p in parents],
        },
    )
    return dataset


# --- Records ---------------------------------------------------------------------------


def _row_error(errors: list[dict], row: int, field: str, reason: str) -> None:
    if len(errors) < MAX_ERRORS_REPORTED:
        errors.append({"row": row, "field": field, "reason": reason})


def _raise_row_errors(errors: list[dict], total_bad: int) -> None:
    first = errors[0]
    raise ServiceError(
        f"row {first['row']}, field '{first['field']}': {first['reason']}. Nothing was stored "
        f"({total_bad} row(s) with errors; the first {len(errors)} are listed).",
        field="rows", errors=errors,
    )


def _validate_rows(rows: Any, schema: dict, *, from_text: bool) -> tuple[list[str], list[tuple[dict, Any]]]:
    if not isinstance(rows, list):
        raise ServiceError("Expected a JSON list of records or a CSV body.", field="rows")
    if not rows:
        raise ServiceError("No records given.", field="rows")
    if len(rows) > _max_rows():
        raise ServiceError(f"At most {_max_rows()} rows per request; got {len(rows)}.", field="rows")
    identifiers: list[str] = []
    clean: list[tuple[dict, Any]] = []
    errors: list[dict] = []
    bad = 0
    label_name = schema["label"]["name"]
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            bad += 1
            _row_error(errors, number, "row", "expected an object with subject, features and label")
            continue
        unknown = sorted(set(row) - {"subject", "features", "label"})
        if unknown:
            bad += 1
            _row_error(errors, number, unknown[0], "unknown key; a record has subject, features and label")
            continue
        subject = row.get("subject")
        if not isinstance(subject, str) or not subject.strip():
            bad += 1
            _row_error(errors, number, "subject", "the subject's external identifier is required")
            continue
        if "label" not in row:
            bad += 1
            _row_error(errors, number, label_name, "the label is missing")
            continue
        try:
            clean.append(record_validate(row.get("features"), row.get("label"), schema, from_text=from_text))
        except RowError as exc:
            bad += 1
            _row_error(errors, number, exc.field, exc.reason)
            continue
        identifiers.append(subject)
    if errors:
        _raise_row_errors(errors, bad)
    return identifiers, clean


def records_parse_csv(*, text: str, schema: dict) -> list[dict]:
    """Turn a CSV body (subject column, one column per feature, the label column) into rows.

    Values stay text here; validation converts them to the declared types. Row numbers in
    errors count data rows from 1 (the header is not a row).
    """
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise ServiceError("The CSV body is empty.", field="rows")
    except csv.Error as exc:
        raise ServiceError(f"The CSV header cannot be read: {exc}.", field="rows")
    # Spreadsheet exports often start with a byte-order mark.
    header = [h.strip().lstrip("\ufeff") for h in header]
    features = [f["name"] for f in schema["features"]]
    label = schema["label"]["name"]
    expected = {"subject", label, *features}
    unknown = [h for h in header if h not in expected]
    if unknown:
        raise ServiceError(
            f"Unknown column {unknown[0]!r}; the columns are 'subject', the features ({', '.join(features)}) and the label {label!r}.",
            field=unknown[0], column=unknown[0],
        )
    missing = [h for h in ["subject", *features, label] if h not in header]
    if missing:
        raise ServiceError(f"Missing column {missing[0]!r}.", field=missing[0], column=missing[0])
    if len(set(header)) != len(header):
        raise ServiceError("A column appears twice in the CSV header.", field="rows")
    position = {name: header.index(name) for name in header}
    rows: list[dict] = []
    errors: list[dict] = []
    bad = 0
    number = 0
    while True:
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            number += 1
            bad += 1
            _row_error(errors, number, "row", f"broken CSV (line {reader.line_num}): {exc}")
            break  # the reader cannot resynchronise after a broken quote
        number += 1
        if not values:
            bad += 1
            _row_error(errors, number, "row", f"empty line (line {reader.line_num})")
            continue
        if len(values) != len(header):
            bad += 1
            _row_error(
                errors, number, "row", f"expected {len(header)} columns, got {len(values)} (line {reader.line_num})"
            )
            continue
        rows.append({
            "subject": values[position["subject"]],
            "features": {name: values[position[name]] for name in features},
            "label": values[position[label]],
        })
        if number > _max_rows():
            raise ServiceError(f"At most {_max_rows()} rows per request.", field="rows")
    if errors:
        _raise_row_errors(errors, bad)
    return rows


def _copy_records(rows: list[tuple[int, int, str, str | None, str, datetime]]) -> None:
    """PostgreSQL COPY of (dataset_id, subject_id, features, label, content_hash, ingested_at)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerows(rows)
    buffer.seek(0)
    table = DataRecord._meta.db_table
    with connection.cursor() as cursor:
        cursor.cursor.copy_expert(
            f"COPY {table} (dataset_id, subject_id, features, label, content_hash, ingested_at) FROM STDIN WITH (FORMAT csv)",
            buffer,
        )


def _ingest(*, dataset: Dataset, rows: Any, actor: Any, from_text: bool, source_format: str) -> dict:
    identifiers, clean = _validate_rows(rows, dataset.schema, from_text=from_text)
    try:
        pseudonyms = pseudonymise_many(identifiers)
    except (TypeError, ValueError) as exc:
        raise ServiceError(f"A subject identifier is invalid: {exc}.", field="subject")
    ingested_at = timezone.now()
    with transaction.atomic():
        subject_ids = data_subject_ensure_many(pseudonyms=pseudonyms)
        if connection.vendor == "postgresql":
            _copy_records([
                (
                    dataset.pk, subject_ids[p],
                    json.dumps(features, ensure_ascii=False),
                    None if label is None else json.dumps(label, ensure_ascii=False),
                    content_hash(features, label), ingested_at.isoformat(),
                )
                for p, (features, label) in zip(pseudonyms, clean, strict=True)
            ])
        else:
            DataRecord.objects.bulk_create(
                [
                    DataRecord(
                        dataset_id=dataset.pk, subject_id=subject_ids[p], features=features, label=label,
                        content_hash=content_hash(features, label), ingested_at=ingested_at,
                    )
                    for p, (features, label) in zip(pseudonyms, clean, strict=True)
                ],
                batch_size=2000,
            )
        result = {
            "dataset": dataset.pk,
            "records_created": len(clean),
            "subjects": len(subject_ids),
            "ingested_at": ingested_at.isoformat(),
        }
        audit_event_record(
            actor=actor, action="dataset.records_ingested", object_type="dataset", object_id=dataset.pk,
            details={"records": len(clean), "subjects": len(subject_ids), "format": source_format},
        )
    return result


def dataset_records_ingest(*, dataset: Dataset, rows: list[dict], actor: Any) -> dict:
    """Validate every row first, then store all of them or none.

    rows: ``[{"subject": external id, "features": {...}, "label": ...}]``. Subjects are
    pseudonymised on arrival and created in bulk; records are inserted in bulk (COPY on
    PostgreSQL); one audit event records the batch.
    """
    return _ingest(dataset=dataset, rows=rows, actor=actor, from_text=False, source_format="json")


def dataset_records_ingest_csv(*, dataset: Dataset, text: str, actor: Any) -> dict:
    rows = records_parse_csv(text=text, schema=dataset.schema)
    return _ingest(dataset=dataset, rows=rows, actor=actor, from_text=True, source_format="csv")


# --- Snapshots -------------------------------------------------------------------------


def purpose_permission(*, processing_activity: ProcessingActivity, purpose: Purpose) -> PurposeCompatibility | None:
    """Return None when the activity's own purposes cover ``purpose``, the Art. 6(4)
    assessment relied on when one declares it compatible, or refuse (Art. 5(1)(b))."""
    own = list(processing_activity.purposes.all())
    if any(p.covers(purpose.code) for p in own):
        return None
    ancestors = Purpose.objects.filter(code__in=purpose.ancestor_codes())
    compatibility = (
        PurposeCompatibility.objects.filter(original_purpose__in=own, compatible_purpose__in=ancestors)
        .order_by("approved_at", "id")
        .first()
    )
    if compatibility is not None:
        return compatibility
    raise ServiceError(
        f"Purpose limitation (Art. 5(1)(b)): the processing activity {processing_activity.name!r} is for "
        f"{', '.join(p.code for p in own) or 'no purpose'}, which does not cover {purpose.code!r}, and no "
        "Art. 6(4) compatibility assessment declares it compatible with one of them.",
        field="purpose",
    )


def shortest_retention(*, processing_activity: ProcessingActivity) -> timedelta | None:
    return processing_activity.retention_rules.aggregate(r=Min("retention"))["r"]


def _consent_reason_sql(alias: str) -> str:
    return (
        f"WHEN {alias}.state IS NULL THEN 'no_consent' WHEN {alias}.state = 'withdrawn' THEN 'withdrawn' "
        f"WHEN {alias}.state = 'expired' THEN 'expired'"
    )


def _membership_select(
    *, dataset_id: int, purpose: Purpose, at: datetime, consent: bool, cutoff: datetime | None,
    known_at: datetime | None = None, also_at: datetime | None = None,
) -> tuple[str, list]:
    """(classification query, params): every record of the dataset that existed at T,
    with its content hash and why it is excluded, or 'included'. ``known_at``: consent
    counts only events recorded by then (the moment the snapshot read the ledger).
    ``also_at``: consent must be valid at this moment too (a current snapshot taken for a
    T a little before or after K must hold only people covered at both)."""
    reason = ["CASE"]
    params: list = []
    if cutoff is not None:
        reason.append("WHEN r.ingested_at < %s THEN 'retention_passed'")
        params.append(cutoff)
    if consent:
        reason.append(_consent_reason_sql("c"))
        if also_at is not None:
            reason.append(_consent_reason_sql("c2"))
    reason.append("ELSE 'included' END")
    reason_sql = " ".join(reason) if len(reason) > 2 else "'included'"
    if consent:
        consent_sql, consent_params = consent_state_sql(purpose=purpose, at=at, known_at=known_at)
        joins = f"LEFT JOIN ({consent_sql}) c ON c.subject_id = r.subject_id"
        join_params = list(consent_params)
        if also_at is not None:
            also_sql, also_params = consent_state_sql(purpose=purpose, at=also_at, known_at=known_at)
            joins += f" LEFT JOIN ({also_sql}) c2 ON c2.subject_id = r.subject_id"
            join_params += also_params
        body = (
            f"SELECT r.id AS record_id, r.subject_id AS subject_id, r.content_hash AS content_hash, {reason_sql} AS reason "
            f"FROM {DataRecord._meta.db_table} r {joins} "
            "WHERE r.dataset_id = %s AND r.ingested_at <= %s"
        )
        params = [*params, *join_params, dataset_id, at]
    else:
        body = (
            f"SELECT r.id AS record_id, r.subject_id AS subject_id, r.content_hash AS content_hash, {reason_sql} AS reason "
            f"FROM {DataRecord._meta.db_table} r WHERE r.dataset_id = %s AND r.ingested_at <= %s"
        )
        params = [*params, dataset_id, at]
    return body, params


def _fill_membership(*, snapshot_id: int, body: str, params: list) -> tuple[dict[str, int], int, str]:
    """Insert the included records; return ({reason: records}, included subjects, Merkle root).

    On PostgreSQL a single statement classifies every record once and feeds the INSERT,
    the counts and the Merkle leaves (hashed by the database, streamed in record id
    order through COPY and folded in Python as they arrive). Elsewhere: an INSERT …
    SELECT, a counting SELECT and a streamed manifest read.
    """
    table = SnapshotMembership._meta.db_table
    if connection.vendor == "postgresql":
        sql = (
            f"COPY (WITH classified AS MATERIALIZED ({body}), "
            f"ins AS (INSERT INTO {table} (snapshot_id, record_id, subject_id) "
            "SELECT %s, record_id, subject_id FROM classified WHERE reason = 'included'), "
            "counts AS (SELECT reason, COUNT(*) AS n FROM classified GROUP BY reason), "
            "subjects AS (SELECT COUNT(DISTINCT subject_id) AS n FROM classified WHERE reason = 'included') "
            "SELECT line FROM ("
            "SELECT 0 AS part, record_id AS k, "
            "encode(sha256(convert_to(record_id::text || ':' || content_hash, 'UTF8')), 'hex') AS line "
            "FROM classified WHERE reason = 'included' "
            "UNION ALL SELECT 1, 0, '#' || reason || ' ' || n FROM counts "
            "UNION ALL SELECT 1, 0, '#subjects ' || n FROM subjects"
            ") out ORDER BY part, k) TO STDOUT"
        )
        acc = merkle.MerkleAccumulator()
        sink = _LeafSink(acc)
        with connection.cursor() as cursor:
            # COPY takes no bind parameters: the driver quotes them into the statement.
            cursor.cursor.copy_expert(cursor.cursor.mogrify(sql, [*params, snapshot_id]).decode(), sink)
        sink.close()
        totals = {reason: int(n) for reason, n in (line[1:].split(" ") for line in sink.tagged)}
        included_subjects = totals.pop("subjects", 0)
        return totals, included_subjects, acc.root()
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (snapshot_id, record_id, subject_id) "
            f"SELECT %s, record_id, subject_id FROM ({body}) classified WHERE reason = 'included'",
            [snapshot_id, *params],
        )
        cursor.execute(
            f"SELECT reason, COUNT(*), COUNT(DISTINCT subject_id) FROM ({body}) classified GROUP BY reason", params
        )
        rows = cursor.fetchall()
    totals = {reason: n for reason, n, _ in rows}
    included_subjects = next((subjects for reason, _, subjects in rows if reason == "included"), 0)
    return totals, included_subjects, snapshot_merkle_root(snapshot_id=snapshot_id)


class _LeafSink:
    """File-like target of COPY … TO STDOUT: one leaf hash per line, folded as it arrives."""

    def __init__(self, acc: merkle.MerkleAccumulator, batch: int = merkle.BLOCK * 4):
        self.acc = acc
        self.batch = batch
        self.partial = ""
        self.pending: list[str] = []
        self.tagged: list[str] = []  # lines starting with "#": side results, never leaves

    def _take(self, lines: list[str]) -> None:
        if lines and lines[-1].startswith("#"):
            self.tagged.extend(line for line in lines if line.startswith("#"))
            lines = [line for line in lines if not line.startswith("#")]
        self.pending.extend(lines)

    def write(self, data: str | bytes) -> int:
        text = data.decode("ascii") if isinstance(data, bytes) else data
        lines = (self.partial + text).split("\n")
        self.partial = lines.pop()
        self._take(lines)
        if len(self.pending) >= self.batch:
            self.acc.add_leaves(self.pending)
            self.pending = []
        return len(data)

    def close(self) -> None:
        if self.partial:
            self._take([self.partial])
        self.acc.add_leaves(self.pending)
        self.pending = []


def snapshot_merkle_root(*, snapshot_id: int, chunk_size: int = 20000) -> str:
    """Stream the current members in record id order through the Merkle accumulator."""
    acc = merkle.MerkleAccumulator()
    members, records = SnapshotMembership._meta.db_table, DataRecord._meta.db_table
    if connection.vendor == "postgresql":
        # The database hashes the leaves (same definition) and streams them with COPY,
        # far cheaper than a row per Python tuple; Python only folds the tree.
        sql = (
            f"COPY (SELECT encode(sha256(convert_to(m.record_id::text || ':' || r.content_hash, 'UTF8')), 'hex') "
            f"FROM {members} m JOIN {records} r ON r.id = m.record_id WHERE m.snapshot_id = {int(snapshot_id)} "
            "ORDER BY m.record_id) TO STDOUT"
        )
        sink = _LeafSink(acc)
        with connection.cursor() as cursor:
            cursor.cursor.copy_expert(sql, sink)
        sink.close()
        return acc.root()
    sql = (
        f"SELECT m.record_id, r.content_hash FROM {members} m JOIN {records} r ON r.id = m.record_id "
        "WHERE m.snapshot_id = %s ORDER BY m.record_id"
    )
    with connection.chunked_cursor() as cursor:
        cursor.execute(sql, [snapshot_id])
        while True:
            chunk = cursor.fetchmany(chunk_size)
            if not chunk:
                break
            acc.add_leaves([merkle.leaf_hash(record_id, digest) for record_id, digest in chunk])
    return acc.root()


@transaction.atomic
def snapshot_create(
    *, dataset: Dataset, purpose: Purpose, at: datetime | None = None, requested_by: Any = None
) -> Snapshot:
    """Freeze which records of ``dataset`` may be processed for ``purpose`` at ``at``.

    Refuses a purpose the processing activity does not cover (Art. 5(1)(b)) unless an
    Art. 6(4) assessment declares it compatible. Membership is computed by one
    INSERT … SELECT: with consent as the lawful basis only subjects whose consent for the
    purpose is valid at T; with any basis, records whose shortest retention period has
    passed at T are left out. Records ingested after T do not exist for T.

    Consent is read from the ledger as committed at the moment K this function reads it
    (consent_ledger_moment: it waits for consent transactions in flight, then reads K), and
    counts only events recorded at or before K; T defaults to K. K is in the audit event
    (``consent_known_at``).

    A T more than the clock skew (5 minutes) before K makes a *reconstruction*: what was
    lawful at T, exactly what consent_status_bulk(at=T, known_at=K) answers, kept for the
    record and never trained on (people covered then may have withdrawn since). Otherwise
    the snapshot is *current*: a run may train on it, so it holds only people whose
    consent is valid both at T and at K, and retention is counted from the later of the two.
    """
    activity = dataset.processing_activity
    consent = activity.lawful_basis == LawfulBasis.CONSENT
    # Only a consent snapshot reads the ledger, so only it waits for consent writers.
    known_at = consent_ledger_moment() if consent else None
    now = known_at or timezone.now()
    at = at or now
    if at > now + SNAPSHOT_CLOCK_SKEW:
        raise ServiceError("A snapshot cannot be taken for a moment in the future.", field="at")
    kind = SnapshotKind.RECONSTRUCTION if at < now - SNAPSHOT_CLOCK_SKEW else SnapshotKind.CURRENT
    compatibility = purpose_permission(processing_activity=activity, purpose=purpose)
    retention = shortest_retention(processing_activity=activity)
    # A current snapshot is used from now on: a record past its retention at either moment is out.
    latest = at if kind == SnapshotKind.RECONSTRUCTION else max(at, now)
    cutoff = latest - retention if retention is not None else None
    also_at = now if kind == SnapshotKind.CURRENT and consent and at != now else None
    snapshot = Snapshot.objects.create(
        dataset=dataset, purpose=purpose, taken_for=at, consent_known_at=known_at, kind=kind,
        requested_by=requested_by if getattr(requested_by, "pk", None) else None,
        lawful_basis=activity.lawful_basis, compatibility=compatibility,
        included_count=0, included_subjects=0, excluded_counts={}, merkle_root="",
    )
    body, params = _membership_select(
        dataset_id=dataset.pk, purpose=purpose, at=at, consent=consent, cutoff=cutoff, known_at=known_at,
        also_at=also_at,
    )
    counts, included_subjects, root = _fill_membership(snapshot_id=snapshot.pk, body=body, params=params)
    included = counts.get("included", 0)
    excluded = {reason: counts.get(reason, 0) for reason in EXCLUSION_REASONS}
    completed_at = timezone.now()
    Snapshot.objects.filter(pk=snapshot.pk)._finalise(
        included_count=included, included_subjects=included_subjects, excluded_counts=excluded,
        merkle_root=root, completed_at=completed_at,
    )
    snapshot.refresh_from_db()
    audit_event_record(
        actor=requested_by, action="snapshot.created", object_type="snapshot", object_id=snapshot.pk,
        details={
            "dataset": dataset.pk, "purpose": purpose.code, "taken_for": at.isoformat(), "kind": kind,
            "consent_known_at": known_at.isoformat() if known_at else None,
            "lawful_basis": activity.lawful_basis, "compatibility": compatibility.pk if compatibility else None,
            "included": included, "included_subjects": included_subjects, "excluded": excluded,
            "merkle_root": root, "retention": str(retention) if retention is not None else None,
        },
    )
    from provenance.tasks import snapshot_openlineage_emit

    # A lineage backend (Marquez, DataHub) is slow or down at times: the events go out from
    # a worker, after the commit, and never hold up or undo the snapshot.
    # Best effort (the events stay downloadable): a broker that is down must not fail the snapshot.
    task_dispatch_on_commit(snapshot_openlineage_emit, args=[snapshot.pk])
    return snapshot


# --- Removing members: retention and erasure -------------------------------------------


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
