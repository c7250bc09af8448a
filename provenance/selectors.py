"""Selectors that read provenance: manifests, lineage and a person's impact.

Lineage runs dataset → snapshot → training run → model version. Training runs and model
versions live in the mlops app and are looked up lazily, so these selectors work (and
answer with empty lists) before that app's models exist.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from datetime import datetime

from django.db import connection
from django.db.models import Count, Max

from governance.models import DataSubject, Purpose
from provenance.downstream import trained_on_snapshots
from provenance.models import DataRecord, Dataset, Snapshot, SnapshotAmendment, SnapshotMembership


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):  # SQLite returns text from raw SQL
        return value
    return value.isoformat()


# --- Snapshots -------------------------------------------------------------------------


def snapshot_amendment_count(*, snapshot_id: int) -> int:
    """How many amendments the snapshot has had (the latest sequence number; 0 for none)."""
    return SnapshotAmendment.objects.filter(snapshot_id=snapshot_id).aggregate(n=Max("sequence"))["n"] or 0


def snapshot_members_no_longer_covered(*, snapshot: Snapshot, at: datetime) -> int:
    """How many people still in ``snapshot`` have no valid consent for its purpose at ``at``
    (withdrawn, expired, or no consent event at all), as the ledger stands; one grouped query.

    0 for a snapshot taken under another lawful basis: consent does not decide who is in it.
    Erased people are not counted: their erasure amended them out of the membership.
    """
    from governance.models import LawfulBasis
    from governance.selectors import consent_state_sql

    if snapshot.lawful_basis != LawfulBasis.CONSENT:
        return 0
    consent_sql, params = consent_state_sql(purpose=snapshot.purpose, at=at)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT COUNT(DISTINCT m.subject_id) FROM {SnapshotMembership._meta.db_table} m "
            f"LEFT JOIN ({consent_sql}) c ON c.subject_id = m.subject_id "
            "WHERE m.snapshot_id = %s AND (c.state IS NULL OR c.state <> 'valid')",
            [*params, snapshot.pk],
        )
        return int(cursor.fetchone()[0])


def snapshot_members_limited(*, snapshot: Snapshot, at: datetime) -> dict[str, int]:
    """How many people still in ``snapshot`` are restricted (Art. 18) and how many object to
    its purpose (Art. 21, where objections apply to its lawful basis) at ``at``:
    ``{"restricted": n, "objected": m}``, a person restricted and objecting counted once, as
    restricted. One grouped query."""
    from governance.selectors import objecting_subjects_sql, objection_applies, restricted_subjects_sql

    restricted_sql, params = restricted_subjects_sql(at=at)
    reason = f"WHEN m.subject_id IN ({restricted_sql}) THEN 'restricted' "
    if objection_applies(lawful_basis=snapshot.lawful_basis, purpose_code=snapshot.purpose.code):
        objected_sql, objected_params = objecting_subjects_sql(purpose=snapshot.purpose, at=at)
        reason += f"WHEN m.subject_id IN ({objected_sql}) THEN 'objected' "
        params = [*params, *objected_params]
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT reason, COUNT(*) FROM (SELECT DISTINCT m.subject_id, CASE {reason} END AS reason "
            f"FROM {SnapshotMembership._meta.db_table} m WHERE m.snapshot_id = %s) limited "
            "WHERE reason IS NOT NULL GROUP BY reason",
            [*params, snapshot.pk],
        )
        counts = dict(cursor.fetchall())
    return {"restricted": int(counts.get("restricted", 0)), "objected": int(counts.get("objected", 0))}


def snapshot_members_superseded(*, snapshot: Snapshot) -> int:
    """How many records still in ``snapshot`` were replaced since by a rectified version
    (Art. 16): the snapshot holds values known to be wrong. One indexed count."""
    return SnapshotMembership.objects.filter(snapshot=snapshot, record__superseded_at__isnull=False).count()


def subject_records_in_snapshots(*, subject_id: int, snapshot_ids: Iterable[int]) -> dict[int, int]:
    """How many of one person's records each snapshot holds (absent: none), in one query on
    the (subject, snapshot) index: the group size of that person's privacy guarantee."""
    rows = (SnapshotMembership.objects.filter(subject_id=subject_id, snapshot_id__in=list(snapshot_ids))
            .values("snapshot_id").annotate(n=Count("id")).values_list("snapshot_id", "n"))
    return dict(rows)


def snapshot_current_root(*, snapshot: Snapshot) -> str:
    """The root of the current membership: the last amendment's, or the original."""
    latest = SnapshotAmendment.objects.filter(snapshot=snapshot).order_by("-id").values_list("new_root", flat=True).first()
    return latest or snapshot.merkle_root


def snapshot_manifest_rows(*, snapshot: Snapshot, chunk_size: int = 10000) -> Iterator[tuple[int, str]]:
    """(record id, content hash) of the current members in record id order, streamed
    from a server-side cursor on PostgreSQL."""
    sql = (
        f"SELECT m.record_id, r.content_hash FROM {SnapshotMembership._meta.db_table} m "
        f"JOIN {DataRecord._meta.db_table} r ON r.id = m.record_id WHERE m.snapshot_id = %s ORDER BY m.record_id"
    )
    with connection.chunked_cursor() as cursor:
        cursor.execute(sql, [snapshot.pk])
        while True:
            chunk = cursor.fetchmany(chunk_size)
            if not chunk:
                return
            yield from chunk


EXPORT_RECORD_ID = "record_id"
# Rows per chunk of an export, and per Parquet row group: a few MB in memory whatever the
# snapshot's size, and a row group size readers handle well.
EXPORT_CHUNK_ROWS = 50_000
# How each schema type is read out of the JSON columns on PostgreSQL: as text (``->>``,
# ``#>> '{}'`` for the label, which is NULL for a JSON null) cast to the column type there,
# so the export gets typed values from the database instead of parsing JSON per row.
_PG_CASTS = {"float": "::float8", "int": "::bigint", "bool": "::boolean", "category": ""}


def snapshot_export_columns(*, schema: dict) -> list[tuple[str, str]]:
    """(name, type) of an export's columns: record_id, the features in schema order, the label.
    Nothing else: the subject (pseudonym, identifier, internal id) is never a column."""
    return [
        (EXPORT_RECORD_ID, "int"),
        *((f["name"], f["type"]) for f in schema["features"]),
        (schema["label"]["name"], schema["label"]["type"]),
    ]


def _export_sql(schema: dict) -> tuple[str, list[str]]:
    members, records = SnapshotMembership._meta.db_table, DataRecord._meta.db_table
    names = [f["name"] for f in schema["features"]]
    if connection.vendor == "postgresql":
        features = [f"(r.features ->> %s){_PG_CASTS[f['type']]}" for f in schema["features"]]
        label = f"(r.label #>> '{{}}'){_PG_CASTS[schema['label']['type']]}"
        params = names
    else:
        # SQLite: a JSON path quotes the key, since feature names may hold '.' or '-'.
        features = ["json_extract(r.features, %s)" for _ in names]
        label = "json_extract(r.label, '$')"
        params = ['$."' + name + '"' for name in names]
    sql = (
        f"SELECT m.record_id, {', '.join(features)}, {label} FROM {members} m "
        f"JOIN {records} r ON r.id = m.record_id "
        "WHERE m.snapshot_id = %s ORDER BY m.record_id"
    )
    return sql, params


def snapshot_export_chunks(*, snapshot_id: int, schema: dict, chunk_size: int = EXPORT_CHUNK_ROWS) -> Iterator[list[tuple]]:
    """The current members' rows in record id order, as lists of at most ``chunk_size``
    tuples ``(record_id, feature values in schema order..., label)`` with Python values of
    the schema's types (float, int, bool, category text; None where a value is missing).

    One set-based query read through a server-side cursor (PostgreSQL), ``chunk_size`` rows
    at a time, so memory is one chunk whatever the snapshot's size. Not keyset pagination
    (one query per chunk "after the last id"): on a freshly written membership the planner
    has no statistics, sorts the whole remainder for every chunk, and a million-row export
    turns quadratic. The caller decides the transaction (the cursor lives inside it).
    """
    sql, params = _export_sql(schema)
    bool_columns = [i for i, (_, kind) in enumerate(snapshot_export_columns(schema=schema)) if kind == "bool"]
    fix_bools = connection.vendor != "postgresql" and bool_columns  # SQLite's JSON true is 1
    with connection.chunked_cursor() as cursor:
        cursor.execute(sql, [*params, snapshot_id])
        while True:
            rows = cursor.fetchmany(chunk_size)
            if not rows:
                return
            if fix_bools:
                rows = [_bools(row, bool_columns) for row in rows]
            yield rows


def _export_copy_sql(schema: dict) -> tuple[str, list[str]]:
    """The rows of one id range as PostgreSQL CSV; booleans as ``true``/``false`` (the cast
    to text, not the ``t``/``f`` of the output function): what record ingest reads back."""
    members, records = SnapshotMembership._meta.db_table, DataRecord._meta.db_table

    def column(expression: str, kind: str) -> str:
        typed = f"{expression}{_PG_CASTS[kind]}"
        return f"{typed}::text" if kind == "bool" else typed

    features = [column("(r.features ->> %s)", f["type"]) for f in schema["features"]]
    label = column("(r.label #>> '{}')", schema["label"]["type"])
    # The range's ids are sorted first, in a subquery the planner keeps (an ORDER BY stops it
    # from being flattened), and the join keeps their order: sorting the wide rows instead
    # spilled 50,000 of them to disk per range under the default work_mem.
    sql = (
        f"COPY (SELECT m.record_id, {', '.join(features)}, {label} FROM ("
        f"SELECT record_id FROM {members} WHERE snapshot_id = %s AND record_id >= %s AND record_id < %s "
        f"ORDER BY record_id) m JOIN {records} r ON r.id = m.record_id ORDER BY m.record_id"
        ") TO STDOUT WITH (FORMAT csv)"
    )
    return sql, [f["name"] for f in schema["features"]]


class _Bytes(io.RawIOBase):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.parts.append(bytes(data))
        return len(data)


def snapshot_export_csv_chunks(*, snapshot_id: int, schema: dict, chunk_size: int = EXPORT_CHUNK_ROWS) -> Iterator[bytes]:
    """PostgreSQL only: the current members' rows (as ``snapshot_export_chunks``) as CSV
    text without a header, made by the database itself, ``chunk_size`` rows a chunk.

    Python never touches a value: one query finds every ``chunk_size``-th record id of the
    membership (a few numbers per million rows), then one ``COPY (SELECT ...) TO STDOUT``
    per id range, each an index range scan of at most ``chunk_size`` members. Floats are
    written in their shortest exact form, so they read back to the same doubles. Run it
    inside one REPEATABLE READ transaction so every range sees the same membership.
    """
    members = SnapshotMembership._meta.db_table
    copy_sql, names = _export_copy_sql(schema)
    with connection.cursor() as cursor:
        # Shortest exact float text on any server version (the default since PostgreSQL 12).
        cursor.execute("SET LOCAL extra_float_digits = 3")
        cursor.execute(
            f"SELECT record_id FROM (SELECT record_id, ROW_NUMBER() OVER (ORDER BY record_id) AS n FROM {members} "
            "WHERE snapshot_id = %s) numbered WHERE n %% %s = 1 ORDER BY record_id",
            [snapshot_id, chunk_size],
        )
        starts = [row[0] for row in cursor.fetchall()]
        ends = [*starts[1:], None]
        for start, end in zip(starts, ends, strict=True):
            sink = _Bytes()
            # Parameters bound by psycopg2 before COPY runs; the end of the last range is open.
            params = [*names, snapshot_id, start, end if end is not None else 2**63 - 1]
            cursor.cursor.copy_expert(cursor.cursor.mogrify(copy_sql, params).decode(), sink)
            yield b"".join(sink.parts)


def _bools(row: tuple, columns: list[int]) -> tuple:
    values = list(row)
    for i in columns:
        if values[i] is not None:
            values[i] = bool(values[i])
    return tuple(values)


# --- Lineage ---------------------------------------------------------------------------


def _activity_summary(activity) -> dict:
    return {
        "id": activity.pk,
        "name": activity.name,
        "lawful_basis": activity.lawful_basis,
        "purposes": sorted(activity.purposes.values_list("code", flat=True)),
        "retention": [
            {"data_category": code, "retention_days": retention.total_seconds() / 86400}
            for code, retention in activity.retention_rules.order_by("data_category__code").values_list(
                "data_category__code", "retention"
            )
        ],
    }


def _dataset_summary(dataset: Dataset) -> dict:
    return {
        "id": dataset.pk,
        "name": dataset.name,
        "owner": dataset.owner,
        "source_system": dataset.source_system,
        "processing_activity": dataset.processing_activity_id,
        "transformation": dataset.transformation,
        "parents": sorted(dataset.parents.values_list("pk", flat=True)),
    }


def _snapshot_summary(snapshot: Snapshot) -> dict:
    return {
        "id": snapshot.pk,
        "dataset": snapshot.dataset_id,
        "purpose": snapshot.purpose.code,
        "taken_for": _iso(snapshot.taken_for),
        "lawful_basis": snapshot.lawful_basis,
        "compatibility": snapshot.compatibility_id,
        "included_count": snapshot.included_count,
        "included_subjects": snapshot.included_subjects,
        "excluded_counts": snapshot.excluded_counts,
        "merkle_root": snapshot.merkle_root,
        "current_merkle_root": snapshot_current_root(snapshot=snapshot),
    }


def _ancestors(dataset: Dataset) -> list[Dataset]:
    seen: dict[int, Dataset] = {}
    frontier = [dataset]
    while frontier:  # one query per generation of parents
        parents = list(
            Dataset.objects.filter(derived__in=frontier).exclude(pk__in=[*seen, dataset.pk])
            .select_related("processing_activity").distinct()
        )
        frontier = [p for p in parents if p.pk not in seen]
        seen.update((p.pk, p) for p in frontier)
    return list(seen.values())


def _runs_and_models(snapshot_ids: list[int]) -> tuple[list[dict], list[dict]]:
    runs, models = trained_on_snapshots(snapshot_ids)
    return (
        [{"id": r.pk, "name": r.name, "snapshot": r.snapshot_id, "status": r.status, "created_at": _iso(r.created_at)}
         for r in runs],
        [{"id": m.pk, "name": m.name, "version": m.version, "status": m.status, "training_run": m.training_run_id}
         for m in models],
    )


def dataset_lineage(*, dataset: Dataset) -> dict:
    """The dataset, what it was derived from, what derives from it, its snapshots and their
    training runs and model versions."""
    ancestors = _ancestors(dataset)
    snapshots = list(
        Snapshot.objects.filter(dataset=dataset).select_related("purpose").order_by("pk")
    )
    runs, models = _runs_and_models([s.pk for s in snapshots])
    # Current versions only: a rectified record (Art. 16) is one record, not two.
    counts = DataRecord.objects.filter(dataset=dataset, superseded_at__isnull=True).aggregate(
        records=Count("id"), subjects=Count("subject_id", distinct=True)
    )
    activities = {dataset.processing_activity_id: dataset.processing_activity}
    activities.update((a.processing_activity_id, a.processing_activity) for a in ancestors)
    return {
        "dataset": _dataset_summary(dataset),
        "record_count": counts["records"],
        "subject_count": counts["subjects"],
        "ancestors": [_dataset_summary(a) for a in ancestors],
        "derived": [_dataset_summary(d) for d in dataset.derived.order_by("pk")],
        "processing_activities": [_activity_summary(a) for _, a in sorted(activities.items())],
        "snapshots": [_snapshot_summary(s) for s in snapshots],
        "training_runs": runs,
        "model_versions": models,
    }


def model_lineage(*, model_version) -> dict:
    """Everything upstream of a model version: its training run, snapshot, dataset, the
    datasets that one was derived from, and their processing activities."""
    run = model_version.training_run
    snapshot = Snapshot.objects.select_related("dataset__processing_activity", "purpose").get(pk=run.snapshot_id)
    dataset = snapshot.dataset
    ancestors = _ancestors(dataset)
    activities = {dataset.processing_activity_id: dataset.processing_activity}
    activities.update((a.processing_activity_id, a.processing_activity) for a in ancestors)
    return {
        "model_version": {
            "id": model_version.pk,
            "name": getattr(model_version, "name", ""),
            "version": getattr(model_version, "version", None),
            "status": getattr(model_version, "status", ""),
        },
        "training_run": {"id": run.pk, "name": getattr(run, "name", ""), "status": getattr(run, "status", "")},
        "snapshot": _snapshot_summary(snapshot),
        "dataset": _dataset_summary(dataset),
        "ancestor_datasets": [_dataset_summary(a) for a in ancestors],
        "processing_activities": [_activity_summary(a) for _, a in sorted(activities.items())],
    }


# --- A person's impact -----------------------------------------------------------------


def subject_impact(*, subject: DataSubject) -> dict:
    """Every dataset, record, snapshot, training run and model version holding this person.

    Three indexed queries (records by subject, membership by subject, runs of those
    snapshots) whatever the number of snapshots. The person is named only by the
    subject's random reference, never by pseudonym.
    """
    records, members, datasets_t = DataRecord._meta.db_table, SnapshotMembership._meta.db_table, Dataset._meta.db_table
    snapshots_t = Snapshot._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT r.dataset_id, d.name, r.id FROM {records} r JOIN {datasets_t} d ON d.id = r.dataset_id "
            "WHERE r.subject_id = %s ORDER BY r.dataset_id, r.id",
            [subject.pk],
        )
        datasets: dict[int, dict] = {}
        for dataset_id, name, record_id in cursor.fetchall():
            entry = datasets.setdefault(dataset_id, {"id": dataset_id, "name": name, "record_count": 0, "record_ids": []})
            entry["record_count"] += 1
            entry["record_ids"].append(record_id)
        cursor.execute(
            f"SELECT m.snapshot_id, s.dataset_id, p.code, s.taken_for, COUNT(*) FROM {members} m "
            f"JOIN {snapshots_t} s ON s.id = m.snapshot_id JOIN {Purpose._meta.db_table} p ON p.id = s.purpose_id "
            "WHERE m.subject_id = %s "
            "GROUP BY m.snapshot_id, s.dataset_id, p.code, s.taken_for ORDER BY m.snapshot_id",
            [subject.pk],
        )
        snapshots = [
            {"id": sid, "dataset": did, "purpose": pid, "taken_for": _iso(taken_for), "records": n}
            for sid, did, pid, taken_for, n in cursor.fetchall()
        ]
    runs, models = _runs_and_models([s["id"] for s in snapshots])
    runs = [{k: r[k] for k in ("id", "name", "snapshot", "status")} for r in runs]
    return {
        "subject_ref": str(subject.reference),
        "datasets": list(datasets.values()),
        "snapshots": snapshots,
        "training_runs": runs,
        "model_versions": models,
        "counts": {
            "datasets": len(datasets),
            "records": sum(d["record_count"] for d in datasets.values()),
            "snapshots": len(snapshots),
            "training_runs": len(runs),
            "model_versions": len(models),
        },
    }


def subject_find(*, external_id: str) -> DataSubject | None:
    """Look a person up by external identifier: pseudonymised first, never stored."""
    from governance.selectors import data_subject_find

    try:
        return data_subject_find(identifier=external_id)
    except (TypeError, ValueError):
        return None
