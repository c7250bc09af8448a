"""The daily deadline digest: each DPO gets one e-mail listing the erasure requests overdue
and due within 7 days, with links; at most once a day; sent by beat."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import mail
from django.utils import timezone

from governance import services
from governance.models import AuditEvent
from governance.roles import AUDITOR, DPO, ML_ENGINEER
from rights import digest
from rights.tasks import send_deadline_digest
from tests.workspace import helpers as h


@pytest.fixture
def dpos(db):
    User = get_user_model()
    dpo = services.user_ensure_with_role(username="dpo-anna", role=DPO)
    dpo.email = "anna@example.org"
    dpo.save()
    User.objects.create_superuser("root", "root@example.org", "pw")  # a superuser acts as DPO
    for username, role, email, active in (
        ("dpo-no-address", DPO, "", True),
        ("dpo-left", DPO, "left@example.org", False),
        ("engineer", ML_ENGINEER, "ml@example.org", True),
        ("auditor", AUDITOR, "audit@example.org", True),
    ):
        user = services.user_ensure_with_role(username=username, role=role)
        user.email, user.is_active = email, active
        user.save()
    return ["anna@example.org", "root@example.org"]


@pytest.fixture
def requests_due(db):
    day = h.today()
    return {
        "overdue": h.erasure_request(due=day - timedelta(days=3), status="verified"),
        "today": h.erasure_request(due=day),
        "in_7": h.erasure_request(due=day + timedelta(days=7), status="in_progress"),
        "extended": h.erasure_request(due=day - timedelta(days=1), extended=day + timedelta(days=2)),
        "in_8": h.erasure_request(due=day + timedelta(days=8)),
        "closed": h.erasure_request(due=day - timedelta(days=9), status="rejected", rejected=timezone.now()),
    }


def _listed(body: str) -> set[int]:
    import re

    return {int(pk) for pk in re.findall(r"- Request (\d+):", body)}


@pytest.mark.django_db
def test_each_dpo_gets_one_email_listing_overdue_and_due_soon_requests_with_links(dpos, requests_due, settings):
    settings.SITE_BASE_URL = "https://ledger.example.org"
    sent = digest.deadline_digest_send()
    assert sent == 2
    assert sorted(m.to[0] for m in mail.outbox) == sorted(dpos)
    assert all(len(m.to) == 1 and not m.cc and not m.bcc for m in mail.outbox), "a DPO saw another's address"
    message = mail.outbox[0]
    r = requests_due
    assert _listed(message.body) == {r["overdue"].pk, r["today"].pk, r["in_7"].pk, r["extended"].pk}
    overdue_part, due_part = message.body.split("Due within 7 days")
    assert _listed(overdue_part) == {r["overdue"].pk}
    assert "overdue by 3 days" in overdue_part and "due today" in due_part and "(extended), 2 days left" in due_part
    assert f"https://ledger.example.org/admin/rights/erasurerequest/{r['overdue'].pk}/change/" in message.body
    assert "https://ledger.example.org/admin/rights/erasurerequest/?deadline=overdue" in message.body
    assert message.subject.startswith("Privacy Ledger: erasure requests 1 overdue and 3 due within 7 days")
    assert message.from_email == settings.DEFAULT_FROM_EMAIL


@pytest.mark.django_db
def test_sending_twice_on_the_same_day_sends_nothing_the_second_time(dpos, requests_due):
    assert digest.deadline_digest_send() == 2
    assert digest.deadline_digest_send() == 0
    assert len(mail.outbox) == 2
    (event,) = AuditEvent.objects.filter(action=digest.SENT)
    assert event.object_id == h.today().isoformat()
    assert event.details["recipients"] == 2 and event.details["overdue"] == [requests_due["overdue"].pk]
    # The next day's digest goes out.
    assert digest.deadline_digest_send(now=timezone.now() + timedelta(days=1)) == 2
    assert len(mail.outbox) == 4


@pytest.mark.django_db
def test_a_failed_send_is_recorded_and_tried_again_the_same_day(dpos, requests_due, monkeypatch):
    class Down:
        def send_messages(self, messages):
            raise ConnectionRefusedError("the mail server did not answer")

    monkeypatch.setattr(digest, "get_connection", lambda: Down())
    with pytest.raises(ConnectionRefusedError):
        digest.deadline_digest_send()
    assert AuditEvent.objects.filter(action=digest.FAILED).count() == 1
    assert not digest.deadline_digest_already_sent(on=h.today())
    monkeypatch.undo()
    assert digest.deadline_digest_send() == 2
    assert digest.deadline_digest_already_sent(on=h.today())


@pytest.mark.django_db
def test_nothing_due_or_nobody_to_tell_sends_nothing_and_records_nothing(dpos):
    h.erasure_request(due=h.today() + timedelta(days=30))
    assert digest.deadline_digest_send() == 0
    h.erasure_request(due=h.today() - timedelta(days=1))
    get_user_model().objects.update(email="")
    assert digest.deadline_digest_send() == 0
    assert mail.outbox == [] and not AuditEvent.objects.filter(object_type=digest.OBJECT_TYPE).exists()


@pytest.mark.django_db
def test_beat_sends_it_daily_through_the_task(dpos, requests_due):
    from config.celery import app

    entry = settings.CELERY_BEAT_SCHEDULE["erasure-deadline-digest"]
    assert entry["task"] == "rights.send_deadline_digest" and entry["task"] in app.tasks
    assert entry["schedule"].hour == {settings.DEADLINE_DIGEST_HOUR} and entry["schedule"].minute == {0}
    # apply(): the task's body in this process, which sees this test's uncommitted rows (a
    # worker would not; delay().get() would wait for it for ever).
    assert send_deadline_digest.apply().get() == 2
    assert send_deadline_digest.apply().get() == 0
    assert len(mail.outbox) == 2
