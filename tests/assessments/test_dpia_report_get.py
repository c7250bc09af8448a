"""Issue 14, item 9: reading a DPIA's report writes nothing. POST renders it (a report job,
a stored PDF, report.generated in the audit chain); GET serves that rendering, or says why
it cannot (never rendered, or the DPIA changed since)."""

from __future__ import annotations

import hashlib

import pytest

from governance.models import AuditEvent, ReportJob
from tests.governance.reports_helpers import make_world
from tests.test_reports import _signed_dpia


def _writes():
    return ReportJob.objects.count(), AuditEvent.objects.count()


@pytest.mark.django_db
def test_get_serves_the_last_rendering_and_writes_nothing(dpo_client, auditor_client):
    world = make_world(n_subjects=3, records_per_subject=2)
    dpia = _signed_dpia(dpo_client, world)
    url = f"/api/v1/dpias/{dpia['id']}/report/"

    before = _writes()
    missing = auditor_client.get(url)
    assert missing.status_code == 404
    assert "POST" in missing.json()["detail"]
    assert _writes() == before

    rendered = auditor_client.post(url)
    assert rendered.status_code == 201
    content = b"".join(rendered.streaming_content)
    assert rendered["X-Content-SHA256"] == hashlib.sha256(content).hexdigest()
    after_render = _writes()
    assert after_render[0] == before[0] + 1
    assert AuditEvent.objects.filter(action="report.generated").count() == 1

    for _ in range(3):
        again = auditor_client.get(url)
        assert again.status_code == 200
        assert again["Content-Type"] == "application/pdf"
        assert b"".join(again.streaming_content) == content
    assert _writes() == after_render


@pytest.mark.django_db
def test_get_after_the_dpia_changed_points_to_post(dpo_client, auditor_client):
    world = make_world(n_subjects=3, records_per_subject=2)
    dpia = dpo_client.post(
        "/api/v1/dpias/", {"processing_activity": world.activity.pk, "models_used_for_decisions": False}, format="json"
    ).json()
    url = f"/api/v1/dpias/{dpia['id']}/report/"
    assert dpo_client.post(url).status_code == 201
    assert dpo_client.patch(f"/api/v1/dpias/{dpia['id']}/", {"measures": "Pseudonymised keys."}, format="json").status_code == 200

    before = _writes()
    stale = auditor_client.get(url)
    assert stale.status_code == 409
    assert "changed" in stale.json()["detail"] and "POST" in stale.json()["detail"]
    assert _writes() == before
    assert dpo_client.post(url).status_code == 201
    assert auditor_client.get(url).status_code == 200


@pytest.mark.django_db
def test_only_dpo_and_auditor_render_or_read_it(dpo_client, ml_client):
    world = make_world(n_subjects=3, records_per_subject=2)
    dpia = _signed_dpia(dpo_client, world)
    url = f"/api/v1/dpias/{dpia['id']}/report/"
    assert ml_client.post(url).status_code == 403
    assert ml_client.get(url).status_code == 403
