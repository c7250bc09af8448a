"""Contesting a decision (GDPR Art. 22(3)): a person, through the controller, asks for
human intervention; a DPO reviews it and records the outcome and the reasons."""

from __future__ import annotations

import calendar
from datetime import date, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from decisions.models import Decision, DecisionReview, ReviewChannel, ReviewOutcome, ReviewStatus
from governance.models import DataSubject
from governance.roles import DPO, has_role
from governance.services import ServiceConflict, ServiceError, audit_event_record, moment_for_field

REASON_MAX_LENGTH = 10_000


# The Art. 12(3) deadline. rights.deadlines holds the same rule, but decisions stands beside
# rights and may not import it (the independence contract); the one-month EU rule
# (Reg. 1182/71 Art. 3: the day of receipt does not count, a month ends on the same date of
# the next month or that month's last day, a weekend or public holiday runs to the next
# working day) is short enough to state here, with the same holiday settings.
def _add_month(day: date) -> date:
    year, month = (day.year + 1, 1) if day.month == 12 else (day.year, day.month + 1)
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def _holidays() -> set[date]:
    values = list(settings.ERASURE_PUBLIC_HOLIDAYS)
    if settings.ERASURE_PUBLIC_HOLIDAYS_FILE:
        with open(settings.ERASURE_PUBLIC_HOLIDAYS_FILE, encoding="utf-8") as fh:
            values += fh.read().splitlines()
    out = set()
    for raw in values:
        text = raw.split("#", 1)[0].strip()
        if text:
            out.add(date.fromisoformat(text))
    return out


def review_due_date(*, received_on: date) -> date:
    """The last day on which the review is answered in time (Art. 12(3), EU counting)."""
    due = _add_month(received_on)
    holidays = _holidays()
    while due.weekday() >= 5 or due in holidays:
        due += timedelta(days=1)
    return due


def _subject_ref(decision: Decision):
    """The person's audit reference when they are a known subject (never the pseudonym)."""
    if not decision.subject_pseudonym:
        return None
    return DataSubject.objects.filter(pseudonym=decision.subject_pseudonym).values_list("reference", flat=True).first()


def _text(value: Any, *, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ServiceError(f"{field}: required, in words.", field=field)
    if len(value) > REASON_MAX_LENGTH:
        raise ServiceError(f"{field}: at most {REASON_MAX_LENGTH:,} characters.", field=field)
    return value.strip()


@transaction.atomic
def decision_contest(
    *, decision: Decision, reason: Any, channel: Any = ReviewChannel.API, actor: Any = None,
    received_at: Any = None,
) -> DecisionReview:
    """Open a review of ``decision`` with its deadline. Refused (409) while another review
    of the same decision is open: the person gets one answer at a time."""
    reason = _text(reason, field="reason")
    if channel not in ReviewChannel.values:
        raise ServiceError(f"channel: one of {', '.join(ReviewChannel.values)}.", field="channel")
    received = timezone.now() if received_at in (None, "") else (
        received_at if isinstance(received_at, datetime) else moment_for_field(received_at, field="received_at"))
    if received > timezone.now() + timedelta(minutes=5):
        raise ServiceError("received_at: a request cannot be received in the future.", field="received_at")
    # The decision's row lock serialises contests of the same decision.
    decision = Decision.objects.select_for_update().get(pk=decision.pk)
    open_review = DecisionReview.objects.filter(decision=decision, status=ReviewStatus.OPEN).first()
    if open_review is not None:
        raise ServiceConflict(
            f"Decision {decision.pk} already has an open review ({open_review.pk}, due "
            f"{open_review.due_at.isoformat()}): it is answered first."
        )
    review = DecisionReview.objects.create(
        decision=decision, reason=reason, channel=channel, requested_at=received,
        due_at=review_due_date(received_on=timezone.localtime(received).date()),
        requested_by=actor if getattr(actor, "pk", None) else None,
    )
    audit_event_record(
        actor=actor, action="decision_review.requested", object_type="decision_review", object_id=review.pk,
        subject_ref=_subject_ref(decision),
        details={"decision": decision.pk, "model_version": decision.model_version_id, "review_channel": channel,
                 "due_at": review.due_at.isoformat(), "article": "Art. 22(3)"},
    )
    return review


def _new_output(value: Any, *, decision: Decision) -> dict:
    classes = list((decision.model_version.training_run.encoding or {}).get("classes") or [])
    if not isinstance(value, dict) or "label" not in value:
        raise ServiceError("new_output: an object with the new 'label' is required when the outcome is 'changed'.",
                           field="new_output")
    by_text = {str(c): c for c in classes}
    label = value["label"]
    if str(label) not in by_text or isinstance(label, dict | list):
        raise ServiceError(f"new_output.label: one of the model's classes ({', '.join(by_text)}).",
                           field="new_output.label")
    if str(label) == decision.outcome:
        raise ServiceError(f"new_output.label: {label!r} is the decision's own outcome; a review that keeps it is "
                           "'upheld'.", field="new_output.label")
    unknown = sorted(set(value) - {"label", "note"})
    if unknown:
        raise ServiceError(f"new_output.{unknown[0]}: not a field of a reviewed output (label, note).",
                           field=f"new_output.{unknown[0]}")
    out = {"label": by_text[str(label)]}
    if "note" in value:
        out["note"] = _text(value["note"], field="new_output.note")
    return out


@transaction.atomic
def decision_review_decide(
    *, review: DecisionReview, outcome: Any, reasons: Any, reviewer: Any, new_output: Any = None,
) -> DecisionReview:
    """Record the reviewer's outcome and reasons. Only a DPO reviews; a review is decided
    once (409 the second time)."""
    if not has_role(reviewer, DPO):
        raise ServiceError("reviewer: a review is decided by a DPO (a person, Art. 22(3)).", field="reviewer")
    if outcome not in ReviewOutcome.values:
        raise ServiceError(f"outcome: one of {', '.join(ReviewOutcome.values)}.", field="outcome")
    reasons = _text(reasons, field="reasons")
    review = DecisionReview.objects.select_for_update().select_related(
        "decision__model_version__training_run").get(pk=review.pk)
    if review.status != ReviewStatus.OPEN:
        raise ServiceConflict(
            f"Review {review.pk} was decided on {timezone.localtime(review.decided_at):%Y-%m-%d %H:%M} "
            f"({review.get_outcome_display().lower()}); a decided review is not decided again."
        )
    if outcome == ReviewOutcome.CHANGED:
        new = _new_output(new_output, decision=review.decision)
    elif new_output not in (None, {}):
        raise ServiceError("new_output: only for the outcome 'changed'.", field="new_output")
    else:
        new = None
    now = timezone.now()
    review.status, review.outcome, review.reasons = ReviewStatus.DECIDED, outcome, reasons
    review.reviewer, review.decided_at, review.new_output = reviewer, now, new
    review.save(update_fields=["status", "outcome", "reasons", "reviewer", "decided_at", "new_output"])
    audit_event_record(
        actor=reviewer, action="decision_review.decided", object_type="decision_review", object_id=review.pk,
        subject_ref=_subject_ref(review.decision),
        details={"decision": review.decision_id, "model_version": review.decision.model_version_id,
                 "review_outcome": outcome, "in_time": timezone.localtime(now).date() <= review.due_at,
                 "new_label": None if new is None else str(new["label"])},
    )
    return review
