"""The workspace's sidebar: the Decisions group (decisions, their reviews, input retention),
the output policies beside the model registry, the count of overdue reviews, and a user
seeing only the pages they may view."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import RequestFactory
from django.utils import timezone

from decisions.models import Decision, DecisionReview, ReviewStatus
from tests.workspace import helpers as h
from workspace.navigation import sidebar_navigation


def _sidebar(user) -> dict[str, list[dict]]:
    request = RequestFactory().get("/admin/")
    request.user = user
    return {group["title"]: group["items"] for group in sidebar_navigation(request)}


def _titles(items: list[dict]) -> list[str]:
    return [item["title"] for item in items]


def _decision(*, version) -> Decision:
    return Decision.objects.create(
        model_version=version, decided_at=timezone.now(), batch=uuid.uuid4(), position=0, outcome="1",
        output={"label": 1}, output_policy="label_only", input_hash="0" * 64,
    )


def _review(*, decision: Decision, due_in_days: int, status: str = ReviewStatus.OPEN) -> DecisionReview:
    decided = status == ReviewStatus.DECIDED
    return DecisionReview.objects.create(
        decision=decision, reason="Asks for a human review.", channel="letter",
        requested_at=timezone.now() - timedelta(days=40), due_at=h.today() + timedelta(days=due_in_days),
        status=status, outcome="upheld" if decided else "", reasons="It stands." if decided else "",
        decided_at=timezone.now() if decided else None,
    )


@pytest.mark.django_db
def test_the_dpo_finds_the_decision_pages_in_their_own_group_after_the_models(admin_user):
    sidebar = _sidebar(admin_user)
    groups = list(sidebar)
    assert groups.index("Decisions") == groups.index("Models") + 1, groups
    assert _titles(sidebar["Decisions"]) == ["Decisions", "Decision reviews", "Input retention"]
    assert [item["link"] for item in sidebar["Decisions"]] == [
        "/admin/decisions/decision/", "/admin/decisions/decisionreview/", "/admin/decisions/decisioninputretention/",
    ]
    # What a decision may reveal is set per model: beside the model registry's audit policies.
    models = sidebar["Models"]
    assert _titles(models).index("Output policies") == _titles(models).index("Audit policies") + 1
    assert models[_titles(models).index("Output policies")]["link"] == "/admin/mlops/modeloutputpolicy/"


@pytest.mark.django_db
def test_decision_reviews_carry_the_number_of_overdue_reviews(admin_user):
    version = h.model_version(run=h.training_run(), version=1)
    reviews = lambda: _sidebar(admin_user)["Decisions"][1]  # noqa: E731
    assert "badge" not in reviews()
    _review(decision=_decision(version=version), due_in_days=3)  # open, not yet due
    _review(decision=_decision(version=version), due_in_days=0)  # due today: not overdue
    _review(decision=_decision(version=version), due_in_days=-5, status=ReviewStatus.DECIDED)  # answered
    assert "badge" not in reviews()
    _review(decision=_decision(version=version), due_in_days=-1)
    _review(decision=_decision(version=version), due_in_days=-9)
    assert reviews()["badge"] == "2"


@pytest.mark.django_db
def test_the_badge_counts_what_the_overdue_filter_lists(admin_client, admin_user):
    version = h.model_version(run=h.training_run(), version=1)
    overdue = _review(decision=_decision(version=version), due_in_days=-2)
    _review(decision=_decision(version=version), due_in_days=10)
    page = admin_client.get("/admin/decisions/decisionreview/?deadline=overdue")
    assert page.status_code == 200
    listed = {int(pk) for pk in re.findall(r"/admin/decisions/decisionreview/(\d+)/change/", page.content.decode())}
    assert listed == {overdue.pk}
    assert _sidebar(admin_user)["Decisions"][1]["badge"] == str(len(listed))


@pytest.mark.django_db
def test_a_user_without_the_decision_permissions_has_no_decisions_group(client):
    engineer = get_user_model().objects.create_user("engineer", "ml@example.org", "pw", is_staff=True)
    engineer.user_permissions.add(*Permission.objects.filter(
        content_type__app_label="mlops", codename__in=["view_modelversion", "view_modeloutputpolicy"]))
    sidebar = _sidebar(engineer)
    assert "Decisions" not in sidebar
    assert _titles(sidebar["Models"]) == ["Model versions", "Output policies"]
    # Given the view permission on decisions only, the engineer sees that page and no other.
    engineer.user_permissions.add(Permission.objects.get(content_type__app_label="decisions",
                                                         codename="view_decision"))
    engineer = get_user_model().objects.get(pk=engineer.pk)  # permissions are cached per user object
    assert _titles(_sidebar(engineer)["Decisions"]) == ["Decisions"]
    client.force_login(engineer)
    html = client.get("/admin/").content.decode()
    assert 'href="/admin/decisions/decision/"' in html
    assert 'href="/admin/decisions/decisionreview/"' not in html
