"""Snapshot export (issue 20): GET /api/v1/snapshots/{id}/export/?format=parquet|csv|jsonl."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta

import pyarrow.parquet as pq
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from governance.models import AuditEvent, DataSubject
from governance.pseudonymisation import pseudonymise
from provenance import selectors, services
from provenance.models import DataRecord
from provenance.schema import content_hash
from provenance.services.export import schema_sha256, snapshot_export_open
from provenance.snapshot_exports import SnapshotChangedError, export_stream
from tests.provenance.helpers import SCHEMA, activity, consent, merkle_root_independent, purpose

pytestmark = pytest.mark.django_db
CODE = "ml.training.clinical_risk"
PEOPLE = ("alice@example.org", "bob@example.org", "carol@example.org", "dave@example.org")
COLUMNS = ["record_id", "age", "bmi", "smoker", "region", "outcome"]


def _rows() -> list[dict]:
    # Values chosen to catch lossy round trips: a float without a short decimal form, a
    # float that is integral, both bools, both categories, several rows per person.
    out = []
    for i, person in enumerate(PEOPLE):
        for k in range(2):
            out.append({
                "subject": person,
                "features": {"age": 30 + i * 10 + k, "bmi": [0.1 + 0.2, 22.0, 1e-7, 31.337][i] + k,
                             "smoker": (i + k) % 2 == 0, "region": "north" if k == 0 else "south"},
                "label": i % 2 == 1,
            })
    return out


@pytest.fixture
def world():
    return _world()


def _world():
    now = timezone.now()
    dataset = services.dataset_create(
        name=f"export test {now.timestamp()}", owner="ml", processing_activity=activity(), schema=SCHEMA
    )
    services.dataset_records_ingest(dataset=dataset, rows=_rows(), actor="test")
    for person in PEOPLE:
        consent(person, CODE, "given", now - timedelta(days=3))
    snapshot = services.snapshot_create(dataset=dataset, purpose=purpose(CODE))
    return dataset, snapshot


def _erase_from_snapshots(person: str) -> None:
    subject = DataSubject.objects.get(pseudonym=pseudonymise(person))
    services.snapshot_records_remove(
        records=DataRecord.objects.filter(subject=subject), reason="erasure", subject_ids=[subject.pk]
    )


def _body(response) -> bytes:
    return b"".join(response.streaming_content)


def _parse(fmt: str, body: bytes) -> list[dict]:
    if fmt == "parquet":
        return pq.read_table(io.BytesIO(body)).to_pylist()
    if fmt == "jsonl":
        lines = body.decode("utf-8").splitlines()
        return [json.loads(line) for line in lines]
    reader = csv.DictReader(io.StringIO(body.decode("utf-8")))
    assert reader.fieldnames == COLUMNS
    typed = []
    for row in reader:
        typed.append({
            "record_id": int(row["record_id"]), "age": int(row["age"]), "bmi": float(row["bmi"]),
            "smoker": {"true": True, "false": False}[row["smoker"]], "region": row["region"],
            "outcome": {"true": True, "false": False}[row["outcome"]],
        })
    return typed


def _expected(snapshot) -> list[dict]:
    member_ids = {rid for rid, _ in selectors.snapshot_manifest_rows(snapshot=snapshot)}
    return [
        {"record_id": r.pk, **r.features, "outcome": r.label}
        for r in DataRecord.objects.filter(pk__in=member_ids).order_by("pk")
    ]


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_an_amended_snapshot_exports_its_current_members_and_never_the_person(ml_client, world, fmt):
    dataset, snapshot = world
    _erase_from_snapshots("bob@example.org")  # amendment 1: bob's two rows leave the snapshot
    response = ml_client.get(f"/api/v1/snapshots/{snapshot.pk}/export/", {"format": fmt})
    assert response.status_code == 200, response.content
    assert response.streaming
    body = _body(response)
    rows = _parse(fmt, body)

    assert rows == _expected(snapshot)
    assert [list(r) for r in rows] == [COLUMNS] * len(rows)  # features in schema order, then the label
    assert len(rows) == 6 and int(response["X-Ledger-Records"]) == 6
    bob = DataSubject.objects.get(pseudonym=pseudonymise("bob@example.org"))
    assert not DataRecord.objects.filter(subject=bob, pk__in=[r["record_id"] for r in rows]).exists()

    current_root = selectors.snapshot_current_root(snapshot=snapshot)
    assert current_root != snapshot.merkle_root
    assert response["X-Ledger-Merkle-Root"] == current_root
    assert response["X-Ledger-Amendment"] == "1"
    assert response["X-Ledger-Snapshot"] == str(snapshot.pk)
    assert response["X-Ledger-Schema"] == schema_sha256(dataset.schema)
    assert response["Content-Disposition"] == f'attachment; filename="snapshot-{snapshot.pk}.{fmt}"'
    # The Merkle leaves need only what is exported: the record id and the content hash of
    # its features and label, so anyone can check the file against the announced root.
    leaves = [
        (r["record_id"], content_hash({k: r[k] for k in COLUMNS[1:-1]}, r["outcome"])) for r in rows
    ]
    assert merkle_root_independent(leaves) == response["X-Ledger-Merkle-Root"]

    headers = "\n".join(f"{k}: {v}" for k, v in response.items())
    for person in PEOPLE:
        for secret in (person, pseudonymise(person)):
            assert secret.encode() not in body and secret not in headers


def test_parquet_carries_the_ledger_metadata_and_typed_columns(ml_client, world):
    dataset, snapshot = world
    body = _body(ml_client.get(f"/api/v1/snapshots/{snapshot.pk}/export/"))  # parquet is the default
    parquet = pq.ParquetFile(io.BytesIO(body))
    meta = parquet.schema_arrow.metadata
    assert meta[b"ledger.snapshot"] == str(snapshot.pk).encode()
    assert meta[b"ledger.merkle_root"] == snapshot.merkle_root.encode()
    assert meta[b"ledger.amendment"] == b"0"
    assert json.loads(meta[b"ledger.schema"]) == dataset.schema
    assert json.loads(meta[b"ledger.schema"])["features"][3]["categories"] == ["north", "south"]
    types = {f.name: str(f.type) for f in parquet.schema_arrow}
    assert types == {"record_id": "int64", "age": "int64", "bmi": "double", "smoker": "bool", "region": "string",
                     "outcome": "bool"}
    assert parquet.read().to_pylist() == _expected(snapshot)


def test_rows_are_read_in_chunks_and_each_chunk_is_a_row_group(world):
    _, snapshot = world
    export = snapshot_export_open(snapshot=snapshot, format="parquet", actor=None)
    with CaptureQueriesContext(connection) as queries:
        body = b"".join(export_stream(export, chunk_size=3))
    parquet = pq.ParquetFile(io.BytesIO(body))
    assert [parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)] == [3, 3, 2]
    assert parquet.read().to_pylist() == _expected(snapshot)
    # The statements through Django do not grow with the rows or chunks: no query per record.
    with CaptureQueriesContext(connection) as one_chunk:
        b"".join(export_stream(export, chunk_size=1000))
    assert len(queries.captured_queries) == len(one_chunk.captured_queries)


def test_the_database_made_csv_and_the_row_path_agree(world):
    """PostgreSQL writes the CSV (and Parquet's input) itself; SQLite, and JSON Lines, go
    through Python rows. Both must give the same values, floats to the last bit."""
    dataset, snapshot = world
    rows = [r for chunk in selectors.snapshot_export_chunks(snapshot_id=snapshot.pk, schema=dataset.schema, chunk_size=3)
            for r in chunk]
    assert [dict(zip(COLUMNS, r, strict=True)) for r in rows] == _expected(snapshot)
    if connection.vendor != "postgresql":
        return
    chunks = list(selectors.snapshot_export_csv_chunks(snapshot_id=snapshot.pk, schema=dataset.schema, chunk_size=3))
    assert [c.count(b"\n") for c in chunks] == [3, 3, 2]
    text = "".join(c.decode() for c in chunks)
    assert _parse("csv", (",".join(COLUMNS) + "\n" + text).encode()) == _expected(snapshot)


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_a_client_leaving_mid_download_leaves_the_connection_usable(world, fmt):
    _, snapshot = world
    export = snapshot_export_open(snapshot=snapshot, format=fmt, actor=None)
    stream = export_stream(export, chunk_size=2)
    assert next(stream)
    stream.close()  # what the server does when the client hangs up
    assert DataRecord.objects.filter(dataset=snapshot.dataset).count() == 8
    assert b"".join(export_stream(snapshot_export_open(snapshot=snapshot, format=fmt, actor=None)))


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_an_erasure_committed_mid_stream_does_not_tear_the_file(fmt):
    """All chunks are read in one REPEATABLE READ transaction: an amendment committed by
    another connection while the file streams changes nothing in it, so the rows still
    match the Merkle root announced in the headers."""
    if connection.vendor != "postgresql":
        pytest.skip("isolation levels are PostgreSQL's")
    import threading

    dataset, snapshot = _world()
    before = _expected(snapshot)
    export = snapshot_export_open(snapshot=snapshot, format=fmt, actor=None)
    stream = export_stream(export, chunk_size=2)
    parts = [next(stream)]

    def erase() -> None:
        try:
            _erase_from_snapshots("dave@example.org")  # dave's rows come last in record id order
        finally:
            connection.close()

    worker = threading.Thread(target=erase)
    worker.start()
    worker.join()
    parts.extend(stream)
    assert selectors.snapshot_amendment_count(snapshot_id=snapshot.pk) == 1  # it did commit
    rows = _parse(fmt, b"".join(parts))
    assert rows == before and len(rows) == export.records == 8
    leaves = [(r["record_id"], content_hash({k: r[k] for k in COLUMNS[1:-1]}, r["outcome"])) for r in rows]
    assert merkle_root_independent(leaves) == export.merkle_root == snapshot.merkle_root


def test_an_amendment_after_the_headers_stops_the_stream(world):
    _, snapshot = world
    export = snapshot_export_open(snapshot=snapshot, format="csv", actor=None)
    _erase_from_snapshots("carol@example.org")
    with pytest.raises(SnapshotChangedError):
        b"".join(export_stream(export))


def test_every_export_is_audited(ml_client, world):
    _, snapshot = world
    for fmt in ("csv", "jsonl"):
        _body(ml_client.get(f"/api/v1/snapshots/{snapshot.pk}/export/?format={fmt}"))
    events = list(AuditEvent.objects.filter(action="snapshot.exported", object_id=str(snapshot.pk)).order_by("position"))
    assert [e.details["format"] for e in events] == ["csv", "jsonl"]
    assert {e.actor for e in events} == {ml_client.user.username}
    assert all(e.details["records"] == 8 and e.details["merkle_root"] == snapshot.merkle_root for e in events)


def test_bad_format_unknown_snapshot_and_the_auditor_are_refused(ml_client, auditor_client, world):
    _, snapshot = world
    response = ml_client.get(f"/api/v1/snapshots/{snapshot.pk}/export/?format=xlsx")
    assert response.status_code == 400 and "format" in response.json()
    assert ml_client.get("/api/v1/snapshots/999999/export/").status_code == 404
    assert auditor_client.get(f"/api/v1/snapshots/{snapshot.pk}/export/").status_code == 403
    assert not AuditEvent.objects.filter(action="snapshot.exported").exists()


def test_a_person_who_withdrew_since_stops_the_export(ml_client, world):
    _, snapshot = world
    consent("dave@example.org", CODE, "withdrawn", timezone.now() - timedelta(seconds=1))
    response = ml_client.get(f"/api/v1/snapshots/{snapshot.pk}/export/?format=csv")
    assert response.status_code == 409
    assert response.json()["no_longer_covered"] == 1
    assert not AuditEvent.objects.filter(action="snapshot.exported").exists()


def test_a_reconstruction_is_not_exported(dpo_client, world):
    dataset, _ = world
    past = services.snapshot_create(dataset=dataset, purpose=purpose(CODE), at=timezone.now() - timedelta(days=1))
    response = dpo_client.get(f"/api/v1/snapshots/{past.pk}/export/")
    assert response.status_code == 409 and "reconstruction" in response.json()["detail"]


TRICKY_SCHEMA = {
    "features": [
        {"name": "note.text", "type": "category"},
        {"name": "x-value", "type": "float"},
        {"name": "count", "type": "int"},
    ],
    "label": {"name": "score", "type": "float"},
}
TRICKY = [
    ('comma, "quote"', 1e300, -(2**62), 5e-324),
    ("line\nbreak", 0.0, 0, 0.1 + 0.2),
    ("ünïcödé ✓", 123456789.12345679, 2**62, -1.7976931348623157e308),
    ("\\.", 2.0, 7, 1e-7),
]


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_text_and_extreme_floats_survive_every_format(ml_client, fmt):
    now = timezone.now()
    dataset = services.dataset_create(
        name=f"export tricky {now.timestamp()}", owner="ml", processing_activity=activity(), schema=TRICKY_SCHEMA
    )
    rows = [
        {"subject": f"tricky-{i}@example.org", "features": {"note.text": t, "x-value": x, "count": c}, "label": y}
        for i, (t, x, c, y) in enumerate(TRICKY)
    ]
    services.dataset_records_ingest(dataset=dataset, rows=rows, actor="test")
    for i in range(len(TRICKY)):
        consent(f"tricky-{i}@example.org", CODE, "given", now - timedelta(days=1))
    snapshot = services.snapshot_create(dataset=dataset, purpose=purpose(CODE))
    response = ml_client.get(f"/api/v1/snapshots/{snapshot.pk}/export/", {"format": fmt})
    body = _body(response)
    names = ["record_id", "note.text", "x-value", "count", "score"]
    if fmt == "parquet":
        got = pq.read_table(io.BytesIO(body)).to_pylist()
    elif fmt == "jsonl":
        got = [json.loads(line) for line in body.decode("utf-8").splitlines()]
    else:
        reader = csv.DictReader(io.StringIO(body.decode("utf-8"), newline=""))
        assert reader.fieldnames == names
        got = [{"record_id": int(r["record_id"]), "note.text": r["note.text"], "x-value": float(r["x-value"]),
                "count": int(r["count"]), "score": float(r["score"])} for r in reader]
    assert [list(r) for r in got] == [names] * len(TRICKY)
    assert [(r["note.text"], r["x-value"], r["count"], r["score"]) for r in got] == TRICKY
    leaves = [
        (r["record_id"], content_hash({k: r[k] for k in names[1:-1]}, r["score"])) for r in got
    ]
    assert merkle_root_independent(leaves) == response["X-Ledger-Merkle-Root"] == snapshot.merkle_root
