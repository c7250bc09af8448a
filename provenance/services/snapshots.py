"""Immutable, consent-filtered snapshots: purpose limitation, one classifying statement for
membership and counts, the Merkle root folded as the leaves stream out."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.db.models import Min
from django.utils import timezone

from governance.consent_clock import consent_ledger_moment
from governance.dispatch import task_dispatch_on_commit
from governance.models import LawfulBasis, ProcessingActivity, Purpose, PurposeCompatibility
from governance.selectors import (
    consent_state_sql,
    objecting_subjects_sql,
    objection_applies,
    restricted_subjects_sql,
)
from governance.services import ServiceError, audit_event_record
from provenance import merkle
from provenance.models import (
    DataRecord,
    Dataset,
    Snapshot,
    SnapshotKind,
    SnapshotMembership,
)

# A record is counted under the first reason that applies, in this order.
EXCLUSION_REASONS = ("no_consent", "withdrawn", "expired", "retention_passed", "restricted", "objected")
# How far ``at`` may lie from the moment a snapshot is taken and still count as that moment
# (clocks of the caller and the server disagree): beyond it in the past, a reconstruction.
SNAPSHOT_CLOCK_SKEW = timedelta(minutes=5)


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


def limits_moments(*, at: datetime, ledger_moment: datetime, kind: str) -> list[datetime]:
    """The moments at which restrictions and objections decide a snapshot's membership.

    A reconstruction: T alone (T is before the ledger moment K, so every limit stamped by T
    was read). A current snapshot: K, and T as well when T is before K (a person limited at
    either is left out); a T after K counts as K, since limits stamped after K were not read.
    """
    if kind == SnapshotKind.RECONSTRUCTION:
        return [at]
    return [ledger_moment, at] if at < ledger_moment else [ledger_moment]


def limits_reason_branches(
    *, purpose: Purpose, moments: list[datetime], objections: bool, alias: str = "r"
) -> tuple[list[str], list]:
    """CASE branches (and their params) for the restricted and objecting people at ``moments``."""
    branches: list[str] = []
    params: list = []
    restricted = []
    for moment in moments:
        sql, sql_params = restricted_subjects_sql(at=moment)
        restricted.append(f"{alias}.subject_id IN ({sql})")
        params += sql_params
    branches.append(f"WHEN {' OR '.join(restricted)} THEN 'restricted'")
    if objections:
        objected = []
        for moment in moments:
            sql, sql_params = objecting_subjects_sql(purpose=purpose, at=moment)
            objected.append(f"{alias}.subject_id IN ({sql})")
            params += sql_params
        branches.append(f"WHEN {' OR '.join(objected)} THEN 'objected'")
    return branches, params


def _membership_select(
    *, dataset_id: int, purpose: Purpose, at: datetime, consent: bool, cutoff: datetime | None,
    known_at: datetime | None = None, also_at: datetime | None = None,
    limits_at: list[datetime] | None = None, objections: bool = False,
) -> tuple[str, list]:
    """(classification query, params): every record of the dataset that existed at T and
    is a current version (a version a rectification superseded is never a candidate, not
    even for a reconstruction: the old value is in no new snapshot, Art. 16), with its
    content hash and why it is excluded, or 'included'. ``known_at``: consent
    counts only events recorded by then (the moment the snapshot read the ledger).
    ``also_at``: consent must be valid at this moment too (a current snapshot taken for a
    T a little before or after K must hold only people covered at both). ``limits_at``:
    people restricted (Art. 18) at any of these moments are out, and, with ``objections``,
    people objecting to the purpose (Art. 21) at any of them."""
    reason = ["CASE"]
    params: list = []
    if cutoff is not None:
        reason.append("WHEN r.ingested_at < %s THEN 'retention_passed'")
        params.append(cutoff)
    if consent:
        reason.append(_consent_reason_sql("c"))
        if also_at is not None:
            reason.append(_consent_reason_sql("c2"))
    if limits_at:
        branches, limit_params = limits_reason_branches(purpose=purpose, moments=limits_at, objections=objections)
        reason.extend(branches)
        params += limit_params
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
            "WHERE r.dataset_id = %s AND r.ingested_at <= %s AND r.superseded_at IS NULL"
        )
        params = [*params, *join_params, dataset_id, at]
    else:
        body = (
            f"SELECT r.id AS record_id, r.subject_id AS subject_id, r.content_hash AS content_hash, {reason_sql} AS reason "
            f"FROM {DataRecord._meta.db_table} r WHERE r.dataset_id = %s AND r.ingested_at <= %s "
            "AND r.superseded_at IS NULL"
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

    With any basis, people whose processing is restricted (Art. 18) are left out (reason
    ``restricted``), and people objecting to the purpose (Art. 21: bases 6(1)(e), (f), and
    direct marketing on any basis but consent) too (reason ``objected``), at the moments
    ``limits_moments`` gives (T for a reconstruction; K, and T when before K, otherwise);
    the audit event records them (``limits_at``, ``objections_apply``) for snapshot_verify.
    """
    activity = dataset.processing_activity
    consent = activity.lawful_basis == LawfulBasis.CONSENT
    # Every snapshot reads the restrictions and objections, stamped in the consent ledger's
    # critical section, so every snapshot waits for its writers; only a consent snapshot
    # reads the consent events (and records the moment as consent_known_at).
    ledger_moment = consent_ledger_moment()
    known_at = ledger_moment if consent else None
    now = ledger_moment
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
    limits_at = limits_moments(at=at, ledger_moment=ledger_moment, kind=kind)
    # Art. 21 stops processing under 6(1)(e) or (f), and direct marketing under any basis
    # but consent (where the consent filter already applies the withdrawal).
    objections = objection_applies(lawful_basis=activity.lawful_basis, purpose_code=purpose.code)
    body, params = _membership_select(
        dataset_id=dataset.pk, purpose=purpose, at=at, consent=consent, cutoff=cutoff, known_at=known_at,
        also_at=also_at, limits_at=limits_at, objections=objections,
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
            # What snapshot_verify re-applies: the moments restrictions and objections were read at.
            "limits_at": [moment.isoformat() for moment in limits_at], "objections_apply": objections,
        },
    )
    from provenance.tasks import snapshot_openlineage_emit

    # A lineage backend (Marquez, DataHub) is slow or down at times: the events go out from
    # a worker, after the commit, and never hold up or undo the snapshot.
    # Best effort (the events stay downloadable): a broker that is down must not fail the snapshot.
    task_dispatch_on_commit(snapshot_openlineage_emit, args=[snapshot.pk])
    return snapshot
