"""Reads for DPIAs: the list, one DPIA with its parts, and the screening evidence.

The screening evidence is computed with a fixed number of aggregate queries, whatever the
number of records and subjects behind the processing activity.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.conf import settings
from django.db.models import Count, Prefetch, Q, QuerySet

from assessments.models import Dpia, DpiaRisk, DpiaScreeningAnswer, Wp248Criterion
from governance.models import ProcessingActivity, ReportJob


def dpia_list(*, processing_activity_id: int | None = None, status: str | None = None) -> QuerySet[Dpia]:
    qs = Dpia.objects.select_related("processing_activity", "signed_by").prefetch_related(
        Prefetch("screening", queryset=DpiaScreeningAnswer.objects.order_by("id")),
        Prefetch("risks", queryset=DpiaRisk.objects.order_by("id")),
        "model_versions",
    )
    if processing_activity_id is not None:
        qs = qs.filter(processing_activity_id=processing_activity_id)
    if status:
        qs = qs.filter(status=status)
    return qs.order_by("processing_activity_id", "-version")


def dpia_current(*, processing_activity_id: int) -> Dpia | None:
    """The latest version of an activity's DPIA, whatever its status."""
    return Dpia.objects.filter(processing_activity_id=processing_activity_id).order_by("-version").first()


@dataclass
class ScreeningProposal:
    criterion: str
    proposed: bool
    source: str


@dataclass
class ScreeningEvidence:
    proposals: list[ScreeningProposal] = field(default_factory=list)
    subject_count: int = 0
    record_count: int = 0


def _names(values: list[str]) -> str:
    return ", ".join(values[:8]) + (f" and {len(values) - 8} more" if len(values) > 8 else "")


def dpia_screening_evidence(
    *, processing_activity: ProcessingActivity, model_version_ids: list[int], models_used_for_decisions: bool
) -> ScreeningEvidence:
    """Propose an answer to each WP248 criterion from the records, with the evidence used."""
    from mlops.models import TrainingRun
    from provenance.models import DataRecord, Dataset

    activity = processing_activity
    sensitive = list(
        activity.data_categories.filter(Q(special_category__gt="") | Q(criminal_offence_data=True))
        .order_by("code")
        .values_list("code", flat=True)
    )
    vulnerable = list(
        activity.data_subject_categories.filter(vulnerable=True).order_by("code").values_list("code", flat=True)
    )
    totals = DataRecord.objects.filter(dataset__processing_activity=activity).aggregate(
        records=Count("id"), subjects=Count("subject", distinct=True)
    )
    combined = list(
        Dataset.objects.filter(processing_activity=activity)
        .annotate(n_parents=Count("parents"))
        .filter(n_parents__gte=2)
        .order_by("name")
        .values_list("name", flat=True)
    )
    training_runs = TrainingRun.objects.filter(snapshot__dataset__processing_activity=activity).count()
    threshold = settings.DPIA_LARGE_SCALE_SUBJECTS
    subjects = totals["subjects"] or 0

    def add(criterion: str, proposed: bool, source: str) -> None:
        evidence.proposals.append(ScreeningProposal(criterion, proposed, source))

    evidence = ScreeningEvidence(subject_count=subjects, record_count=totals["records"] or 0)
    decisions_source = (
        "Marked as used to take decisions about people."
        if models_used_for_decisions
        else "The covered models are not marked as used to take decisions about people."
    )
    add(Wp248Criterion.EVALUATION_SCORING, models_used_for_decisions, decisions_source)
    add(Wp248Criterion.AUTOMATED_DECISION, models_used_for_decisions, decisions_source)
    add(Wp248Criterion.SYSTEMATIC_MONITORING, False, "Not derivable from the records: for the DPO to answer.")
    add(
        Wp248Criterion.SENSITIVE_DATA,
        bool(sensitive),
        f"Art. 9/10 data categories: {_names(sensitive)}." if sensitive else "No Art. 9 or Art. 10 data category recorded.",
    )
    add(
        Wp248Criterion.LARGE_SCALE,
        subjects >= threshold,
        f"{subjects} data subjects in the activity's datasets (threshold {threshold}).",
    )
    add(
        Wp248Criterion.MATCHING_COMBINING,
        bool(combined),
        f"Datasets derived from several parents: {_names(combined)}." if combined else "No dataset combines several parents.",
    )
    add(
        Wp248Criterion.VULNERABLE_SUBJECTS,
        bool(vulnerable),
        f"Vulnerable data-subject categories: {_names(vulnerable)}." if vulnerable else "No data-subject category is marked vulnerable.",
    )
    uses_ml = training_runs > 0 or bool(model_version_ids)
    add(
        Wp248Criterion.INNOVATIVE_TECHNOLOGY,
        uses_ml,
        f"Machine-learning training: {training_runs} training run(s), {len(model_version_ids)} covered model version(s)."
        if uses_ml
        else "No machine-learning training recorded.",
    )
    add(Wp248Criterion.PREVENTS_RIGHTS, False, "Not derivable from the records: for the DPO to answer.")
    return evidence


def article_35_3_cases(answers: dict[str, bool]) -> list[str]:
    """The Art. 35(3) cases the screening answers amount to (a DPIA is then always required)."""
    cases = []
    if answers.get(Wp248Criterion.EVALUATION_SCORING) and answers.get(Wp248Criterion.AUTOMATED_DECISION):
        cases.append("a")
    if answers.get(Wp248Criterion.LARGE_SCALE) and answers.get(Wp248Criterion.SENSITIVE_DATA):
        cases.append("b")
    if answers.get(Wp248Criterion.LARGE_SCALE) and answers.get(Wp248Criterion.SYSTEMATIC_MONITORING):
        cases.append("c")
    return cases


def dpia_required_from(answers: dict[str, bool]) -> tuple[bool, list[str]]:
    """WP248: two or more criteria make a DPIA required; so does any Art. 35(3) case."""
    cases = article_35_3_cases(answers)
    return (sum(bool(v) for v in answers.values()) >= 2 or bool(cases)), cases


def dpia_report_latest(*, dpia: Dpia) -> tuple[ReportJob | None, bool]:
    """The last successful rendering of ``dpia``'s report, and whether the DPIA has changed
    since it was rendered (its content, a risk added or a screening answer confirmed)."""
    from django.db.models import Max

    from governance.models import ReportKind, ReportStatus

    job = (
        ReportJob.objects.filter(kind=ReportKind.DPIA, object_id=dpia.pk, status=ReportStatus.SUCCEEDED)
        .order_by("-started_at", "-id").first()
    )
    if job is None:
        return None, False
    changes = [dpia.updated_at]
    changes.append(DpiaRisk.objects.filter(dpia=dpia).aggregate(at=Max("created_at"))["at"])
    changes.append(DpiaScreeningAnswer.objects.filter(dpia=dpia).aggregate(at=Max("confirmed_at"))["at"])
    changed_at = max((c for c in changes if c is not None), default=None)
    return job, changed_at is not None and job.started_at is not None and changed_at > job.started_at
