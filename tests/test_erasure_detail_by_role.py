"""Issue 14, item 11: ML engineers learn that a snapshot or a model changed, and when, but not
which erasure request changed it or why; the DPO and the auditor keep the detail."""

from __future__ import annotations

import json

import pytest

from mlops.models import ModelStatus, RunStatus
from provenance.models import AmendmentReason, SnapshotAmendment
from tests.governance.reports_helpers import make_world

REQUEST_ID = 4242
REASON = f"by erasure request {REQUEST_ID}: trained on data since erased (Art. 17)"


@pytest.fixture
def erased_world(db):
    world = make_world(n_subjects=3, records_per_subject=2)
    amendment = SnapshotAmendment.objects.create(
        snapshot=world.snapshot, reason=AmendmentReason.ERASURE, erasure_request_id=REQUEST_ID, sequence=1,
        records_removed=2, subjects_removed=1, previous_root="a" * 64, new_root="b" * 64,
    )
    mv = world.model_version
    mv.status, mv.status_reason = ModelStatus.TAINTED, REASON
    mv.save(update_fields=["status", "status_reason"])
    run = world.run
    run.status, run.error = RunStatus.CANCELLED, "cancelled by erasure-worker"
    run.save(update_fields=["status", "error"])
    return world, amendment


def _leaks(text: str) -> list[str]:
    return [word for word in ("erasure", str(REQUEST_ID), "Art. 17") if word in text]


def test_an_ml_engineer_sees_that_data_changed_and_when_but_not_the_erasure(erased_world, ml_client):
    world, amendment = erased_world
    snapshot = ml_client.get(f"/api/v1/snapshots/{world.snapshot.pk}/")
    assert snapshot.status_code == 200
    [shown] = snapshot.json()["amendments"]
    assert shown["reason"] == "members_removed" and shown["erasure_request_id"] is None
    assert shown["created_at"] and shown["records_removed"] == 2 and shown["new_root"] == "b" * 64

    model = ml_client.get(f"/api/v1/models/{world.model_version.pk}/").json()
    assert model["status"] == "tainted"
    assert model["status_reason"] == "Its training data changed after this version was trained."
    assert model["training_data_changed_at"] == shown["created_at"]
    listed = ml_client.get("/api/v1/models/").json()["results"]
    assert _leaks(json.dumps(listed)) == []

    run = ml_client.get(f"/api/v1/training-runs/{world.run.pk}/").json()
    assert _leaks(run["error"]) == [] and "changed" in run["error"]

    for url in (
        f"/api/v1/snapshots/{world.snapshot.pk}/prov/",
        f"/api/v1/datasets/{world.snapshot.dataset_id}/prov/",
        f"/api/v1/lineage/models/{world.model_version.pk}/prov/",
    ):
        response = ml_client.get(url)
        assert response.status_code == 200, url
        text = response.content.decode()
        assert "membership amendment" in text, url
        assert _leaks(text) == [], (url, _leaks(text))


@pytest.mark.parametrize("role", ["dpo", "auditor"])
def test_the_dpo_and_the_auditor_keep_the_detail(erased_world, role_client, role):
    world, amendment = erased_world
    client = role_client(role)
    [shown] = client.get(f"/api/v1/snapshots/{world.snapshot.pk}/").json()["amendments"]
    assert shown["reason"] == "erasure" and shown["erasure_request_id"] == REQUEST_ID
    model = client.get(f"/api/v1/models/{world.model_version.pk}/").json()
    assert model["status_reason"] == REASON
    assert model["training_data_changed_at"] == shown["created_at"]
    assert client.get(f"/api/v1/training-runs/{world.run.pk}/").json()["error"] == "cancelled by erasure-worker"
    for url in (
        f"/api/v1/lineage/models/{world.model_version.pk}/prov/",
        f"/api/v1/snapshots/{world.snapshot.pk}/prov/",
        f"/api/v1/datasets/{world.snapshot.dataset_id}/prov/",
    ):
        assert "erasure amendment" in client.get(url).content.decode(), url


def test_the_model_lineage_pdf_an_ml_engineer_asks_for_names_no_erasure(erased_world, ml_client, auditor_client):
    import io

    from pypdf import PdfReader

    from governance.reports.jobs import report_file_path, report_job_run

    world, _ = erased_world

    def pdf_text(client) -> str:
        answer = client.post("/api/v1/reports/", {"kind": "model-lineage", "object_id": world.model_version.pk}, format="json")
        assert answer.status_code == 202, answer.content
        job = report_job_run(job_id=answer.json()["id"])
        assert job.status == "succeeded", job.error
        reader = PdfReader(io.BytesIO(report_file_path(job).read_bytes()))
        return " ".join(" ".join(page.extract_text() for page in reader.pages).split())

    engineer = pdf_text(ml_client)
    assert "Its training data changed after this version was trained." in engineer
    assert "Members removed" in engineer, engineer
    # The status's own label explains what "tainted" means in general; nothing names the request.
    assert str(REQUEST_ID) not in engineer and "Art. 17" not in engineer and "erasure request" not in engineer.lower()
    auditor = pdf_text(auditor_client)
    assert str(REQUEST_ID) in auditor and "Erasure" in auditor
