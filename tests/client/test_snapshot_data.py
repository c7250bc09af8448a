"""A snapshot read through the client is the ledger's records, in every form the client offers."""

from __future__ import annotations

import csv
from collections.abc import Iterator

import pytest
from privacy_ledger_client import LedgerClient, LedgerError

from provenance.models import DataRecord
from tests.client.helpers import api_key
from tests.mlops.factories import make_snapshot

pytestmark = pytest.mark.integration


@pytest.fixture
def ledger(live_server) -> Iterator[LedgerClient]:
    # Closed after the test: a kept-alive connection holds a live-server thread and its
    # database session past the test database's teardown.
    with LedgerClient(live_server.url, api_key("ml_engineer")) as client:
        yield client


def test_the_frame_the_tensors_and_the_csv_hold_the_records_values(ledger, tmp_path):
    snapshot = make_snapshot(n=12, d=3, health_condition=True)
    records = {r.pk: r for r in DataRecord.objects.filter(dataset_id=snapshot.dataset_id)}

    frame = ledger.snapshot_frame(snapshot.pk)
    assert list(frame.columns) == ["record_id", "x0", "x1", "x2", "condition", "y"]
    assert frame["record_id"].tolist() == sorted(records)
    assert frame.attrs["ledger"]["merkle_root"] == snapshot.merkle_root and frame.attrs["ledger"]["records"] == 12
    first = records[int(frame["record_id"][0])]
    assert frame["x1"][0] == first.features["x1"] and frame["condition"][0] == first.features["condition"]

    data = ledger.snapshot_dataset(snapshot.pk)  # the Merkle root recomputed from the rows
    assert data.columns == ["x0", "x1", "x2", "condition=none", "condition=diabetes"]
    assert data.record_ids == sorted(records) and data.merkle_root == snapshot.merkle_root
    row = data.features[0].tolist()
    assert row[:3] == pytest.approx([first.features[f"x{j}"] for j in range(3)])
    assert row[3:] == ([1.0, 0.0] if first.features["condition"] == "none" else [0.0, 1.0])
    assert data.labels.tolist() == [records[r].label for r in data.record_ids]

    export = ledger.export_snapshot(snapshot.pk, "csv", tmp_path)
    assert export.path == tmp_path / f"snapshot-{snapshot.pk}.csv" and export.records == 12
    with open(export.path, newline="") as handle:
        assert next(csv.reader(handle)) == ["record_id", "x0", "x1", "x2", "condition", "y"]


def test_snapshots_are_listed_and_an_unknown_one_is_a_404(ledger):
    snapshot = make_snapshot(n=4, d=2)
    assert snapshot.pk in {s["id"] for s in ledger.snapshots()}
    assert ledger.snapshot(snapshot.pk)["current_merkle_root"] == snapshot.merkle_root
    with pytest.raises(LedgerError) as unknown:
        ledger.export_snapshot(snapshot.pk + 10_000, "jsonl")
    assert unknown.value.status == 404
