"""PDF reports: parsed back with pypdf to find each required section and the right numbers;
report jobs through the API; a bounded number of queries whatever the data size."""

from __future__ import annotations

import csv
import hashlib
import io
import time

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from assessments.reports import evidence as report_evidence
from assessments.reports.model_lineage import model_lineage_report_data, model_lineage_report_render
from governance.models import AuditEvent, ReportJob
from governance.reports import selectors as report_selectors
from governance.reports.ropa import ropa_report_render
from tests.governance.reports_helpers import AUC, EPSILON, TPR_1PCT, complete_payload, make_world, pdf_text


def _signed_dpia(client, world) -> dict:
    dpia = client.post(
        "/api/v1/dpias/", {"processing_activity": world.activity.pk, "model_version_ids": [world.model_version.pk]}, format="json"
    ).json()
    answers = [{"criterion": a["criterion"], "answer": a["proposed"]} for a in dpia["screening"]]
    client.post(f"/api/v1/dpias/{dpia['id']}/screening/", {"answers": answers}, format="json")
    client.post(
        f"/api/v1/dpias/{dpia['id']}/risks/",
        {"description": "Re-identification through model outputs", "likelihood": "probable", "severity": "severe",
         "mitigations": "DP-SGD", "residual_likelihood": "remote", "residual_severity": "significant"},
        format="json",
    )
    client.patch(f"/api/v1/dpias/{dpia['id']}/", complete_payload(), format="json")
    response = client.post(f"/api/v1/dpias/{dpia['id']}/sign/")
    assert response.status_code == 200, response.content
    return response.json()


@pytest.mark.django_db
def test_dpia_pdf_has_every_section_and_the_evidence(dpo_client, auditor_client):
    world = make_world(n_subjects=5, records_per_subject=3)
    dpia = _signed_dpia(dpo_client, world)
    response = auditor_client.post(f"/api/v1/dpias/{dpia['id']}/report/")
    assert response.status_code == 201
    assert response["Content-Type"] == "application/pdf"
    content = b"".join(response.streaming_content)
    assert response["X-Content-SHA256"] == hashlib.sha256(content).hexdigest()
    text = pdf_text(content)
    for section in (
        "Screening (WP248 rev.01 criteria)",
        "Systematic description of the processing (Art. 35(7)(a))",
        "Necessity and proportionality (Art. 35(7)(b))",
        "Risks to the rights and freedoms of data subjects (Art. 35(7)(c))",
        "Measures to address the risks (Art. 35(7)(d))",
        "Advice of the data protection officer (Art. 35(2))",
        "Views of data subjects (Art. 35(9))",
        "Lineage: processing activity → dataset → snapshot → training run → model",
        "Privacy-budget ledger",
        "Inherent risk",
        "Residual risk",
        "ε spent per epoch",
        "Membership-inference ROC",
    ):
        assert section in text, section
    assert f"{EPSILON:.3f}" in text  # ε of the covered model
    assert f"{AUC:.2f}" in text and f"{TPR_1PCT:.2f}" in text
    assert "Data subjects (distinct) 5" in text and "Records 15" in text
    assert dpia["review_date"] in text
    assert "Signed by test_dpo" in text or "test_dpo" in text
    assert "Audit chain verified" in text
    assert world.derived.name in text and world.datasets[0].name in text
    job = ReportJob.objects.get(kind="dpia", object_id=dpia["id"])
    assert job.status == "succeeded" and job.sha256 == response["X-Content-SHA256"]
    assert AuditEvent.objects.filter(action="report.generated", object_id=str(job.pk)).exists()


@pytest.mark.django_db
def test_ropa_pdf_and_csv_have_every_article_30_field(auditor_client, tmp_path):
    world = make_world(with_model=False)
    render_path = tmp_path / "ropa.pdf"
    digest = ropa_report_render(path=render_path)
    assert digest == hashlib.sha256(render_path.read_bytes()).hexdigest()
    text = pdf_text(render_path.read_bytes())
    for heading in (
        "30(1)(a) Controller and contacts", "30(1)(b) Purposes of the processing",
        "30(1)(c) Categories of data subjects and of personal data", "30(1)(d) Categories of recipients",
        "30(1)(e) Transfers to third countries and safeguards", "30(1)(f) Time limits for erasure",
        "30(1)(g) Technical and organisational security measures",
    ):
        assert heading in text, heading
    for value in (
        world.activity.name, "St. Example Hospital", "dpo@example-hospital.test", "Example Research Institute",
        "EU Rep Ltd, Dublin", world.purpose.code, "patients", "Health data", "Research partner",
        "Standard contractual clauses", "10 year(s)", "1 year(s)", "encryption at rest",
    ):
        assert value in text, value

    response = auditor_client.get("/api/v1/reports/ropa.csv")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    row = next(r for r in rows if r["name"] == world.activity.name)
    assert row["purposes"] == world.purpose.code
    assert row["special_categories"] == "health (Health data)"
    assert row["third_country_transfers"] == "United States: Standard contractual clauses (Art. 46(2)(c))"
    assert row["retention"] == "contact: 1 year(s); health: 10 year(s)"
    assert row["recipients"] == "Cloud hosting processor; Research partner (United States)"


@pytest.mark.django_db
def test_model_lineage_pdf(tmp_path):
    world = make_world()
    path = tmp_path / "card.pdf"
    model_lineage_report_render(object_id=world.model_version.pk, path=path)
    text = pdf_text(path.read_bytes())
    for expected in (
        "Model lineage report", "Upstream lineage", "Snapshot and Merkle roots", "Differential-privacy guarantee",
        "Membership-inference audit", "Remediation history", world.derived.name, world.datasets[0].name,
        world.datasets[1].name, "ancestor (generation 1)", "ab" * 32, f"ε = {EPSILON:.3f}", f"{AUC:.2f}",
        f"{TPR_1PCT:.2f}", "Clipping norm", "1.2",
    ):
        assert expected in text, expected


@pytest.mark.django_db
def test_report_requests_validate_kind_and_object(auditor_client, ml_client):
    response = auditor_client.post("/api/v1/reports/", {"kind": "dpia", "object_id": 999999}, format="json")
    assert response.status_code == 400 and "999999" in response.json()["object_id"][0]
    response = auditor_client.post("/api/v1/reports/", {"kind": "horoscope"}, format="json")
    assert response.status_code == 400 and "kind" in response.json()
    response = auditor_client.post("/api/v1/reports/", {"kind": "model-lineage"}, format="json")
    assert response.status_code == 400 and "object_id" in response.json()
    response = auditor_client.post("/api/v1/reports/", {"kind": "erasure-certificate", "object_id": 999999}, format="json")
    assert response.status_code == 400 and "object_id" in response.json()
    assert ml_client.post("/api/v1/reports/", {"kind": "ropa"}, format="json").status_code == 403
    assert not ReportJob.objects.exists()


@pytest.mark.django_db
def test_engineer_requests_and_reads_only_model_lineage(ml_client, auditor_client):
    world = make_world()
    response = ml_client.post("/api/v1/reports/", {"kind": "model-lineage", "object_id": world.model_version.pk}, format="json")
    assert response.status_code == 202
    auditor_client.post("/api/v1/reports/", {"kind": "ropa"}, format="json")
    kinds = {j["kind"] for j in ml_client.get("/api/v1/reports/").json()["results"]}
    assert kinds == {"model-lineage"}


@pytest.mark.django_db
def test_job_run_is_idempotent(auditor_client):
    from governance.reports.jobs import report_job_run

    make_world(with_model=False)
    job_id = auditor_client.post("/api/v1/reports/", {"kind": "ropa"}, format="json").json()["id"]
    # Non-transactional test: on_commit never fires, so the job is still queued here.
    assert ReportJob.objects.get(pk=job_id).status == "queued"
    first = report_job_run(job_id=job_id)
    assert first.status == "succeeded"
    again = report_job_run(job_id=job_id)
    assert (again.sha256, again.finished_at) == (first.sha256, first.finished_at)
    assert AuditEvent.objects.filter(action="report.generated", object_id=str(job_id)).count() == 1


def _count_queries(fn) -> int:
    with CaptureQueriesContext(connection) as ctx:
        fn()
    return len(ctx.captured_queries)


@pytest.mark.django_db
def test_report_queries_are_bounded_independent_of_data_size(dpo_client):
    small, large = make_world(n_subjects=2, records_per_subject=1), make_world(n_subjects=30, records_per_subject=4)
    dpias = {}
    for world in (small, large):
        dpias[world] = dpo_client.post(
            "/api/v1/dpias/", {"processing_activity": world.activity.pk, "model_version_ids": [world.model_version.pk]}, format="json"
        ).json()["id"]
        for i in range(2 if world is small else 6):
            dpo_client.post(f"/api/v1/dpias/{dpias[world]}/risks/", {"description": f"risk {i}", "likelihood": "possible", "severity": "minimal"}, format="json")
    counts = {}
    for world in (small, large):
        counts[world] = (
            _count_queries(lambda w=world: report_evidence.dpia_report_data(dpia_id=dpias[w])),
            _count_queries(lambda w=world: model_lineage_report_data(model_version_id=w.model_version.pk)),
        )
    assert counts[small] == counts[large], counts
    assert counts[small][0] <= 25 and counts[small][1] <= 15
    # The record of processing: all activities, whatever their number.
    one = _count_queries(lambda: report_selectors.ropa_entries(activity_ids=[small.activity.pk]))
    every = _count_queries(lambda: report_selectors.ropa_entries())
    assert one == every == 4


@pytest.mark.django_db(transaction=True)
def test_report_through_the_celery_worker_end_to_end(celery_worker, role_client):
    auditor = role_client("auditor")
    world = make_world(with_model=True)
    response = auditor.post("/api/v1/reports/", {"kind": "model-lineage", "object_id": world.model_version.pk}, format="json")
    assert response.status_code == 202, response.content
    job_id = response.json()["id"]
    deadline = time.monotonic() + 60
    while True:
        body = auditor.get(f"/api/v1/reports/{job_id}/").json()
        if body["status"] in ("succeeded", "failed") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert body["status"] == "succeeded", body
    download = auditor.get(body["download_url"])
    assert download.status_code == 200
    content = b"".join(download.streaming_content)
    assert hashlib.sha256(content).hexdigest() == body["sha256"]
    text = pdf_text(content)
    assert world.model_version.name in text and f"ε = {EPSILON:.3f}" in text
    actions = list(AuditEvent.objects.filter(object_type="report_job", object_id=str(job_id)).values_list("action", flat=True))
    assert actions == ["report.requested", "report.generated"]


@pytest.mark.django_db
def test_erasure_certificate_job_hands_out_the_certificate_written_by_the_toolkit(auditor_client, settings):
    from pathlib import Path

    from django.utils import timezone

    from governance.reports import toolkit
    from governance.reports.jobs import report_job_run
    from rights.models import ErasureRequest

    request = ErasureRequest.objects.create(
        identifier_receipt_hash="0" * 64, channel="email", received_at=timezone.now(), ground="17_1_b",
        due_at=timezone.localdate(),
    )
    response = auditor_client.post("/api/v1/reports/", {"kind": "erasure-certificate", "object_id": request.pk}, format="json")
    assert response.status_code == 400 and "no certificate yet" in response.json()["object_id"][0]

    relative = f"erasure/erasure-certificate-{request.pk}.pdf"
    digest = toolkit.render_pdf(
        Path(settings.REPORT_ROOT) / relative, toolkit.title_block("Certificate of erasure", facts=[("Erasure request", request.pk)]),
        title="Certificate of erasure",
    )
    request.certificate_path = relative
    request.save(update_fields=["certificate_path"])
    job_id = auditor_client.post("/api/v1/reports/", {"kind": "erasure-certificate", "object_id": request.pk}, format="json").json()["id"]
    job = report_job_run(job_id=job_id)
    assert job.status == "succeeded" and job.sha256 == digest
    download = auditor_client.get(f"/api/v1/reports/{job_id}/download/")
    assert "Certificate of erasure" in pdf_text(b"".join(download.streaming_content))
