"""Read-side queries of decisions: the lists the API and the admin show, the decision log
(counts per model version, day and outcome, in one grouped query) and its CSV export."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import date, datetime

from django.db.models import Count, Exists, OuterRef, QuerySet, Subquery
from django.db.models.functions import TruncDate
from django.utils import timezone

from decisions.models import Decision, DecisionReview, ReviewStatus

EXPORT_CHUNK = 2000
EXPORT_COLUMNS = [
    "decision", "decided_at", "model", "model_version_id", "model_version", "outcome", "output", "output_policy",
    "explained", "attributions_withheld", "top_features", "subject_given", "input_hash", "contested",
    "review_outcome",
]


def decisions_visible() -> QuerySet[Decision]:
    return Decision.objects.select_related("model_version").annotate(
        contested=Exists(DecisionReview.objects.filter(decision=OuterRef("pk")))
    )


def reviews_visible() -> QuerySet[DecisionReview]:
    return DecisionReview.objects.select_related("decision", "decision__model_version", "reviewer", "requested_by")


def reviews_overdue(*, on: date) -> QuerySet[DecisionReview]:
    return DecisionReview.objects.filter(status=ReviewStatus.OPEN, due_at__lt=on)


def _window(queryset: QuerySet[Decision], *, model_version_id: int | None, since: datetime | None,
            until: datetime | None) -> QuerySet[Decision]:
    if model_version_id is not None:
        queryset = queryset.filter(model_version_id=model_version_id)
    if since is not None:
        queryset = queryset.filter(decided_at__gte=since)
    if until is not None:
        queryset = queryset.filter(decided_at__lt=until)
    return queryset


def decision_log_counts(
    *, model_version_id: int | None = None, since: datetime | None = None, until: datetime | None = None,
) -> list[dict]:
    """``[{"model_version", "day", "outcome", "decisions"}]``: decisions per model version,
    day (in TIME_ZONE) and outcome, one GROUP BY over the log, ordered by day."""
    rows = (
        _window(Decision.objects.all(), model_version_id=model_version_id, since=since, until=until)
        .annotate(day=TruncDate("decided_at", tzinfo=timezone.get_current_timezone()))
        .values("model_version_id", "day", "outcome")
        .annotate(decisions=Count("pk"))
        .order_by("day", "model_version_id", "outcome")
    )
    return [{"model_version": r["model_version_id"], "day": r["day"], "outcome": r["outcome"],
             "decisions": r["decisions"]} for r in rows]


def _top_features_text(explanation: dict | None) -> str:
    if not explanation:
        return ""
    if explanation.get("withheld"):
        return "withheld"
    return "; ".join(f"{t['feature']} {t['direction']}" for t in explanation.get("top_features") or [])


def decision_log_csv(
    *, model_version_id: int | None = None, since: datetime | None = None, until: datetime | None = None,
) -> Iterator[str]:
    """The decision log as CSV lines, read in chunks (the export of a large log never holds
    it in memory): no input value, no pseudonym (only whether a person was named)."""
    import json

    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def flush() -> str:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate(0)
        return text

    writer.writerow(EXPORT_COLUMNS)
    yield flush()
    latest_review = DecisionReview.objects.filter(decision=OuterRef("pk")).order_by("-id")
    queryset = (
        _window(Decision.objects.all(), model_version_id=model_version_id, since=since, until=until)
        .select_related("model_version")
        .annotate(review_status=Subquery(latest_review.values("status")[:1]),
                  review_outcome=Subquery(latest_review.values("outcome")[:1]))
        .order_by("decided_at", "id")
    )
    for d in queryset.iterator(chunk_size=EXPORT_CHUNK):
        writer.writerow([
            d.pk, d.decided_at.isoformat(), d.model_version.name, d.model_version_id, d.model_version.version,
            d.outcome, json.dumps(d.output, sort_keys=True, ensure_ascii=False), d.output_policy,
            "yes" if d.explanation and not d.explanation.get("withheld") else "no",
            "yes" if d.attributions_withheld else "no", _top_features_text(d.explanation),
            "yes" if d.subject_pseudonym else "no", d.input_hash, "yes" if d.review_status else "no",
            d.review_outcome or ("open" if d.review_status == ReviewStatus.OPEN else ""),
        ])
        yield flush()



def decisions_about_subject(pseudonym: str) -> dict:
    """The decisions recorded about one person, for their access answer (Art. 15(1)(h),
    Art. 22): when, by which model, the outcome as it was shown, what weighed most, and
    any review they asked for. Registered with governance.subject_data in DecisionsConfig;
    holds this person's decisions only (by pseudonym) and no input values, which are not kept."""
    decisions = (
        Decision.objects.filter(subject_pseudonym=pseudonym).select_related("model_version")
        .prefetch_related("reviews").order_by("decided_at", "pk")
    )
    items = []
    for d in decisions:
        reviews = [
            {"requested_at": r.requested_at.isoformat(), "status": r.get_status_display(),
             "outcome": r.get_outcome_display() if r.outcome else None, "reasons": r.reasons or None}
            for r in d.reviews.all()
        ]
        items.append({
            "decided_at": d.decided_at.isoformat(), "model": d.model_version.name,
            "version": d.model_version.version, "outcome": d.outcome, "output_as_shown": d.output,
            "what_weighed_most": _top_features_text(d.explanation) or None, "reviews": reviews,
        })
    return {
        "article": "Art. 15(1)(h), Art. 22", "title": "Decisions made about you with these models",
        "note": "Your inputs are not kept: each decision records its outcome, the features that weighed most "
                "and a keyed hash of the input. You may ask for a person to review any of them (Art. 22(3)).",
        "items": items,
    }
