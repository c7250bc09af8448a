"""The erasure admin: deadline ordering with days left, impact before execution, actions via services."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from governance.models import AuditEvent
from rights import services
from rights.models import ErasureRequest
from tests.rights import helpers as h

CHANGELIST = "/admin/rights/erasurerequest/"


@pytest.mark.django_db
def test_changelist_orders_by_deadline_and_highlights_overdue(admin_client):
    h.subject_for("late@example.org")
    h.subject_for("fresh@example.org")
    fresh = services.erasure_request_receive(identifier="fresh@example.org", ground="17_1_a")
    late = services.erasure_request_receive(
        identifier="late@example.org", ground="17_1_a", received_at=timezone.now() - timedelta(days=50)
    )
    page = admin_client.get(CHANGELIST).content.decode()
    assert page.index(f">Request {late.pk}<") < page.index(f">Request {fresh.pk}<")
    assert "OVERDUE by" in page


@pytest.mark.django_db
def test_request_page_shows_the_impact_before_execution(admin_client):
    alice = h.subject_for("alice@example.org")
    ds = h.dataset_with_records(act=h.activity(), rows=[(alice, {"x0": 1.0, "x1": 0.0}, 1)])
    h.snapshot_of(ds)
    request = services.erasure_request_receive(identifier="alice@example.org", ground="17_1_a")
    page = admin_client.get(f"{CHANGELIST}{request.pk}/change/").content.decode()
    assert f'<a href="/admin/provenance/dataset/{ds.pk}/change/">{ds.name}</a>' in page
    assert "<strong>1</strong> record<" in page and alice.pseudonym not in page


@pytest.mark.django_db
def test_admin_steps_go_through_the_services(admin_client):
    h.subject_for("alice@example.org")
    request = services.erasure_request_receive(identifier="alice@example.org", ground="17_1_a")
    response = admin_client.post(f"{CHANGELIST}{request.pk}/verify/", {"method": "Identity document seen in person"},
                                 follow=True)
    assert f"Request {request.pk}: identity verified" in response.content.decode()
    assert AuditEvent.objects.filter(action="erasure_request.verified", object_id=str(request.pk)).exists()
    # Rejecting without a justification is refused and changes nothing.
    response = admin_client.post(f"{CHANGELIST}{request.pk}/reject/", {"refusal_ground": "17_3_e"})
    assert response.status_code == 400 and "This field is required" in response.content.decode()
    assert ErasureRequest.objects.get(pk=request.pk).status == "verified"
    admin_client.post(f"{CHANGELIST}{request.pk}/reject/", {
        "refusal_ground": "17_3_e", "justification": "Evidence in pending litigation.",
    })
    assert ErasureRequest.objects.get(pk=request.pk).status == "rejected"
