"""How long a decision's inputs and the decision log are kept, and the purge that enforces it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import DateTimeField, ExpressionWrapper, F, OuterRef, Q, Subquery
from django.db.models.functions import Least
from django.utils import timezone

from decisions.models import Decision, DecisionInput, DecisionInputRetention, ReviewStatus
from governance.models import ProcessingActivity
from governance.services import ServiceError, audit_event_record

MAX_INPUT_RETENTION_DAYS = 3650
PURGE_CHUNK = 5000


@transaction.atomic
def decision_input_retention_set(
    *, processing_activity: ProcessingActivity, days: Any, article: Any = "", reason: Any, actor: Any,
) -> DecisionInputRetention:
    """Record whether the activity's decisions keep their inputs (``days`` > 0, with the
    article that justifies it) or not (0). Append-only; the latest row is in force at once:
    inputs already kept longer than the new period are cut to it (the purge deletes them)."""
    if isinstance(days, bool) or not isinstance(days, int) or not 0 <= days <= MAX_INPUT_RETENTION_DAYS:
        raise ServiceError(f"days: a whole number of days from 0 (inputs not kept) to {MAX_INPUT_RETENTION_DAYS}.",
                           field="days")
    article = article.strip() if isinstance(article, str) else ""
    if days and not article:
        raise ServiceError("article: name the provision that justifies keeping the inputs "
                           "(e.g. 'Art. 22(3) GDPR: human review on request').", field="article")
    if len(article) > 200:
        raise ServiceError("article: at most 200 characters.", field="article")
    if not isinstance(reason, str) or not reason.strip():
        raise ServiceError("reason: required: why this period is necessary.", field="reason")
    retention = DecisionInputRetention.objects.create(
        processing_activity=processing_activity, days=days, article=article, reason=reason.strip(),
        set_by=actor if getattr(actor, "pk", None) else None,
    )
    kept = DecisionInput.objects.filter(
        decision__model_version__training_run__snapshot__dataset__processing_activity=processing_activity
    )
    decided_at = Subquery(Decision.objects.filter(pk=OuterRef("decision_id")).values("decided_at")[:1])
    shortened = kept.update(expires_at=Least(
        F("expires_at"),
        ExpressionWrapper(decided_at + timedelta(days=days), output_field=DateTimeField()),
    ))
    audit_event_record(
        actor=actor, action="decision_input_retention.set", object_type="processing_activity",
        object_id=processing_activity.pk,
        details={"retention": retention.pk, "days": days, "article": article, "inputs_rechecked": shortened},
    )
    return retention


def decisions_purge(*, now=None) -> dict:
    """Delete the inputs past their ``expires_at`` and the decisions older than
    ``DECISION_LOG_RETENTION_DAYS`` (with their reviews), except a decision under an open
    review or one decided within the period. Idempotent: a second run finds nothing."""
    now = now or timezone.now()
    cutoff = now - timedelta(days=settings.DECISION_LOG_RETENTION_DAYS)
    inputs = 0
    while True:
        with transaction.atomic():
            ids = list(DecisionInput.objects.filter(expires_at__lte=now).values_list("pk", flat=True)[:PURGE_CHUNK])
            if not ids:
                break
            inputs += DecisionInput.objects.filter(pk__in=ids).delete()[0]
    decisions = 0
    keep = Q(reviews__status=ReviewStatus.OPEN) | Q(reviews__decided_at__gte=cutoff)
    while True:
        with transaction.atomic():
            ids = list(Decision.objects.filter(decided_at__lt=cutoff).exclude(keep)
                       .values_list("pk", flat=True).distinct()[:PURGE_CHUNK])
            if not ids:
                break
            deleted = Decision.objects.filter(pk__in=ids).delete()[1]
            decisions += deleted.get("decisions.Decision", 0)
    if inputs or decisions:
        with transaction.atomic():
            audit_event_record(
                actor=None, action="decisions.purged", object_type="decision_log",
                details={"inputs_deleted": inputs, "decisions_deleted": decisions,
                         "log_retention_days": settings.DECISION_LOG_RETENTION_DAYS, "before": cutoff.isoformat()},
            )
    return {"inputs_deleted": inputs, "decisions_deleted": decisions}


@transaction.atomic
def decisions_subject_forget(*, pseudonyms: list[str], actor: Any = None) -> dict:
    """Unlink erased people from their decisions (Art. 17): the pseudonym is blanked (the
    decision, its output and its review stay in the log, about no one) and any input kept for
    those decisions is deleted now. Idempotent. Meant for the receiver of an erasure signal:
    rights, which erases, stands beside decisions and does not import it."""
    pseudonyms = sorted({p for p in pseudonyms if isinstance(p, str) and p})
    if not pseudonyms:
        return {"decisions_unlinked": 0, "inputs_deleted": 0}
    decisions = Decision.objects.filter(subject_pseudonym__in=pseudonyms)
    inputs = DecisionInput.objects.filter(decision__in=decisions).delete()[0]
    unlinked = decisions.update(subject_pseudonym="")
    if unlinked or inputs:
        audit_event_record(
            actor=actor, action="decisions.subject_forgotten", object_type="decision_log",
            details={"people": len(pseudonyms), "decisions_unlinked": unlinked, "inputs_deleted": inputs},
        )
    return {"decisions_unlinked": unlinked, "inputs_deleted": inputs}
