"""Services for DPIAs (Art. 35) and report jobs. Keyword-only, atomic, audited.

A signed DPIA version is never edited: a change to it starts a new draft version that
copies the signed one (screening, risks, covered models), and the change lands there.
"""

from __future__ import annotations

import logging
from datetime import date
from typing import Any

from django.db import transaction
from django.utils import timezone

from assessments import selectors
from assessments.models import (
    Dpia,
    DpiaRisk,
    DpiaScreeningAnswer,
    DpiaStatus,
    Likelihood,
    Severity,
    Wp248Criterion,
    risk_level,
)
from governance.models import ProcessingActivity, ReportJob
from governance.services import ServiceConflict, ServiceError, audit_event_record

logger = logging.getLogger(__name__)

TEXT_FIELDS = (
    "title",
    "systematic_description",
    "necessity_and_proportionality",
    "measures",
    "dpo_advice",
    "data_subject_views",
    "views_not_sought_reason",
    "required_override_justification",
)
UPDATABLE_FIELDS = frozenset(TEXT_FIELDS) | {"review_date", "models_used_for_decisions", "required_override", "model_version_ids"}


def _model_versions(ids: list[int] | None) -> list:
    from mlops.models import ModelVersion

    ids = list(dict.fromkeys(ids or []))
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ServiceError("Model version ids must be integers.", field="model_version_ids")
    found = list(ModelVersion.objects.filter(pk__in=ids))
    missing = sorted(set(ids) - {m.pk for m in found})
    if missing:
        raise ServiceError(f"No model version with id {', '.join(map(str, missing))}.", field="model_version_ids")
    return found


def _answers(dpia: Dpia) -> dict[str, bool]:
    return {a.criterion: a.answer for a in dpia.screening.all()}


def _refresh_required(dpia: Dpia) -> None:
    dpia.dpia_required, dpia.article_35_3_cases = selectors.dpia_required_from(_answers(dpia))


def _describe(activity: ProcessingActivity, evidence: selectors.ScreeningEvidence) -> str:
    purposes = ", ".join(activity.purposes.order_by("code").values_list("code", flat=True)) or "none recorded"
    return (
        f"{activity.name}: {(activity.description or 'no description recorded').rstrip('.')}. "
        f"Purposes: {purposes}. Lawful basis: {activity.get_lawful_basis_display()}. "
        f"At the time of this assessment the activity's datasets hold {evidence.record_count} records "
        f"of {evidence.subject_count} data subjects, known only by keyed pseudonyms."
    )


@transaction.atomic
def dpia_create(
    *,
    processing_activity: ProcessingActivity,
    actor: Any,
    title: str = "",
    model_version_ids: list[int] | None = None,
    models_used_for_decisions: bool = False,
    **content: Any,
) -> Dpia:
    """Open the first DPIA version of an activity, with the screening proposed from the records."""
    unknown = set(content) - set(TEXT_FIELDS) - {"review_date", "required_override"}
    if unknown:
        raise ServiceError(f"Unknown field(s): {', '.join(sorted(unknown))}.", field=sorted(unknown)[0])
    if Dpia.objects.filter(processing_activity=processing_activity).exists():
        raise ServiceConflict(
            "This processing activity already has a DPIA: change it with PATCH (a signed version starts a new one)."
        )
    model_versions = _model_versions(model_version_ids)
    evidence = selectors.dpia_screening_evidence(
        processing_activity=processing_activity,
        model_version_ids=[m.pk for m in model_versions],
        models_used_for_decisions=models_used_for_decisions,
    )
    content.setdefault("systematic_description", _describe(processing_activity, evidence))
    dpia = Dpia.objects.create(
        processing_activity=processing_activity,
        title=title or f"DPIA: {processing_activity.name}",
        models_used_for_decisions=models_used_for_decisions,
        created_by=actor if getattr(actor, "pk", None) else None,
        **content,
    )
    dpia.model_versions.set(model_versions)
    DpiaScreeningAnswer.objects.bulk_create(
        [DpiaScreeningAnswer(dpia=dpia, criterion=p.criterion, proposed=p.proposed, source=p.source) for p in evidence.proposals]
    )
    _refresh_required(dpia)
    dpia.save(update_fields=["dpia_required", "article_35_3_cases"])
    audit_event_record(
        actor=actor,
        action="dpia.created",
        object_type="dpia",
        object_id=dpia.pk,
        details={
            "processing_activity": processing_activity.pk,
            "version": dpia.version,
            "model_versions": [m.pk for m in model_versions],
            "proposed_criteria": [p.criterion for p in evidence.proposals if p.proposed],
            "dpia_required": dpia.dpia_required,
        },
    )
    return dpia


def _new_version_of(dpia: Dpia, *, actor: Any) -> Dpia:
    """Copy a signed version into a new draft version (screening, risks and covered models too)."""
    latest = Dpia.objects.select_for_update().filter(processing_activity_id=dpia.processing_activity_id).order_by("-version").first()
    if latest.pk != dpia.pk:
        raise ServiceConflict(f"Version {dpia.version} is not the latest: change version {latest.version} instead.")
    skip = {"id", "version", "previous_version", "status", "signed_by", "signed_at", "review_reason",
            "marked_for_review_at", "created_at", "updated_at", "created_by"}
    values = {f.attname: getattr(dpia, f.attname) for f in Dpia._meta.concrete_fields if f.name not in skip}
    new = Dpia.objects.create(
        **values, version=dpia.version + 1, previous_version=dpia, status=DpiaStatus.DRAFT,
        created_by=actor if getattr(actor, "pk", None) else None,
    )
    new.model_versions.set(dpia.model_versions.all())
    DpiaScreeningAnswer.objects.bulk_create(
        [
            DpiaScreeningAnswer(
                dpia=new, criterion=a.criterion, proposed=a.proposed, source=a.source, confirmed=a.confirmed,
                override_reason=a.override_reason, confirmed_by_id=a.confirmed_by_id, confirmed_at=a.confirmed_at,
            )
            for a in dpia.screening.all()
        ]
    )
    DpiaRisk.objects.bulk_create(
        [
            DpiaRisk(
                dpia=new, description=r.description, likelihood=r.likelihood, severity=r.severity,
                inherent_level=r.inherent_level, mitigations=r.mitigations, residual_likelihood=r.residual_likelihood,
                residual_severity=r.residual_severity, residual_level=r.residual_level,
            )
            for r in dpia.risks.all()
        ]
    )
    audit_event_record(
        actor=actor, action="dpia.version_started", object_type="dpia", object_id=new.pk,
        details={"processing_activity": new.processing_activity_id, "version": new.version, "previous_version_id": dpia.pk},
    )
    return new


def _editable(dpia: Dpia, *, actor: Any) -> Dpia:
    """The version a change should land on: the draft itself, or a new version of a signed one."""
    dpia = Dpia.objects.select_for_update().get(pk=dpia.pk)
    if dpia.status == DpiaStatus.DRAFT:
        return dpia
    return _new_version_of(dpia, actor=actor)


@transaction.atomic
def dpia_update(*, dpia: Dpia, actor: Any, **changes: Any) -> Dpia:
    """Change a DPIA's content; on a signed version the change starts (and lands in) a new version."""
    unknown = set(changes) - UPDATABLE_FIELDS
    if unknown:
        raise ServiceError(f"Unknown or read-only field(s): {', '.join(sorted(unknown))}.", field=sorted(unknown)[0])
    if not changes:
        raise ServiceError("Nothing to change: send at least one field.", field="non_field_errors")
    model_versions = _model_versions(changes.pop("model_version_ids")) if "model_version_ids" in changes else None
    review_date = changes.get("review_date")
    if review_date is not None and not isinstance(review_date, date):
        raise ServiceError("Give the review date as YYYY-MM-DD.", field="review_date")
    target = _editable(dpia, actor=actor)
    for name, value in changes.items():
        setattr(target, name, value)
    if model_versions is not None:
        target.model_versions.set(model_versions)
    _refresh_required(target)
    target.save()
    audit_event_record(
        actor=actor, action="dpia.updated", object_type="dpia", object_id=target.pk,
        details={
            "version": target.version,
            "fields": sorted(changes) + (["model_version_ids"] if model_versions is not None else []),
        },
    )
    return target


@transaction.atomic
def dpia_screening_confirm(
    *,
    dpia: Dpia,
    actor: Any,
    answers: list[dict],
    required_override: bool | None = None,
    required_override_justification: str = "",
) -> Dpia:
    """Record the DPO's answer to screening criteria; an answer against the proposal needs a reason.

    ``answers``: ``[{"criterion": "large_scale", "answer": true, "reason": "..."}]``.
    """
    valid = set(Wp248Criterion.values)
    parsed: dict[str, tuple[bool, str]] = {}
    for i, item in enumerate(answers or []):
        criterion = item.get("criterion") if isinstance(item, dict) else None
        if criterion not in valid:
            raise ServiceError(f"answers[{i}]: unknown criterion {criterion!r}; one of {', '.join(sorted(valid))}.", field="answers")
        if not isinstance(item.get("answer"), bool):
            raise ServiceError(f"answers[{i}] ({criterion}): 'answer' must be true or false.", field="answers")
        parsed[criterion] = (item["answer"], str(item.get("reason") or "").strip())
    if required_override is not None and not required_override_justification.strip():
        raise ServiceError("Overriding whether a DPIA is required needs a justification.", field="required_override_justification")
    target = _editable(dpia, actor=actor)
    now = timezone.now()
    by_criterion = {a.criterion: a for a in target.screening.all()}
    changed = []
    for criterion, (answer, reason) in parsed.items():
        row = by_criterion[criterion]
        if answer != row.proposed and not reason:
            raise ServiceError(
                f"{criterion}: the answer departs from the proposal ({row.proposed}); give the reason.", field="answers"
            )
        row.confirmed, row.override_reason, row.confirmed_by, row.confirmed_at = answer, reason, (
            actor if getattr(actor, "pk", None) else None
        ), now
        changed.append(row)
    DpiaScreeningAnswer.objects.bulk_update(changed, ["confirmed", "override_reason", "confirmed_by", "confirmed_at"])
    if required_override is not None:
        target.required_override = required_override
        target.required_override_justification = required_override_justification.strip()
    _refresh_required(target)
    target.save()
    audit_event_record(
        actor=actor, action="dpia.screening_confirmed", object_type="dpia", object_id=target.pk,
        details={
            "version": target.version,
            "confirmed": len(changed),
            "overridden": sorted(c.criterion for c in changed if c.confirmed != c.proposed),
            "dpia_required": target.dpia_required,
            "required_override": target.required_override,
        },
    )
    return target


def _scale(value: Any, choices: type, field: str) -> str:
    if value not in choices.values:
        raise ServiceError(f"{value!r} is not on the scale: choose one of {', '.join(choices.values)}.", field=field)
    return value


@transaction.atomic
def dpia_risk_add(
    *,
    dpia: Dpia,
    actor: Any,
    description: str,
    likelihood: str,
    severity: str,
    mitigations: str = "",
    residual_likelihood: str | None = None,
    residual_severity: str | None = None,
) -> DpiaRisk:
    """Add a risk to the register (Art. 35(7)(c)) on 3-point scales; levels follow the ICO matrix."""
    if not str(description or "").strip():
        raise ServiceError("Describe the risk to the rights and freedoms of data subjects.", field="description")
    _scale(likelihood, Likelihood, "likelihood")
    _scale(severity, Severity, "severity")
    residual_likelihood = _scale(residual_likelihood or likelihood, Likelihood, "residual_likelihood")
    residual_severity = _scale(residual_severity or severity, Severity, "residual_severity")
    target = _editable(dpia, actor=actor)
    risk = DpiaRisk.objects.create(
        dpia=target, description=description.strip(), likelihood=likelihood, severity=severity,
        inherent_level=risk_level(likelihood, severity), mitigations=mitigations,
        residual_likelihood=residual_likelihood, residual_severity=residual_severity,
        residual_level=risk_level(residual_likelihood, residual_severity),
    )
    target.save(update_fields=["updated_at"])
    audit_event_record(
        actor=actor, action="dpia.risk_added", object_type="dpia", object_id=target.pk,
        details={"version": target.version, "risk": risk.pk, "inherent": risk.inherent_level, "residual": risk.residual_level},
    )
    return risk


def dpia_missing_sections(dpia: Dpia) -> list[str]:
    """The sections a DPIA cannot be signed without, by their field names."""
    missing = []
    for name in ("systematic_description", "necessity_and_proportionality", "dpo_advice"):
        if not getattr(dpia, name).strip():
            missing.append(name)
    if not dpia.risks.exists():
        missing.append("risks")
    if not dpia.measures.strip() and not dpia.risks.exclude(mitigations="").exists():
        missing.append("measures")
    if not dpia.data_subject_views.strip() and not dpia.views_not_sought_reason.strip():
        missing.append("data_subject_views")
    if dpia.review_date is None:
        missing.append("review_date")
    unconfirmed = sorted(dpia.screening.filter(confirmed__isnull=True).values_list("criterion", flat=True))
    if unconfirmed:
        missing.append("screening")
    if dpia.required_override is not None and not dpia.required_override_justification.strip():
        missing.append("required_override_justification")
    return missing


@transaction.atomic
def dpia_sign(*, dpia: Dpia, actor: Any) -> Dpia:
    """Sign a draft: it becomes immutable; Art. 36 prior consultation is flagged if a high residual risk remains."""
    dpia = Dpia.objects.select_for_update().get(pk=dpia.pk)
    if dpia.status != DpiaStatus.DRAFT:
        raise ServiceConflict(f"Version {dpia.version} is already signed; change it to start a new version.")
    missing = dpia_missing_sections(dpia)
    if missing:
        raise ServiceError(
            f"Cannot sign: required section(s) empty: {', '.join(missing)}.", field="sections", missing=missing
        )
    if dpia.review_date <= timezone.localdate():
        raise ServiceError("The review date must be in the future.", field="review_date")
    dpia.prior_consultation_required = dpia.risks.filter(residual_level="high").exists()
    dpia.status = DpiaStatus.SIGNED
    dpia.signed_by = actor if getattr(actor, "pk", None) else None
    dpia.signed_at = timezone.now()
    dpia.save()
    audit_event_record(
        actor=actor, action="dpia.signed", object_type="dpia", object_id=dpia.pk,
        details={
            "version": dpia.version,
            "review_date": dpia.review_date.isoformat(),
            "prior_consultation_required": dpia.prior_consultation_required,
            "risks": dpia.risks.count(),
        },
    )
    return dpia


@transaction.atomic
def dpia_mark_for_review(
    *, reason: str, actor: Any = None, processing_activity_ids: list[int] | None = None, model_version_ids: list[int] | None = None
) -> int:
    """Mark the signed DPIAs whose evidence changed as needing review; returns how many.

    Call it when a model version is released or tainted, or a privacy budget is exceeded:
    with the activities concerned, or the model versions (covered models are matched).
    One set-based UPDATE and one audit event for the whole batch.
    """
    from django.db.models import Q

    if not processing_activity_ids and not model_version_ids:
        return 0
    where = Q()
    if processing_activity_ids:
        where |= Q(processing_activity_id__in=processing_activity_ids)
    if model_version_ids:
        where |= Q(model_versions__in=model_version_ids)
    ids = list(Dpia.objects.filter(where, status=DpiaStatus.SIGNED).values_list("pk", flat=True).distinct())
    if not ids:
        return 0
    now = timezone.now()
    # Only the review fields change: a signed version's content stays as signed.
    count = Dpia.objects.filter(pk__in=ids, status=DpiaStatus.SIGNED).update(
        status=DpiaStatus.REVIEW_REQUIRED, review_reason=reason[:2000], marked_for_review_at=now, updated_at=now
    )
    audit_event_record(
        actor=actor, action="dpia.marked_for_review", object_type="dpia", object_id=",".join(map(str, ids[:20])),
        details={"count": count, "reason": reason[:500], "dpia_ids": ids[:100]},
    )
    return count


def dpia_report_render(*, dpia: Dpia, actor: Any) -> ReportJob:
    """Render ``dpia``'s PDF now and keep it as a report job (audited as report.generated).

    Not atomic on purpose: the job row moves through its states in short transactions of
    its own (governance.reports.jobs), so a failed rendering is recorded, not rolled back.
    GET /dpias/{id}/report/ serves the last rendering and never renders.
    """
    from governance.models import ReportKind
    from governance.reports import jobs

    job = jobs.report_job_request(kind=ReportKind.DPIA, object_id=dpia.pk, actor=actor, enqueue=False)
    return jobs.report_job_run(job_id=job.pk)
