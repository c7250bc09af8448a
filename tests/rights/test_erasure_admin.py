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
    assert page.index(f">{late.pk}<") < page.index(f">{fresh.pk}<")
    assert "overdue by" in page


@pytest.mark.django_db
def test_request_page_shows_the_impact_before_execution(admin_client):
    alice = h.subject_for("alice@example.org")
    ds = h.dataset_with_records(act=h.activity(), rows=[(alice, {"x0": 1.0, "x1": 0.0}, 1)])
    h.snapshot_of(ds)
    request = services.erasure_request_receive(identifier="alice@example.org", ground="17_1_a")
    page = admin_client.get(f"{CHANGELIST}{request.pk}/change/").content.decode()
    assert f"dataset {ds.pk} ({ds.name}): 1 record(s)" in page
    assert "1 record(s)" in page and alice.pseudonym not in page


@pytest.mark.django_db
def test_admin_actions_go_through_the_services(admin_client):
    h.subject_for("alice@example.org")
    request = services.erasure_request_receive(identifier="alice@example.org", ground="17_1_a")
    response = admin_client.post(CHANGELIST, {"action": "verify", "_selected_action": [request.pk]}, follow=True)
    assert "1 request(s) verified" in response.content.decode()
    assert AuditEvent.objects.filter(action="erasure_request.verified", object_id=str(request.pk)).exists()
    # Rejecting without a justification is refused by the service and changes nothing.
    response = admin_client.post(
        CHANGELIST, {"action": "reject", "_selected_action": [request.pk], "refusal_ground": "17_3_e"}, follow=True
    )
    assert "justification is required" in response.content.decode()
    assert ErasureRequest.objects.get(pk=request.pk).status == "verified"
    response = admin_client.post(CHANGELIST, {
        "action": "reject", "_selected_action": [request.pk], "refusal_ground": "17_3_e",
        "justification": "Evidence in pending litigation.",
    }, follow=True)
    assert ErasureRequest.objects.get(pk=request.pk).status == "rejected"
