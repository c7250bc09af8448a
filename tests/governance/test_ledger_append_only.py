"""The consent ledger refuses every change and deletion: ORM, API and admin."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model

from governance import services
from governance.models import AppendOnlyError, ConsentEvent
from tests.governance.consent_helpers import at, event


@pytest.fixture
def ledger_row(db) -> ConsentEvent:
    services.consent_events_ingest(
        events=[event("a@x.org", "ml.training", "given", at(0), event_id="row-1")], actor="test"
    )
    return ConsentEvent.objects.get(event_id="row-1")


def test_orm_save_of_an_existing_row_is_refused(ledger_row):
    ledger_row.action = "withdrawn"
    with pytest.raises(AppendOnlyError):
        ledger_row.save()
    assert ConsentEvent.objects.get(pk=ledger_row.pk).action == "given"


def test_queryset_update_and_delete_are_refused(ledger_row):
    with pytest.raises(AppendOnlyError):
        ConsentEvent.objects.filter(pk=ledger_row.pk).update(action="withdrawn")
    with pytest.raises(AppendOnlyError):
        ConsentEvent.objects.all().delete()
    assert ConsentEvent.objects.get(pk=ledger_row.pk).action == "given"


def test_instance_delete_is_refused(ledger_row):
    with pytest.raises(AppendOnlyError):
        ledger_row.delete()
    assert ConsentEvent.objects.filter(pk=ledger_row.pk).exists()


@pytest.mark.parametrize("method", ["put", "patch", "delete"])
def test_api_refuses_changing_or_deleting_an_event(ledger_row, dpo_client, method):
    response = getattr(dpo_client, method)(f"/api/v1/consent-events/{ledger_row.event_id}/", {"action": "withdrawn"}, format="json")
    assert response.status_code == 405
    assert ConsentEvent.objects.get(pk=ledger_row.pk).action == "given"


@pytest.fixture
def admin_client_logged_in(client, db):
    user = get_user_model().objects.create_superuser("dpo-admin", "dpo@example.org", "pw")
    client.force_login(user)
    return client


def test_admin_shows_the_event_but_cannot_add_change_or_delete_it(ledger_row, admin_client_logged_in):
    client = admin_client_logged_in
    base = "/admin/governance/consentevent/"
    view = client.get(f"{base}{ledger_row.pk}/change/")
    assert view.status_code == 200
    assert b"row-1" in view.content
    assert b'name="_save"' not in view.content
    assert client.post(f"{base}{ledger_row.pk}/change/", {"action": "withdrawn"}).status_code == 403
    assert client.get(f"{base}add/").status_code == 403
    assert client.post(f"{base}{ledger_row.pk}/delete/", {"post": "yes"}).status_code == 403
    listing = client.post(base, {"action": "delete_selected", "_selected_action": [ledger_row.pk], "post": "yes"})
    assert listing.status_code in (200, 302)
    assert ConsentEvent.objects.filter(pk=ledger_row.pk, action="given").exists()


def test_admin_search_by_raw_identifier_finds_the_person(ledger_row, admin_client_logged_in):
    client = admin_client_logged_in
    services.consent_events_ingest(events=[event("b@x.org", "ml.training", "given", at(0), event_id="row-2")], actor="t")
    found = client.get("/admin/governance/consentevent/", {"q": " A@X.org"})
    assert b"row-1" in found.content and b"row-2" not in found.content
    subjects = client.get("/admin/governance/datasubject/", {"q": "a@x.org"})
    assert subjects.status_code == 200
    assert ledger_row.subject.pseudonym.encode() in subjects.content
    assert b"1 result" in subjects.content


def test_admin_subject_page_shows_consent_history_per_purpose(ledger_row, admin_client_logged_in):
    services.consent_events_ingest(events=[event("a@x.org", "ml.training", "withdrawn", at(5))], actor="t")
    page = admin_client_logged_in.get(f"/admin/governance/datasubject/{ledger_row.subject_id}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "ml.training" in html
    assert "consent was withdrawn" in html
    # Moments as people read them ("2 Jan 2025, 10:00 UTC"), never ISO timestamps.
    assert len(re.findall(r"<tr><td>\d{1,2} Jan 2025, \d\d:\d\d UTC", html)) == 2
