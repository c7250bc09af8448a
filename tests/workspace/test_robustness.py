"""The site's front door and read-only pages: "/" and "View site" lead to the workspace, and a
page with nothing to edit has no Save button and records no change when posted to."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.contrib.admin.models import LogEntry
from django.contrib.auth import get_user_model
from django.contrib.messages import get_messages
from django.contrib.messages.storage.fallback import FallbackStorage
from django.contrib.sessions.backends.db import SessionStore
from django.test import RequestFactory

from governance import services
from governance.admin_mixins import NOTHING_CHANGED, ModelAdmin
from governance.models import AuditEvent, Purpose


@pytest.mark.django_db
def test_the_root_leads_to_the_workspace_and_the_api_stays_where_it_is(client, admin_client):
    root = client.get("/")
    assert root.status_code == 302 and root["Location"] == "/admin/"
    assert client.get("/", follow=True).redirect_chain[-1][0].startswith("/admin/login/")
    assert client.get("/healthz").status_code == 200
    assert client.get("/api/v1/no-such-endpoint/").status_code == 404
    # "View site" in the header goes to "/", which now answers.
    page = admin_client.get("/admin/").content.decode()
    assert 'href="/"' in page
    assert admin_client.get("/", follow=True).status_code == 200


@pytest.mark.django_db
def test_a_read_only_page_has_no_save_button_and_a_post_changes_nothing(admin_client):
    event = services.audit_event_record(actor="system", action="test.read_only_page")
    url = f"/admin/governance/auditevent/{event.pk}/change/"
    page = admin_client.get(url)
    assert page.status_code == 200
    html = page.content.decode()
    assert 'name="_save"' not in html and 'name="_continue"' not in html
    assert "Close" in html
    before = LogEntry.objects.count()
    posted = admin_client.post(url, {"_save": "Save", "action": "tampered"})
    assert posted.status_code == 302 and posted["Location"] == url
    assert [str(m) for m in get_messages(posted.wsgi_request)] == [NOTHING_CHANGED]
    assert LogEntry.objects.count() == before, "a read-only page recorded a change"
    assert AuditEvent.objects.get(pk=event.pk).action == "test.read_only_page"


def _request(method: str, user, data=None):
    factory = RequestFactory()
    request = factory.post("/x/", data or {}) if method == "POST" else factory.get("/x/")
    request.user = user
    request.session = SessionStore()
    request._messages = FallbackStorage(request)
    return request


class _AllReadOnlyPurposeAdmin(ModelAdmin):
    fields = ["code", "name"]
    readonly_fields = ["code", "name"]


class _EditablePurposeAdmin(ModelAdmin):
    fields = ["code", "name"]
    readonly_fields = ["code"]


@pytest.mark.django_db
def test_any_admin_whose_fields_are_all_read_only_shows_no_save_and_records_no_change():
    user = get_user_model().objects.create_superuser("ro-admin", "ro@example.org", "pw")
    purpose = Purpose.objects.create(code="ws.read_only", name="Read only")
    read_only = _AllReadOnlyPurposeAdmin(Purpose, admin.site)
    editable = _EditablePurposeAdmin(Purpose, admin.site)
    assert read_only.change_form_is_read_only(_request("GET", user), purpose)
    assert not editable.change_form_is_read_only(_request("GET", user), purpose)

    page = read_only.changeform_view(_request("GET", user), str(purpose.pk))
    page.render()
    assert 'name="_save"' not in page.content.decode()
    page = editable.changeform_view(_request("GET", user), str(purpose.pk))
    page.render()
    assert 'name="_save"' in page.content.decode()

    request = _request("POST", user, {"_save": "Save"})
    answer = read_only.changeform_view(request, str(purpose.pk))
    assert answer.status_code == 302
    assert [str(m) for m in get_messages(request)] == [NOTHING_CHANGED]
    assert not LogEntry.objects.filter(object_id=str(purpose.pk)).exists()
