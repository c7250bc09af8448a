"""The decision log on the DPO's dashboard: decisions per day by outcome, and the reviews
open and overdue, each count opening the list of exactly what it counts."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest
from django.utils import timezone

from decisions.models import Decision
from decisions.services import decision_contest, decisions_make
from tests.decisions.helpers import row, trained_version
from workspace import dashboard

pytestmark = pytest.mark.django_db


def test_the_dashboard_charts_decisions_per_day_and_counts_reviews(admin_client):
    version = trained_version()
    answer = decisions_make(model_version=version, rows=[row(i) for i in range(6)], explain=False)
    ids = [d["decision"] for d in answer["decisions"]]
    Decision.objects.filter(pk=ids[0]).update(decided_at=timezone.now() - timedelta(days=3))
    Decision.objects.filter(pk=ids[1]).update(decided_at=timezone.now() - timedelta(days=40))  # outside the chart
    long_ago = timezone.make_aware(datetime.combine(timezone.localdate() - timedelta(days=40), datetime.min.time()))
    overdue = decision_contest(decision=Decision.objects.get(pk=ids[2]), reason="x", channel="email",
                               received_at=long_ago)
    decision_contest(decision=Decision.objects.get(pk=ids[3]), reason="y", channel="email")

    section = dashboard.decision_log_per_day(on=timezone.localdate())
    chart = json.loads(section["chart"])
    assert len(chart["labels"]) == 30
    assert sum(sum(s["data"]) for s in chart["datasets"]) == 5 and section["total"] == "5"
    assert sum(s["data"][-4] for s in chart["datasets"]) == 1  # three days ago
    figures = {f.label: f for f in section["figures"]}
    assert figures["Reviews open"].count == 2 and figures["Reviews overdue"].count == 1
    page = admin_client.get(figures["Reviews overdue"].url)
    assert page.status_code == 200 and [r.pk for r in page.context["cl"].result_list] == [overdue.pk]
    page = admin_client.get(figures["Reviews open"].url)
    assert len(page.context["cl"].result_list) == 2

    home = admin_client.get("/admin/")
    assert home.status_code == 200
    assert 'id="dashboard-decisions"' in home.content.decode()


def test_a_user_who_may_not_view_decisions_gets_no_section(client):
    from governance import services

    user = services.user_ensure_with_role(username="engineer-dash", role="ml_engineer")
    assert dashboard.dashboard_context(user=user)["decisions"] is None
