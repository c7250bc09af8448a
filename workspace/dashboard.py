"""The dashboard at /admin/: what needs the DPO's attention, each count a link to the list of
exactly what it counts.

Every figure is one aggregate (or one bounded list) in SQL, so the page costs the same number
of queries whatever the number of requests, models, datasets or consent events; only the
ε of the datasets with a budget is computed in Python, from the one ledger-total row each
that the budgets' query joins in. The page only reads.

A section is shown to a user who may view its records (Django's view permission), so an ML
engineer's dashboard has no erasure requests or consent withdrawals.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.db.models import Count, F, Q
from django.db.models.functions import Coalesce, TruncDate, TruncMonth, TruncWeek
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from governance import display

# Share of a dataset's ε cap above which it is listed (committed ε: spent plus reserved).
BUDGET_WARNING_SHARE = 0.8
UPCOMING_ROWS = 8
CHART_WEEKS = 12
CHART_MONTHS = 12
# How late the periodic audit-chain verification may be before the dashboard says so: twice
# its beat interval (one missed run is a warning, not yet a gap).
AUDIT_VERIFY_LATE_FACTOR = 2
# Text colours of a figure's tone (classes of unfold's stylesheet, light and dark).
TONE_CLASSES = {
    "alert": "text-red-700 dark:text-red-400",
    "warn": "text-orange-700 dark:text-orange-400",
    "ok": "text-green-700 dark:text-green-400",
    "": "text-font-important-light dark:text-font-important-dark",
}


@dataclass(frozen=True)
class Figure:
    """One count on the dashboard and the list it links to. ``tone``: "alert" (needs action
    now), "warn" (soon), "ok" (nothing to do) or "" (for information)."""

    label: str
    count: int
    url: str
    tone: str = ""
    hint: str = ""

    @property
    def text(self) -> str:
        return display.number(self.count)

    @property
    def tone_class(self) -> str:
        return TONE_CLASSES[self.tone]


def _changelist(label: str, **params: Any) -> str:
    app_label, model_name = label.split(".")
    url = reverse(f"admin:{app_label}_{model_name}_changelist")
    return f"{url}?{urlencode(params)}" if params else url


def _change(label: str, pk: int) -> str:
    app_label, model_name = label.split(".")
    return reverse(f"admin:{app_label}_{model_name}_change", args=[pk])


def _tone(count: int, *, alert: bool = False) -> str:
    if not count:
        return "ok"
    return "alert" if alert else "warn"


def _local_midnight(day: date) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min))


def _chart(labels: list[str], datasets: list[dict[str, Any]]) -> str:
    """The JSON unfold's chart component hands to Chart.js (colours as CSS variables, which
    unfold's script resolves, so the charts follow the theme and dark mode)."""
    return json.dumps({"labels": labels, "datasets": datasets})


# --- Erasure requests ----------------------------------------------------------------------


def erasure_request_figures(*, on: date) -> dict[str, Any]:
    """Counts of the requests overdue, due within 7 days, awaiting verification, verified,
    in progress and failed (one aggregate), and the first requests by deadline among the
    overdue and due soon (one bounded query)."""
    from rights import selectors
    from rights.admin_filters import DUE_SOON, DUE_SOON_DAYS, FAILED, OVERDUE
    from rights.deadlines import days_left
    from rights.models import ErasureStatus

    overdue_q = selectors.erasure_requests_overdue_q(on=on)
    due_soon_q = selectors.erasure_requests_due_within_q(days=DUE_SOON_DAYS, on=on)
    counts = selectors.erasure_request_queryset().aggregate(
        overdue=Count("pk", filter=overdue_q),
        due_soon=Count("pk", filter=due_soon_q),
        received=Count("pk", filter=Q(status=ErasureStatus.RECEIVED)),
        verified=Count("pk", filter=Q(status=ErasureStatus.VERIFIED)),
        in_progress=Count("pk", filter=Q(status=ErasureStatus.IN_PROGRESS)),
        failed=Count("pk", filter=selectors.erasure_requests_failed_q()),
    )
    label = "rights.erasurerequest"
    figures = [
        Figure("Overdue", counts["overdue"], _changelist(label, deadline=OVERDUE),
               _tone(counts["overdue"], alert=True), "open and past the deadline"),
        Figure(f"Due within {DUE_SOON_DAYS} days", counts["due_soon"], _changelist(label, deadline=DUE_SOON),
               _tone(counts["due_soon"]), "today included"),
        Figure("Awaiting verification", counts["received"], _changelist(label, status__exact=ErasureStatus.RECEIVED),
               _tone(counts["received"]), "identity not yet verified"),
        Figure("Ready to execute", counts["verified"], _changelist(label, status__exact=ErasureStatus.VERIFIED),
               _tone(counts["verified"]), "identity verified"),
        Figure("In progress", counts["in_progress"], _changelist(label, status__exact=ErasureStatus.IN_PROGRESS),
               "", "executing"),
        Figure("Failed", counts["failed"], _changelist(label, execution=FAILED),
               _tone(counts["failed"], alert=True), "a step failed: see the request"),
    ]
    upcoming = []
    for request in (
        selectors.erasure_request_queryset().filter(overdue_q | due_soon_q).order_by("effective_due", "id")
        [:UPCOMING_ROWS]
    ):
        left = days_left(due=request.effective_due, today=on)
        if left < 0:
            when, tone = f"overdue by {-left} day{'s' if left != -1 else ''}", "alert"
        elif left == 0:
            when, tone = "due today", "warn"
        else:
            when, tone = f"{left} day{'s' if left != 1 else ''} left", "warn"
        deadline = display.moment(request.effective_due) + (" (extended)" if request.extended_due_at else "")
        upcoming.append([
            display.link(_change(label, request.pk), f"Request {request.pk}"),
            display.label(ErasureStatus, request.status),
            deadline,
            format_html('<span class="font-semibold {}">{}</span>', TONE_CLASSES[tone], when),
        ])
    return {
        "figures": figures,
        "upcoming": {"headers": ["Request", "Status", "Deadline", "Time left"], "rows": upcoming},
        "more": max(0, counts["overdue"] + counts["due_soon"] - len(upcoming)),
        "list_url": _changelist(label),
    }


def erasure_requests_per_month(*, on: date, months: int = CHART_MONTHS) -> dict[str, Any]:
    """Requests received and closed (completed or rejected) per month over the last
    ``months`` months, this one included, and the share of the closed ones answered by their
    (extended) deadline: two grouped queries."""
    from rights import selectors
    from rights.deadlines import add_months
    from rights.models import ErasureRequest

    first = add_months(on.replace(day=1), -(months - 1))
    start = _local_midnight(first)
    month_starts = [add_months(first, i) for i in range(months)]
    received = {
        timezone.localtime(row["month"]).date() if isinstance(row["month"], datetime) else row["month"]: row["n"]
        for row in ErasureRequest.objects.filter(received_at__gte=start)
        .annotate(month=TruncMonth("received_at"))
        .values("month")
        .annotate(n=Count("pk"))
        .order_by("month")
    }
    closed_rows = (
        selectors.erasure_request_queryset()
        .annotate(closed_at=Coalesce("completed_at", "rejected_at"))
        .filter(closed_at__gte=start)
        .annotate(month=TruncMonth("closed_at"), closed_on=TruncDate("closed_at"))
        .values("month")
        .annotate(n=Count("pk"), on_time=Count("pk", filter=Q(closed_on__lte=F("effective_due"))))
        .order_by("month")
    )
    closed = {
        (timezone.localtime(r["month"]).date() if isinstance(r["month"], datetime) else r["month"]): r
        for r in closed_rows
    }
    received_series = [received.get(m, 0) for m in month_starts]
    closed_series = [closed[m]["n"] if m in closed else 0 for m in month_starts]
    on_time_series = [
        round(100 * closed[m]["on_time"] / closed[m]["n"], 1) if m in closed and closed[m]["n"] else None
        for m in month_starts
    ]
    total_closed = sum(closed_series)
    total_on_time = sum(r["on_time"] for r in closed.values())
    labels = [f"{m:%b %Y}" for m in month_starts]
    return {
        "counts_chart": _chart(labels, [
            {"label": "Received", "data": received_series, "backgroundColor": "var(--color-primary-600)",
             "grouped": True, "maxBarThickness": 14, "displayYAxis": True},
            {"label": "Closed", "data": closed_series, "backgroundColor": "var(--color-primary-300)",
             "grouped": True, "maxBarThickness": 14},
        ]),
        "on_time_chart": _chart(labels, [
            {"label": "Answered in time", "data": on_time_series, "borderColor": "var(--color-primary-600)",
             "spanGaps": True, "displayYAxis": True, "suffixYAxis": "%", "pointStyle": "circle", "pointRadius": 3},
        ]),
        "received": sum(received_series),
        "closed": total_closed,
        "on_time_rate": display.percent(total_on_time / total_closed) if total_closed else display.DASH,
        "first_month": labels[0],
        "table": list(zip(labels, received_series, closed_series,
                          [display.DASH if v is None else f"{display.number(v)}%" for v in on_time_series],
                          strict=True)),
    }


# --- DPIAs, models, budgets ------------------------------------------------------------------


def dpia_figures(*, on: date) -> dict[str, Any]:
    """Current DPIA versions (the latest of each activity) whose evidence changed since
    signing, or whose review date has come; drafts not yet signed. One aggregate."""
    from assessments.models import Dpia, DpiaStatus

    counts = Dpia.objects.filter(next_version__isnull=True).aggregate(
        evidence_changed=Count("pk", filter=Q(status=DpiaStatus.REVIEW_REQUIRED)),
        review_due=Count("pk", filter=Q(status=DpiaStatus.SIGNED, review_date__lte=on)),
        drafts=Count("pk", filter=Q(status=DpiaStatus.DRAFT)),
    )
    label = "assessments.dpia"
    current = {"next_version__isnull": "True"}
    figures = [
        Figure("Evidence changed", counts["evidence_changed"],
               _changelist(label, status__exact=DpiaStatus.REVIEW_REQUIRED, **current),
               _tone(counts["evidence_changed"]), "signed, then the records behind it changed"),
        Figure("Review date reached", counts["review_due"],
               _changelist(label, status__exact=DpiaStatus.SIGNED, review_date__lte=on.isoformat(), **current),
               _tone(counts["review_due"]), "signed, review date today or past"),
        Figure("Drafts", counts["drafts"], _changelist(label, status__exact=DpiaStatus.DRAFT, **current),
               "", "not signed yet"),
    ]
    return {"figures": figures, "needing_review": counts["evidence_changed"] + counts["review_due"]}


def model_figures() -> dict[str, Any]:
    """Model versions tainted, awaiting or failing their audit policy, and with a privacy
    bug (a canary audit's ε lower bound above the claimed ε). One aggregate."""
    from mlops.models import ModelStatus, ModelVersion

    counts = ModelVersion.objects.aggregate(
        tainted=Count("pk", filter=Q(status=ModelStatus.TAINTED)),
        stale=Count("pk", filter=Q(status=ModelStatus.STALE)),
        pending_audit=Count("pk", filter=Q(status=ModelStatus.PENDING_AUDIT)),
        audit_failed=Count("pk", filter=Q(status=ModelStatus.AUDIT_FAILED)),
        privacy_bug=Count("pk", filter=Q(canary_audit__flagged=True)),
    )
    label = "mlops.modelversion"
    return {"figures": [
        Figure("Tainted", counts["tainted"], _changelist(label, status__exact=ModelStatus.TAINTED),
               _tone(counts["tainted"]), "training data changed: remediate"),
        Figure("Stale", counts["stale"], _changelist(label, status__exact=ModelStatus.STALE),
               _tone(counts["stale"]), "trained on values since rectified: set the rectification policy"),
        Figure("Failed their audit policy", counts["audit_failed"],
               _changelist(label, status__exact=ModelStatus.AUDIT_FAILED), _tone(counts["audit_failed"], alert=True),
               "not to be served"),
        Figure("Awaiting their audit", counts["pending_audit"],
               _changelist(label, status__exact=ModelStatus.PENDING_AUDIT), "", "audit policy not yet passed"),
        Figure("Privacy bug", counts["privacy_bug"], _changelist(label, canary_audit__flagged__exact="1"),
               _tone(counts["privacy_bug"], alert=True), "measured ε above the claimed ε"),
    ]}


def _committed_epsilon(total: Any, *, delta: float) -> tuple[float, float]:
    """(spent, committed) ε at δ of a dataset's ledger total, as
    ``mlops.selectors.dataset_spent_epsilon`` reads them, from a row already loaded."""
    from mlops import ledger

    if total is None:
        return 0.0, 0.0
    if total.non_private_runs:
        return math.inf, math.inf
    spent = ledger.curve_from_json(total.spent_rdp)
    reserved = ledger.curve_from_json(total.reserved_rdp)
    committed = ledger.sum_curves([c for c in (spent, reserved) if c is not None])
    return ledger.epsilon_of_curve(spent, delta=delta), ledger.epsilon_of_curve(committed, delta=delta)


def budget_figures(*, share: float = BUDGET_WARNING_SHARE) -> dict[str, Any]:
    """Datasets whose committed ε (spent by finished runs plus reserved by queued or running
    ones) is above ``share`` of their cap, most used first: one query joining each budget's
    dataset and ledger total."""
    from mlops.models import PrivacyBudget, PrivacyLedgerTotal

    rows = []
    for budget in PrivacyBudget.objects.select_related("dataset", "dataset__privacy_ledger_total").order_by("pk"):
        try:
            total = budget.dataset.privacy_ledger_total
        except PrivacyLedgerTotal.DoesNotExist:
            total = None
        spent, committed = _committed_epsilon(total, delta=budget.delta)
        if budget.epsilon_cap > 0:
            used = committed / budget.epsilon_cap
        else:
            used = math.inf if committed > 0 else 0.0
        if used <= share:
            continue
        rows.append({
            "dataset_id": budget.dataset_id,
            "name": budget.dataset.name,
            "url": _change("provenance.dataset", budget.dataset_id),
            "cap": display.epsilon(budget.epsilon_cap),
            "delta": display.delta(budget.delta),
            "spent": display.epsilon(spent),
            "committed": display.epsilon(committed),
            "used": "∞ (non-private training)" if math.isinf(used) else display.percent(used),
            "bar": 100 if math.isinf(used) else min(100, round(100 * used)),
            "over": used >= 1,
            "sort": used,
        })
    rows.sort(key=lambda r: (-r["sort"], r["name"]))
    ids = ",".join(str(r["dataset_id"]) for r in rows)
    figure = Figure(
        f"Above {display.percent(share)} of their ε cap", len(rows),
        _changelist("provenance.dataset", id__in=ids) if rows else _changelist("mlops.privacybudget"),
        _tone(len(rows)), "committed ε: spent plus reserved by queued or running runs",
    )
    return {"figure": figure, "rows": rows}


# --- Audit chain -----------------------------------------------------------------------------


def audit_chain_figures(*, now: datetime) -> dict[str, Any]:
    """The last recorded verification of the audit chain (the beat task's or a DPO's) and the
    events written since: two queries. ``state``: "ok", "late" (intact when last verified,
    but that was more than two beat intervals ago), "broken" or "never"."""
    state = _audit_chain_state(now=now)
    return {**state, "tone_class": TONE_CLASSES[state["tone"]]}


def _audit_chain_state(*, now: datetime) -> dict[str, Any]:
    from governance.models import AuditChainHead
    from governance.selectors import audit_chain_last_verification

    last = audit_chain_last_verification()
    head = AuditChainHead.objects.filter(pk=1).values_list("position", flat=True).first() or 0
    schedule = settings.CELERY_BEAT_SCHEDULE.get("verify-audit-chain", {}).get("schedule")
    interval = schedule if isinstance(schedule, timedelta) else timedelta(hours=24)
    url = _changelist("governance.auditevent", object_type__exact="audit_chain")
    if last is None:
        return {"state": "never", "tone": "warn", "headline": "Not verified yet", "url": url, "events": head,
                "detail": "The chain has not been verified since it began; beat verifies it periodically."}
    details = last.details or {}
    since = max(0, head - last.position)
    result = {
        "url": url,
        "last_verified": display.moment(last.occurred_at),
        "checked": display.number(details.get("checked")) if details.get("checked") is not None else display.DASH,
        "since": display.number(since),
        "events": head,
    }
    if last.action == "audit.verification_failed":
        position = details.get("broken_position")
        reason = details.get("reason") or "the chain does not verify"
        return {**result, "state": "broken", "tone": "alert",
                "headline": f"Broken at event {position}" if position is not None else "Broken",
                "detail": reason}
    if now - last.occurred_at > AUDIT_VERIFY_LATE_FACTOR * interval:
        return {**result, "state": "late", "tone": "warn", "headline": "Intact, but not verified recently",
                "detail": f"Beat verifies it every {display.number(interval.total_seconds() / 3600)} h; "
                          "the last verification is older than two intervals."}
    return {**result, "state": "ok", "tone": "ok", "headline": "Intact", "detail": ""}


# --- Consent withdrawals ---------------------------------------------------------------------


def consent_withdrawals_per_week(*, on: date, weeks: int = CHART_WEEKS) -> dict[str, Any]:
    """Consent withdrawals per week (Monday to Sunday) over the last ``weeks`` weeks, this one
    included: one grouped query."""
    from governance.models import ConsentAction, ConsentEvent

    this_week = on - timedelta(days=on.weekday())
    week_starts = [this_week - timedelta(weeks=weeks - 1 - i) for i in range(weeks)]
    rows = (
        ConsentEvent.objects.filter(
            action=ConsentAction.WITHDRAWN,
            occurred_at__gte=_local_midnight(week_starts[0]),
            occurred_at__lt=_local_midnight(this_week + timedelta(days=7)),
        )
        .annotate(week=TruncWeek("occurred_at"))
        .values("week")
        .annotate(n=Count("pk"))
        .order_by("week")
    )
    per_week = {
        (timezone.localtime(r["week"]).date() if isinstance(r["week"], datetime) else r["week"]): r["n"] for r in rows
    }
    series = [per_week.get(w, 0) for w in week_starts]
    labels = [f"{w.day} {w:%b}" for w in week_starts]
    return {
        "chart": _chart(labels, [
            {"label": "Withdrawals", "data": series, "backgroundColor": "var(--color-primary-600)",
             "maxBarThickness": 18, "displayYAxis": True},
        ]),
        "total": display.number(sum(series)),
        "this_week": display.number(series[-1]),
        "first_week": labels[0],
        "url": _changelist("governance.consentevent", action__exact=ConsentAction.WITHDRAWN),
        "table": list(zip(labels, series, strict=True)),
    }


# --- Decisions (Art. 22) ----------------------------------------------------------------------

DECISION_CHART_DAYS = 30


def decision_log_per_day(*, on: date, days: int = DECISION_CHART_DAYS) -> dict[str, Any]:
    """Decisions per day over the last ``days`` days, stacked by outcome, and the reviews of
    contested decisions open and overdue: one grouped query and one count each."""
    from decisions import selectors as decision_selectors
    from decisions.models import ReviewStatus

    first = on - timedelta(days=days - 1)
    rows = decision_selectors.decision_log_counts(since=_local_midnight(first),
                                                  until=_local_midnight(on + timedelta(days=1)))
    per_day: dict[tuple[date, str], int] = {}
    for r in rows:
        per_day[(r["day"], r["outcome"])] = per_day.get((r["day"], r["outcome"]), 0) + r["decisions"]
    outcomes = sorted({outcome for _, outcome in per_day})
    day_list = [first + timedelta(days=i) for i in range(days)]
    colours = ["var(--color-primary-600)", "var(--color-primary-300)", "var(--color-primary-800)",
               "var(--color-primary-400)"]
    datasets = [
        {"label": f"Outcome {outcome}", "data": [per_day.get((d, outcome), 0) for d in day_list],
         "backgroundColor": colours[i % len(colours)], "maxBarThickness": 14, "displayYAxis": True, "stack": "log"}
        for i, outcome in enumerate(outcomes)
    ]
    open_reviews = decision_selectors.reviews_visible().filter(status=ReviewStatus.OPEN).count()
    overdue = decision_selectors.reviews_overdue(on=on).count()
    return {
        "chart": _chart([f"{d.day} {d:%b}" for d in day_list], datasets),
        "total": display.number(sum(per_day.values())),
        "first_day": display.moment(first),
        "url": _changelist("decisions.decision"),
        "figures": [
            Figure("Reviews open", open_reviews, _changelist("decisions.decisionreview", status__exact="open"),
                   tone=_tone(open_reviews), hint="Contested decisions awaiting a reviewer (Art. 22(3))."),
            Figure("Reviews overdue", overdue, _changelist("decisions.decisionreview", deadline="overdue"),
                   tone=_tone(overdue, alert=True), hint="Open past their one-month deadline (Art. 12(3))."),
        ],
    }


# --- The page --------------------------------------------------------------------------------


def dashboard_context(*, user: Any, now: datetime | None = None) -> dict[str, Any]:
    """Every section of the dashboard the user may see (None for the others)."""
    now = now or timezone.now()
    on = timezone.localdate(now)
    can = user.has_perm
    requests = can("rights.view_erasurerequest")
    return {
        "today": display.moment(on),
        "requests": erasure_request_figures(on=on) if requests else None,
        "requests_per_month": erasure_requests_per_month(on=on) if requests else None,
        "dpias": dpia_figures(on=on) if can("assessments.view_dpia") else None,
        "models": model_figures() if can("mlops.view_modelversion") else None,
        "budgets": budget_figures() if can("mlops.view_privacybudget") else None,
        "audit": audit_chain_figures(now=now) if can("governance.view_auditevent") else None,
        "withdrawals": consent_withdrawals_per_week(on=on) if can("governance.view_consentevent") else None,
        "decisions": decision_log_per_day(on=on) if can("decisions.view_decision") else None,
    }


def dashboard_callback(request: HttpRequest, context: dict[str, Any]) -> dict[str, Any]:
    """Unfold's DASHBOARD_CALLBACK: the figures for admin/index.html (workspace/templates)."""
    context["workspace"] = dashboard_context(user=request.user)
    return context
