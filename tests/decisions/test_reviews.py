"""Contesting a decision (Art. 22(3)): the review reaches a reviewer with its Art. 12(3)
deadline, the reviewer's outcome and reasons are recorded once, in the audit chain and in
the admin (issue 19 item 5)."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import pytest
from django.utils import timezone

from decisions.models import Decision, DecisionReview, ReviewStatus
from decisions.services import decisions_make, review_due_date
from governance.models import AuditEvent, DataSubject
from governance.pseudonymisation import pseudonymise
from tests.decisions.helpers import row, trained_version

pytestmark = pytest.mark.django_db


@pytest.fixture
def decision() -> Decision:
    version = trained_version()
    # A person the controller knows: the audit events refer to them by their random reference.
    DataSubject.objects.create(pseudonym=pseudonymise("carol@example.org"))
    answer = decisions_make(model_version=version, rows=[row(0), row(1)], subjects=["carol@example.org", None],
                            explain=True)
    return Decision.objects.select_related("model_version").get(pk=answer["decisions"][0]["decision"])


def test_the_deadline_is_one_month_moved_to_a_working_day(settings):
    assert review_due_date(received_on=date(2025, 9, 3)) == date(2025, 10, 3)
    assert review_due_date(received_on=date(2026, 1, 31)) == date(2026, 3, 2)  # 28 Feb 2026 is a Saturday
    settings.ERASURE_PUBLIC_HOLIDAYS = ["2025-10-03"]
    assert review_due_date(received_on=date(2025, 9, 3)) == date(2025, 10, 6)


def test_a_contested_decision_reaches_a_reviewer_and_its_outcome_is_recorded(dpo_client, auditor_client, ml_client,
                                                                             decision):
    url = f"/api/v1/decisions/{decision.pk}/contest/"
    assert ml_client.post(url, {"reason": "wrong"}, format="json").status_code == 403
    assert auditor_client.post(url, {"reason": "wrong"}, format="json").status_code == 403
    bad = dpo_client.post(url, {"reason": "  "}, format="json")
    assert bad.status_code == 400 and "reason" in bad.json()
    bad = dpo_client.post(url, {"reason": "wrong", "channel": "pigeon"}, format="json")
    assert bad.status_code == 400 and "channel" in bad.json()

    received = "2026-01-31T10:00:00Z"
    opened = dpo_client.post(url, {"reason": "My readings were taken during an infection.", "channel": "letter",
                                   "received_at": received}, format="json")
    assert opened.status_code == 201, opened.content
    review = opened.json()
    assert review["status"] == "open" and review["due_at"] == "2026-03-02" and review["channel"] == "letter"
    assert review["decision"] == decision.pk and review["model_version"] == decision.model_version_id
    # One open review at a time.
    again = dpo_client.post(url, {"reason": "again"}, format="json")
    assert again.status_code == 409 and "already has an open review" in again.json()["detail"]

    listed = auditor_client.get("/api/v1/reviews/?status=open").json()
    assert [r["id"] for r in listed["results"]] == [review["id"]]
    decide = f"/api/v1/reviews/{review['id']}/decide/"
    assert auditor_client.post(decide, {"outcome": "upheld", "reasons": "x"}, format="json").status_code == 403
    for body, field in (({"outcome": "maybe", "reasons": "x"}, "outcome"), ({"outcome": "upheld"}, "reasons"),
                        ({"outcome": "changed", "reasons": "x"}, "new_output"),
                        ({"outcome": "changed", "reasons": "x", "new_output": {"label": "nope"}}, "new_output.label"),
                        ({"outcome": "changed", "reasons": "x", "new_output": {"label": decision.output["label"]}},
                         "new_output.label"),
                        ({"outcome": "upheld", "reasons": "x", "new_output": {"label": 1}}, "new_output")):
        response = dpo_client.post(decide, body, format="json")
        assert response.status_code == 400 and field in response.json(), (body, response.content)
    assert DecisionReview.objects.get(pk=review["id"]).status == ReviewStatus.OPEN

    classes = decision.model_version.training_run.encoding["classes"]
    other = next(c for c in classes if str(c) != decision.outcome)
    decided = dpo_client.post(decide, {"outcome": "changed", "reasons": "Repeated readings are normal.",
                                       "new_output": {"label": other}}, format="json")
    assert decided.status_code == 200, decided.content
    body = decided.json()
    assert body["status"] == "decided" and body["outcome"] == "changed" and body["reviewer"] == "test_dpo"
    assert body["new_output"] == {"label": other} and body["reasons"] == "Repeated readings are normal."
    twice = dpo_client.post(decide, {"outcome": "upheld", "reasons": "second thoughts"}, format="json")
    assert twice.status_code == 409 and "not decided again" in twice.json()["detail"]
    assert auditor_client.get(f"/api/v1/decisions/{decision.pk}/").json()["contested"] is True

    events = list(AuditEvent.objects.filter(object_type="decision_review").order_by("position"))
    assert [e.action for e in events] == ["decision_review.requested", "decision_review.decided"]
    subject = DataSubject.objects.get(pseudonym=decision.subject_pseudonym)
    assert all(e.subject_ref == subject.reference for e in events)
    assert events[1].details["review_outcome"] == "changed" and events[1].actor == "test_dpo"
    assert all(decision.subject_pseudonym not in str(e.details) for e in events)
    # Once decided, the person may contest again (a new review).
    assert dpo_client.post(url, {"reason": "still wrong"}, format="json").status_code == 201


def test_the_admin_shows_the_review_and_a_dpo_decides_it_there(admin_client, decision):
    from decisions.services import decision_contest

    review = decision_contest(decision=decision, reason="I was not told why", channel="email")
    listing = admin_client.get("/admin/decisions/decisionreview/")
    assert listing.status_code == 200 and f"Review {review.pk}" in listing.content.decode()
    page = admin_client.get(f"/admin/decisions/decisionreview/{review.pk}/change/")
    html = page.content.decode()
    assert page.status_code == 200
    assert f"/admin/decisions/decision/{decision.pk}/change/" in html
    assert f"/admin/mlops/modelversion/{decision.model_version_id}/change/" in html
    assert 'name="outcome"' in html and 'name="reasons"' in html
    # A post without reasons is refused by the form; nothing is decided.
    admin_client.post(f"/admin/decisions/decisionreview/{review.pk}/change/", {"outcome": "upheld", "reasons": ""})
    assert DecisionReview.objects.get(pk=review.pk).status == ReviewStatus.OPEN
    response = admin_client.post(f"/admin/decisions/decisionreview/{review.pk}/change/",
                                 {"outcome": "overturned", "reasons": "The model should not decide this case.",
                                  "new_label": "", "_save": "Save"})
    assert response.status_code == 302, response.content.decode()[:2000]
    review.refresh_from_db()
    assert review.status == ReviewStatus.DECIDED and review.outcome == "overturned"
    assert review.reviewer.username == "admin"
    # Decided: the page is read-only now.
    html = admin_client.get(f"/admin/decisions/decisionreview/{review.pk}/change/").content.decode()
    assert 'name="reasons"' not in html and "The model should not decide this case." in html
    decision_page = admin_client.get(f"/admin/decisions/decision/{decision.pk}/change/")
    assert decision_page.status_code == 200 and "Explanation" in decision_page.content.decode()
    version_page = admin_client.get(f"/admin/mlops/modelversion/{decision.model_version_id}/change/")
    assert version_page.status_code == 200 and "Decisions (Art. 22)" in version_page.content.decode()


def test_an_overdue_review_shows_as_overdue(admin_client, decision):
    from decisions.services import decision_contest

    received = timezone.make_aware(datetime.combine(timezone.localdate() - timedelta(days=45), datetime.min.time()))
    review = decision_contest(decision=decision, reason="no answer yet", channel="phone", received_at=received)
    assert review.due_at < timezone.localdate()
    from decisions.selectors import reviews_overdue

    assert list(reviews_overdue(on=timezone.localdate())) == [review]


def test_the_dpo_sets_an_input_retention_in_the_admin(admin_client, decision):
    from decisions.models import DecisionInputRetention

    activity = decision.model_version.training_run.snapshot.dataset.processing_activity
    assert admin_client.get("/admin/decisions/decisioninputretention/add/").status_code == 200
    refused = admin_client.post("/admin/decisions/decisioninputretention/add/", {
        "processing_activity": activity.pk, "days": 30, "article": "", "reason": "review"})
    # Refused (no article for kept inputs): the form says so and nothing is recorded.
    assert refused.status_code in (200, 302) and not DecisionInputRetention.objects.exists()
    saved = admin_client.post("/admin/decisions/decisioninputretention/add/", {
        "processing_activity": activity.pk, "days": 30, "article": "Art. 22(3) GDPR", "reason": "review", "_save": "Save"})
    assert saved.status_code == 302
    retention = DecisionInputRetention.objects.get()
    assert retention.days == 30 and retention.set_by.username == "admin"
    page = admin_client.get(f"/admin/decisions/decisioninputretention/{retention.pk}/change/")
    assert page.status_code == 200 and 'name="days"' not in page.content.decode()
    assert AuditEvent.objects.filter(action="decision_input_retention.set").count() == 1
