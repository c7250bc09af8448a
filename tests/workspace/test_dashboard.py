"""The dashboard at /admin/: each count is right, links to a list showing exactly what it
counts, the page costs the same number of queries whatever the data, and a user sees only
the sections they may view."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from html import unescape

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from governance import services
from mlops.selectors import privacy_budget_status
from tests.test_http_hardening import _assert_admin_page_runs_under_its_policy
from tests.workspace import helpers as h
from workspace import dashboard


def _erasure_world():
    day = h.today()
    return {
        "overdue": [h.erasure_request(due=day - timedelta(days=8)),
                    h.erasure_request(due=day - timedelta(days=1), status="verified")],
        "due_today": h.erasure_request(due=day, status="in_progress"),
        "due_in_7": h.erasure_request(due=day + timedelta(days=7)),
        "later": h.erasure_request(due=day + timedelta(days=8), status="verified"),
        # Past its first deadline but extended: due soon, not overdue.
        "extended": h.erasure_request(due=day - timedelta(days=3), extended=day + timedelta(days=3)),
        "failed": h.erasure_request(due=day + timedelta(days=20), status="in_progress", failed_step=True),
        # Closed past its deadline: neither overdue nor due.
        "completed": h.erasure_request(due=day - timedelta(days=40), status="completed",
                                       completed=timezone.now() - timedelta(days=30)),
    }


def _figures(section) -> dict[str, dashboard.Figure]:
    return {f.label: f for f in section["figures"]}


def _listed_ids(client, url: str) -> set[int]:
    page = client.get(url)
    assert page.status_code == 200, url
    assert "?e=1" not in page.get("Location", ""), f"{url}: the admin refused the filter"
    return {obj.pk for obj in page.context["cl"].result_list}


@pytest.mark.django_db
def test_erasure_counts_link_to_lists_of_exactly_what_they_count(admin_client):
    w = _erasure_world()
    figures = _figures(dashboard.erasure_request_figures(on=h.today()))
    expected = {
        "Overdue": {r.pk for r in w["overdue"]},
        "Due within 7 days": {w["due_today"].pk, w["due_in_7"].pk, w["extended"].pk},
        "Awaiting verification": {w["overdue"][0].pk, w["due_in_7"].pk, w["extended"].pk},
        "Ready to execute": {w["overdue"][1].pk, w["later"].pk},
        "In progress": {w["due_today"].pk, w["failed"].pk},
        "Failed": {w["failed"].pk},
    }
    assert set(figures) == set(expected)
    for label, ids in expected.items():
        assert figures[label].count == len(ids), label
        assert _listed_ids(admin_client, figures[label].url) == ids, label
    assert figures["Overdue"].tone == "alert" and figures["Failed"].tone == "alert"


@pytest.mark.django_db
def test_the_dashboard_page_shows_the_counts_and_the_requests_due_soonest(admin_client):
    w = _erasure_world()
    page = admin_client.get("/admin/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'id="workspace-dashboard"' in html, "workspace's admin/index.html must win over unfold's"
    _assert_admin_page_runs_under_its_policy(page)
    # Each figure is a card linking to its list, the number inside the link.
    overdue = re.search(r'<a href="([^"]*deadline=overdue)"(.*?)</a>', html, flags=re.S)
    assert overdue and re.search(r">\s*2\s*<", overdue.group(2))
    # The table of requests by deadline: the most overdue first, each linking to its page.
    rows = re.findall(r'href="/admin/rights/erasurerequest/(\d+)/change/"', html)
    assert [int(pk) for pk in rows[:2]] == [r.pk for r in w["overdue"]]
    assert "overdue by 8 days" in html and "due today" in html and "(extended)" in html
    assert str(w["later"].pk) not in rows and str(w["completed"].pk) not in rows
    # The page keeps every admin page reachable, and the sidebar groups them by task.
    groups = re.findall(r"<h2[^>]*>\s*([^<]+?)\s*<", html)
    for group in ("Requests", "People", "Models", "Datasets", "Assessments", "Governance and audit"):
        assert group in groups, group
    assert 'href="/admin/rights/erasurerequest/"' in html and 'href="/admin/governance/auditevent/"' in html


@pytest.mark.django_db
def test_dpias_needing_review_are_current_versions_with_changed_evidence_or_a_due_review(admin_client):
    day = h.today()
    changed = h.dpia(status="review_required", review_date=day + timedelta(days=100))
    due = h.dpia(status="signed", review_date=day)
    h.dpia(status="signed", review_date=day + timedelta(days=1))  # not yet
    h.dpia(status="signed", review_date=day - timedelta(days=5), superseded=True)  # a newer version exists
    draft = h.dpia(status="draft")
    section = dashboard.dpia_figures(on=day)
    figures = _figures(section)
    assert section["needing_review"] == 2
    assert _listed_ids(admin_client, figures["Evidence changed"].url) == {changed.pk}
    assert _listed_ids(admin_client, figures["Review date reached"].url) == {due.pk}
    assert _listed_ids(admin_client, figures["Drafts"].url) >= {draft.pk}


@pytest.mark.django_db
def test_model_versions_tainted_failing_or_with_a_privacy_bug(admin_client):
    run = h.training_run()
    tainted = h.model_version(run=run, version=1, status="tainted")
    failed = h.model_version(run=run, version=2, status="audit_failed", flagged=True)
    pending = h.model_version(run=run, version=3, status="pending_audit", flagged=False)
    h.model_version(run=run, version=4, status="active", flagged=False)
    figures = _figures(dashboard.model_figures())
    expected = {"Tainted": {tainted.pk}, "Failed their audit policy": {failed.pk},
                "Awaiting their audit": {pending.pk}, "Privacy bug": {failed.pk}}
    for label, ids in expected.items():
        assert figures[label].count == len(ids), label
        assert _listed_ids(admin_client, figures[label].url) == ids, label


@pytest.mark.django_db
def test_datasets_above_80_percent_of_their_cap_as_the_ledger_reads_them(admin_client):
    near = h.budgeted_dataset(used=0.9)
    reserved = h.budgeted_dataset(used=0.85, reserved=True)  # reserved by a queued run counts
    h.budgeted_dataset(used=0.5)
    h.budgeted_dataset(used=0.8)  # at 80%, not above
    non_private = h.budgeted_dataset(used=0.1, non_private=True)
    section = dashboard.budget_figures()
    rows = {r["dataset_id"]: r for r in section["rows"]}
    assert list(rows) == [non_private.pk, near.pk, reserved.pk]  # most used first
    assert rows[near.pk]["used"] == "90%" and rows[reserved.pk]["used"] == "85%"
    assert rows[non_private.pk]["used"].startswith("∞")
    # The committed ε the dashboard shows is the one the budget's own status reports.
    status = privacy_budget_status(dataset=near)
    assert rows[near.pk]["committed"] == dashboard.display.epsilon(status["committed_epsilon"])
    assert section["figure"].count == 3
    assert _listed_ids(admin_client, section["figure"].url) == set(rows)


@pytest.mark.django_db
def test_audit_chain_state_from_the_last_recorded_verification():
    now = timezone.now()
    assert dashboard.audit_chain_figures(now=now)["state"] == "never"
    services.audit_chain_verification_record(ok=True, checked=12, broken_position=None, reason="")
    state = dashboard.audit_chain_figures(now=now + timedelta(minutes=1))
    assert state["state"] == "ok" and state["checked"] == "12" and state["since"] == "0"
    services.audit_event_record(actor="system", action="test.event")
    assert dashboard.audit_chain_figures(now=now)["since"] == "1"
    assert dashboard.audit_chain_figures(now=now + timedelta(days=3))["state"] == "late"
    services.audit_chain_verification_record(ok=False, checked=3, broken_position=4, reason="the event was altered")
    broken = dashboard.audit_chain_figures(now=now)
    assert broken["state"] == "broken" and broken["headline"] == "Broken at event 4"
    assert broken["detail"] == "the event was altered" and broken["tone"] == "alert"


@pytest.mark.django_db
def test_consent_withdrawals_per_week_over_twelve_weeks():
    day = h.today()
    monday = day - timedelta(days=day.weekday())
    at = timezone.make_aware(timezone.datetime.combine(monday, timezone.datetime.min.time())) + timedelta(hours=9)
    h.consent_withdrawn(at=at)  # this week
    h.consent_withdrawn(at=at - timedelta(weeks=2))
    h.consent_withdrawn(at=at - timedelta(weeks=2, hours=-1))
    h.consent_withdrawn(at=at - timedelta(weeks=11))  # the first week shown
    h.consent_withdrawn(at=at - timedelta(weeks=12))  # before it
    h.consent_withdrawn(at=at, action="given")  # not a withdrawal
    section = dashboard.consent_withdrawals_per_week(on=day)
    series = json.loads(section["chart"])["datasets"][0]["data"]
    assert len(series) == 12
    assert series[-1] == 1 and series[-3] == 2 and series[0] == 1 and sum(series) == 4
    assert section["total"] == "4" and section["this_week"] == "1"


@pytest.mark.django_db
def test_requests_per_month_and_the_share_answered_in_time():
    day = h.today()
    now = timezone.now()
    h.erasure_request(due=day + timedelta(days=20), received=now)
    h.erasure_request(due=day, status="completed", received=now - timedelta(days=1), completed=now)  # in time
    late = h.erasure_request(due=day - timedelta(days=2), status="completed", received=now - timedelta(days=1),
                             completed=now)
    h.erasure_request(due=day + timedelta(days=5), status="rejected", received=now - timedelta(days=1), rejected=now)
    h.erasure_request(due=day, received=now - timedelta(days=400))  # received before the 12 months
    section = dashboard.erasure_requests_per_month(on=day)
    counts = json.loads(section["counts_chart"])["datasets"]
    assert counts[0]["label"] == "Received" and counts[0]["data"][-1] + counts[0]["data"][-2] >= 4
    assert section["received"] == 4 and section["closed"] == 3
    assert counts[1]["data"][-1] == 3
    on_time = json.loads(section["on_time_chart"])["datasets"][0]["data"]
    assert on_time[-1] == pytest.approx(66.7) and section["on_time_rate"] == "66.7%"
    assert late.pk  # the late one is what keeps the rate below 100%


def _dashboard_queries(client) -> int:
    with CaptureQueriesContext(connection) as captured:
        assert client.get("/admin/").status_code == 200
    return len(captured)


def _grow_world(n: int) -> None:
    day = h.today()
    run = h.training_run()
    for i in range(n):
        h.erasure_request(due=day - timedelta(days=i + 1), status="in_progress", failed_step=i % 2 == 0)
        h.erasure_request(due=day + timedelta(days=i % 8), status="received")
        h.erasure_request(due=day - timedelta(days=60), status="completed", received=timezone.now() - timedelta(days=70),
                          completed=timezone.now() - timedelta(days=i))
        h.model_version(run=run, version=i + 1, status=("tainted", "audit_failed", "pending_audit")[i % 3],
                        flagged=i % 2 == 0)
        h.budgeted_dataset(used=0.95 if i % 2 else 0.3)
        h.dpia(status="review_required" if i % 2 else "signed", review_date=day)
        h.consent_withdrawn(at=timezone.now() - timedelta(days=7 * (i % 12)))
    services.audit_chain_verification_record(ok=True, checked=n, broken_position=None, reason="")


@pytest.mark.django_db
def test_the_dashboard_costs_the_same_queries_whatever_the_data(admin_client):
    _grow_world(2)
    small = _dashboard_queries(admin_client)
    _grow_world(20)
    large = _dashboard_queries(admin_client)
    assert large == small, f"{small} queries with a small world, {large} with ten times the data"
    assert small <= 30


@pytest.mark.django_db
def test_a_user_sees_only_the_sections_they_may_view(client):
    _erasure_world()
    h.model_version(run=h.training_run(), version=1, status="tainted")
    engineer = get_user_model().objects.create_user("engineer", "ml@example.org", "pw", is_staff=True)
    engineer.user_permissions.add(*Permission.objects.filter(
        content_type__app_label="mlops", codename__in=["view_modelversion", "view_privacybudget"]))
    client.force_login(engineer)
    html = client.get("/admin/").content.decode()
    assert 'id="dashboard-models"' in html and 'id="dashboard-budgets"' in html
    for hidden in ("dashboard-requests", "dashboard-withdrawals", "dashboard-audit", "dashboard-dpias"):
        assert f'id="{hidden}"' not in html, hidden
    # Nor does the sidebar offer the erasure or consent pages.
    assert "/admin/rights/erasurerequest/" not in unescape(html)
    assert "/admin/governance/consentevent/" not in unescape(html)
    assert 'href="/admin/mlops/modelversion/"' in html
