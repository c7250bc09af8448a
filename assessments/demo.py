"""Reports: a DPIA filled from the evidence and signed, the Art. 30 record (PDF and CSV), a model card and the erasure certificate."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from assessments import selectors as dpia_selectors
from assessments import services
from assessments.models import DpiaStatus
from assessments.reports.evidence import data_minimisation_statement
from governance.demo_context import DemoContext
from governance.models import ProcessingActivity, ReportJob, ReportKind, ReportStatus
from governance.reports import jobs
from governance.reports.ropa import ropa_csv

RISKS = [
    {
        "description": "Membership inference: an attacker with model access learns that a patient's record was used.",
        "likelihood": "possible", "severity": "significant",
        "mitigations": "DP-SGD with a per-dataset ε budget; loss-threshold MIA audit before release.",
        "residual_likelihood": "remote", "residual_severity": "significant",
    },
    {
        "description": "Re-identification of patients by linking the joined dataset with other hospital data.",
        "likelihood": "possible", "severity": "severe",
        "mitigations": "HMAC-SHA-256 pseudonyms on arrival; key held apart; role-based access; no raw identifiers stored.",
        "residual_likelihood": "remote", "residual_severity": "severe",
    },
    {
        "description": "Processing after consent is withdrawn or retention passes.",
        "likelihood": "probable", "severity": "significant",
        "mitigations": "Consent-filtered snapshots; retention purge with Merkle-root amendments; erasure workflow.",
        "residual_likelihood": "remote", "residual_severity": "minimal",
    },
]


def _render(ctx: DemoContext, *, kind: str, object_id: int | None, actor) -> ReportJob:
    job = jobs.report_job_request(kind=kind, object_id=object_id, actor=actor, enqueue=False)
    job = jobs.report_job_run(job_id=job.pk)
    if job.status != ReportStatus.SUCCEEDED:
        ctx.fact(f"{kind} report FAILED", job.error)
    return job


def _activity(ctx: DemoContext) -> ProcessingActivity | None:
    activity = ctx.shared.get("processing_activity")
    if activity is None:
        dataset = ctx.shared.get("dataset")
        activity = dataset.processing_activity if dataset is not None else ProcessingActivity.objects.order_by("-id").first()
    return activity


def run(ctx: DemoContext) -> None:
    from mlops.models import ModelVersion

    dpo = ctx.shared.get("user_dpo")
    activity = _activity(ctx)
    if activity is None:
        ctx.say("no processing activity recorded: nothing to assess")
        return
    # The model the earlier steps trained, else the latest one trained on this activity's data.
    model_version = (
        ctx.shared.get("model_version")
        or ctx.shared.get("sisa_model_version")
        or ModelVersion.objects.filter(training_run__snapshot__dataset__processing_activity=activity).order_by("-id").first()
    )

    dpia = dpia_selectors.dpia_current(processing_activity_id=activity.pk)
    if dpia is None:
        dpia = services.dpia_create(
            processing_activity=activity, actor=dpo, model_version_ids=[model_version.pk] if model_version else [],
            models_used_for_decisions=True,
        )
    proposed = [a for a in dpia.screening.all() if a.proposed]
    ctx.fact("DPIA screening proposed from the records", ", ".join(a.criterion for a in proposed) or "no criterion")
    dpia = services.dpia_screening_confirm(
        dpia=dpia, actor=dpo, answers=[{"criterion": a.criterion, "answer": a.proposed} for a in dpia.screening.all()]
    )
    if not dpia.risks.exists():
        for risk in RISKS:
            services.dpia_risk_add(dpia=dpia, actor=dpo, **risk)
    dpia = services.dpia_update(
        dpia=dpia, actor=dpo,
        # Drafted from the datasets' schemas, so the text names the features the records hold.
        necessity_and_proportionality=data_minimisation_statement(processing_activity_id=activity.pk),
        measures="Differential privacy per model, MIA audit before release, privacy budget per dataset, audit chain.",
        dpo_advice="The DPO advises proceeding with DP training, with review at every new model version.",
        views_not_sought_reason="Patients' views are represented by the hospital's patient panel, consulted on the notice.",
        review_date=timezone.localdate() + timedelta(days=365),
    )
    if dpia.status == DpiaStatus.DRAFT:
        dpia = services.dpia_sign(dpia=dpia, actor=dpo)
    ctx.fact(
        "DPIA",
        f"v{dpia.version} signed; required: {dpia.effective_required} (35(3) cases: {', '.join(dpia.article_35_3_cases) or 'none'}); "
        f"prior consultation: {dpia.prior_consultation_required}",
    )
    job = _render(ctx, kind=ReportKind.DPIA, object_id=dpia.pk, actor=dpo)
    if job.status == ReportStatus.SUCCEEDED:
        ctx.artifact("DPIA report (PDF)", jobs.report_file_path(job))

    job = _render(ctx, kind=ReportKind.ROPA, object_id=None, actor=dpo)
    if job.status == ReportStatus.SUCCEEDED:
        ctx.artifact("record of processing activities (PDF)", jobs.report_file_path(job))
    csv_path = ctx.report_dir / "ropa" / "ropa.csv"
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    csv_path.write_text(ropa_csv(), encoding="utf-8")
    ctx.artifact("record of processing activities (CSV)", csv_path)

    if model_version is not None:
        job = _render(ctx, kind=ReportKind.MODEL_LINEAGE, object_id=model_version.pk, actor=dpo)
        if job.status == ReportStatus.SUCCEEDED:
            ctx.artifact(f"model lineage report ({model_version})", jobs.report_file_path(job))
    else:
        ctx.say("no model version trained: no model lineage report")

    # Set by the rights step of the demo, which runs before this one.
    erasure_request = ctx.shared.get("erasure_request")
    if erasure_request is not None:
        erasure_request.refresh_from_db()
        if erasure_request.certificate_path:
            job = _render(ctx, kind=ReportKind.ERASURE_CERTIFICATE, object_id=erasure_request.pk, actor=dpo)
            if job.status == ReportStatus.SUCCEEDED:
                ctx.artifact("erasure certificate (report job copy)", jobs.report_file_path(job))
    ctx.say(f"report jobs: {ReportJob.objects.filter(status=ReportStatus.SUCCEEDED).count()} succeeded, files under {settings.REPORT_ROOT}")
