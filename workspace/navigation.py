"""The sidebar of the workspace: the admin's pages grouped by what a DPO does, in place of
Django's list of apps (which "All applications" and the search box still offer).

Built per request (``UNFOLD["SIDEBAR"]["navigation"]``): a page appears only when its model
is registered in the admin and the user may view it, so an ML engineer's sidebar has no
consent or erasure pages, and a page another app registers later appears by itself.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.contrib import admin
from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse

# (group, [(title, Material Symbols icon, "app_label.model_name" or "page:<admin URL name>"), ...])
NAVIGATION: list[tuple[str, list[tuple[str, str, str]]]] = [
    ("Requests", [
        ("Erasure requests", "delete_forever", "rights.erasurerequest"),
        ("Other rights (access, rectification, …)", "assignment_ind", "rights.rightsrequest"),
        ("Erasure receipts", "receipt_long", "rights.erasurereceipt"),
    ]),
    ("People", [
        ("Find a person", "person_search", "page:rights_person_search"),
        ("Data subjects", "badge", "governance.datasubject"),
        ("Consent events", "how_to_reg", "governance.consentevent"),
        ("Restrictions (Art. 18)", "block", "governance.processingrestriction"),
        ("Objections (Art. 21)", "front_hand", "governance.processingobjection"),
    ]),
    ("Models", [
        ("Model versions", "model_training", "mlops.modelversion"),
        ("Training runs", "play_circle", "mlops.trainingrun"),
        ("Membership-inference audits", "policy", "mlops.membershipinferenceaudit"),
        ("Privacy audit jobs", "pending_actions", "mlops.privacyauditjob"),
        ("Audit policies", "rule", "mlops.auditpolicy"),
        ("Output policies", "visibility_lock", "mlops.modeloutputpolicy"),
        ("Rectification policies", "published_with_changes", "mlops.rectificationpolicy"),
    ]),
    ("Decisions", [
        ("Decisions", "gavel", "decisions.decision"),
        ("Decision reviews", "rate_review", "decisions.decisionreview"),
        ("Input retention", "auto_delete", "decisions.decisioninputretention"),
    ]),
    ("Datasets", [
        ("Datasets", "dataset", "provenance.dataset"),
        ("Snapshots", "photo_camera", "provenance.snapshot"),
        ("Privacy budgets", "savings", "mlops.privacybudget"),
        ("Privacy ledger", "account_balance", "mlops.privacyledgerentry"),
    ]),
    ("Assessments", [
        ("DPIAs", "assignment", "assessments.dpia"),
        ("Processing activities (RoPA)", "account_tree", "governance.processingactivity"),
        ("Reports", "description", "governance.reportjob"),
    ]),
    ("Governance and audit", [
        ("Audit log", "fact_check", "governance.auditevent"),
        ("Purposes", "flag", "governance.purpose"),
        ("Purpose compatibility", "compare_arrows", "governance.purposecompatibility"),
        ("Data categories", "category", "governance.datacategory"),
        ("Data subject categories", "groups", "governance.datasubjectcategory"),
        ("API keys", "key", "governance.apikey"),
        ("Users", "person", "auth.user"),
        ("Roles (groups)", "badge", "auth.group"),
        ("Login attempts", "lock", "axes.accessattempt"),
    ]),
]


def _changelist_item(request: HttpRequest, title: str, icon: str, label: str) -> dict[str, Any] | None:
    """The sidebar item of one model's list (or, for ``page:<url name>``, of an admin page
    for the DPO and the auditor), or None when it is not in the admin or the user may not
    see it."""
    if label.startswith("page:"):
        from governance.roles import sees_erasure_detail

        if not sees_erasure_detail(request.user):
            return None
        try:
            return {"title": title, "icon": icon, "link": reverse(f"admin:{label.removeprefix('page:')}")}
        except NoReverseMatch:
            return None
    try:
        model = apps.get_model(label)
    except LookupError:
        return None
    if not admin.site.is_registered(model):
        return None
    if not admin.site.get_model_admin(model).has_view_or_change_permission(request):
        return None
    try:
        link = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
    except NoReverseMatch:
        return None
    return {"title": title, "icon": icon, "link": link}


def _overdue_badge(request: HttpRequest) -> str | None:
    """The number of overdue erasure requests, for the sidebar (none when there are none)."""
    from rights import selectors

    overdue = selectors.erasure_request_queryset().filter(selectors.erasure_requests_overdue_q()).count()
    return str(overdue) if overdue else None


def _overdue_rights_badge(request: HttpRequest) -> str | None:
    """The number of overdue requests under the other rights (same rule as erasure's)."""
    from rights import selectors

    overdue = selectors.rights_request_queryset().filter(selectors.erasure_requests_overdue_q()).count()
    return str(overdue) if overdue else None


def _overdue_reviews_badge(request: HttpRequest) -> str | None:
    """The number of contested decisions whose review is past its Art. 12(3) deadline (none
    when there are none): the same count as the dashboard's "Reviews overdue"."""
    from django.utils import timezone

    from decisions import selectors

    overdue = selectors.reviews_overdue(on=timezone.localdate()).count()
    return str(overdue) if overdue else None


# Items that carry a count in red beside their title when something is overdue.
BADGES = {
    "rights.erasurerequest": _overdue_badge,
    "rights.rightsrequest": _overdue_rights_badge,
    "decisions.decisionreview": _overdue_reviews_badge,
}


def sidebar_navigation(request: HttpRequest) -> list[dict[str, Any]]:
    """Unfold's SIDEBAR navigation for this user: the dashboard, then the groups."""
    groups: list[dict[str, Any]] = [
        {"title": None, "items": [{"title": "Dashboard", "icon": "dashboard", "link": reverse("admin:index")}]}
    ]
    for title, entries in NAVIGATION:
        items = []
        for item_title, icon, label in entries:
            item = _changelist_item(request, item_title, icon, label)
            if item is None:
                continue
            if label in BADGES:
                badge = BADGES[label](request)
                if badge:
                    # The number overdue, in red: unfold's default badge variant.
                    item["badge"] = badge
            items.append(item)
        if items:
            groups.append({"title": title, "items": items})
    return groups
