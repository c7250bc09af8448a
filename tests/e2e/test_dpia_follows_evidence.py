"""End to end: a signed DPIA covering a really trained DP model is marked for review when an
erasure taints that model, and its PDF, rendered by the worker, carries the real ε and the
review reason."""

from __future__ import annotations

import io
import time
from datetime import timedelta

import pytest
from django.utils import timezone
from pypdf import PdfReader

from assessments.models import Dpia, DpiaStatus
from governance.models import AuditEvent
from mlops.models import ModelVersion
from rights import execution
from tests.rights import helpers as h

DAVE = "dave@example.org"


def _wait(client, job_id: int) -> dict:
    deadline = time.monotonic() + 90
    while True:
        body = client.get(f"/api/v1/reports/{job_id}/").json()
        if body["status"] in ("succeeded", "failed") or time.monotonic() > deadline:
            return body
        time.sleep(0.2)


@pytest.mark.django_db(transaction=True)
def test_erasure_taint_sends_signed_dpia_to_review_and_report_shows_it(celery_worker, role_client):
    dpo, auditor = role_client("dpo"), role_client("auditor")
    dave = h.subject_for(DAVE)
    act = h.activity()
    snap = h.snapshot_of(h.people_dataset(act=act, people=[dave, *h.crowd(30)], records_per_person=2))
    version = ModelVersion.objects.get(training_run=h.train(snapshot=snap, name="triage"))
    assert version.epsilon is not None

    dpia = dpo.post("/api/v1/dpias/", {"processing_activity": act.pk, "model_version_ids": [version.pk]}, format="json").json()
    answers = [{"criterion": a["criterion"], "answer": a["proposed"]} for a in dpia["screening"]]
    assert dpo.post(f"/api/v1/dpias/{dpia['id']}/screening/", {"answers": answers}, format="json").status_code == 200
    dpo.post(
        f"/api/v1/dpias/{dpia['id']}/risks/",
        {"description": "Membership inference", "likelihood": "possible", "severity": "significant", "mitigations": "DP-SGD"},
        format="json",
    )
    dpo.patch(
        f"/api/v1/dpias/{dpia['id']}/",
        {"necessity_and_proportionality": "Four features only.", "dpo_advice": "Proceed.",
         "views_not_sought_reason": "Panel consulted.", "review_date": (timezone.localdate() + timedelta(days=90)).isoformat()},
        format="json",
    )
    assert dpo.post(f"/api/v1/dpias/{dpia['id']}/sign/").status_code == 200

    from rights import services as erasure_services
    from rights.models import ErasureRequest, ErasureStatus

    request = erasure_services.erasure_request_receive(identifier=DAVE, ground="17_1_a")
    erasure_services.erasure_request_verify(erasure_request=request, method="signed letter")
    ErasureRequest.objects.filter(pk=request.pk).update(status=ErasureStatus.IN_PROGRESS, execution_started_at=timezone.now())
    assert execution.erasure_request_execute(request_id=request.pk)["status"] == "completed"

    reviewed = Dpia.objects.get(pk=dpia["id"])
    assert reviewed.status == DpiaStatus.REVIEW_REQUIRED
    assert f"tainted by erasure request {request.pk}" in reviewed.review_reason
    assert AuditEvent.objects.filter(action="dpia.marked_for_review").count() == 1

    job = auditor.post("/api/v1/reports/", {"kind": "dpia", "object_id": dpia["id"]}, format="json").json()
    body = _wait(auditor, job["id"])
    assert body["status"] == "succeeded", body
    content = b"".join(auditor.get(body["download_url"]).streaming_content)
    text = " ".join(" ".join(p.extract_text() for p in PdfReader(io.BytesIO(content)).pages).split())
    assert f"{version.epsilon:.3f}" in text
    assert "Review required (evidence changed since signing)" in text
    assert f"tainted by erasure request {request.pk}" in text
