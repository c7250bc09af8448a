"""Admin pages for DPIAs.

Every change goes through the services, so the admin writes the same audit events and
obeys the same rules as the API: a signed version is read-only here, and saving a change
to it starts a new version.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponseRedirect
from django.urls import path, reverse
from django.utils.html import format_html

from assessments import services
from assessments.models import Dpia, DpiaRisk, DpiaScreeningAnswer, DpiaStatus
from governance import display
from governance.admin_mixins import ModelAdmin, TabularInline
from governance.admin_panels import Button, Panel, PanelsAdminMixin
from governance.models import ReportJob, ReportKind
from governance.reports import jobs
from governance.roles import AUDITOR, DPO, has_role
from governance.services import ServiceError
from mlops.admin import model_version_panel_register

CONTENT_FIELDS = [
    "title", "models_used_for_decisions", "model_versions", "systematic_description", "necessity_and_proportionality",
    "measures", "dpo_advice", "data_subject_views", "views_not_sought_reason", "review_date", "required_override",
    "required_override_justification",
]
# Read-only state, shown in words: moments without seconds, the Art. 35(3) cases as letters.
STATE_FIELDS = [
    "version", "previous_version", "status", "dpia_required", "article_35_3_shown", "prior_consultation_required",
    "signed_by", "signed_shown", "review_reason", "marked_shown", "created_by", "created_shown", "updated_shown",
]


def _is_draft(obj) -> bool:
    return obj is None or obj.status == DpiaStatus.DRAFT


@model_version_panel_register
def dpias_covering_panel(request, model_version) -> Panel:
    """The DPIAs that list a model version, on that version's page (assessments stands above
    mlops, so it adds the panel rather than mlops reaching up)."""
    rows = [
        [display.link(reverse("admin:assessments_dpia_change", args=[d.pk]), str(d)),
         d.processing_activity.name, display.moment(d.signed_at), display.moment(d.review_date)]
        for d in Dpia.objects.filter(model_versions=model_version).select_related("processing_activity").order_by("pk")
    ]
    body = display.table(["DPIA", "Processing activity", "Signed", "Review by"], rows,
                         empty="No DPIA lists this model version.")
    return Panel("DPIAs that cover it", body)


class ScreeningInline(TabularInline):
    model = DpiaScreeningAnswer
    fields = ["criterion", "proposed", "source", "confirmed", "override_reason", "confirmed_by", "confirmed_shown"]
    readonly_fields = ["criterion", "proposed", "source", "confirmed_by", "confirmed_shown"]
    extra = 0
    can_delete = False

    @admin.display(description="confirmed at")
    def confirmed_shown(self, obj) -> str:
        return display.moment(obj.confirmed_at)

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return _is_draft(obj) and super().has_change_permission(request, obj)


class RiskInline(TabularInline):
    model = DpiaRisk
    fields = [
        "description", "likelihood", "severity", "inherent_level", "mitigations", "residual_likelihood",
        "residual_severity", "residual_level",
    ]
    readonly_fields = ["inherent_level", "residual_level"]
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return obj is not None and _is_draft(obj)

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Dpia)
class DpiaAdmin(PanelsAdminMixin, ModelAdmin):
    list_display = ["title", "processing_activity", "version", "status", "effective_required", "prior_consultation_required", "review_date", "signed_shown"]
    list_filter = ["status", "prior_consultation_required", "processing_activity"]
    search_fields = ["title", "processing_activity__name"]
    inlines = [ScreeningInline, RiskInline]
    filter_horizontal = ["model_versions"]
    actions = ["sign_selected", "generate_pdf"]

    @admin.display(boolean=True, description="DPIA required")
    def effective_required(self, obj: Dpia) -> bool:
        return obj.effective_required

    @admin.display(description="signed", ordering="signed_at")
    def signed_shown(self, obj: Dpia) -> str:
        return display.moment(obj.signed_at)

    @admin.display(description="Art. 35(3) cases")
    def article_35_3_shown(self, obj: Dpia) -> str:
        cases = [c for c in obj.article_35_3_cases or [] if isinstance(c, str)]
        return ", ".join(f"Art. 35(3)({c})" for c in cases) or "none"

    @admin.display(description="marked for review")
    def marked_shown(self, obj: Dpia) -> str:
        return display.moment(obj.marked_for_review_at)

    @admin.display(description="created")
    def created_shown(self, obj: Dpia) -> str:
        return display.moment(obj.created_at)

    @admin.display(description="updated")
    def updated_shown(self, obj: Dpia) -> str:
        return display.moment(obj.updated_at)

    def get_panels(self, request, obj: Dpia) -> list[Panel]:
        recent = ReportJob.objects.filter(kind=ReportKind.DPIA, object_id=obj.pk)[:5]
        rows = [[display.link(reverse("admin:governance_reportjob_change", args=[j.pk]), f"Job {j.pk}"),
                 j.get_status_display(), display.moment(j.created_at),
                 display.link(reverse("admin:governance_reportjob_download", args=[j.pk]), "download")
                 if j.status == "succeeded" else display.DASH] for j in recent]
        models = [[display.link(reverse("admin:mlops_modelversion_change", args=[m.pk]), str(m)), m.get_status_display(),
                   display.epsilon(m.epsilon, non_private=m.non_private)] for m in obj.model_versions.order_by("pk")]
        return [
            Panel("Models it covers", display.table(["Model version", "Status", "ε"], models,
                                                    empty="No model version is listed.")),
            Panel("DPIA report (PDF)", display.table(["Job", "Status", "Requested", "File"], rows,
                                                     empty="No report requested yet."),
                  buttons=[Button(reverse("admin:assessments_dpia_report", args=[obj.pk]), "Generate the DPIA PDF",
                                  "Rendered in the background; the file appears in the report jobs.")]),
        ]

    def get_urls(self):
        return [
            path("<path:object_id>/report/", self.admin_site.admin_view(self.report_view), name="assessments_dpia_report"),
            *super().get_urls(),
        ]

    def report_view(self, request, object_id):
        dpia = self.get_object(request, unquote(object_id))
        if dpia is None:
            raise Http404("No DPIA with this id.")
        # As in the API: DPIA reports are the DPO's and the auditor's.
        if not (self.has_view_permission(request, dpia) and (request.user.is_superuser or has_role(request.user, DPO, AUDITOR))):
            raise PermissionDenied
        back = HttpResponseRedirect(reverse("admin:assessments_dpia_change", args=[dpia.pk]))
        if request.method == "POST":
            self._queue_report(request, dpia)
        return back

    def _queue_report(self, request, dpia: Dpia) -> None:
        try:
            job = jobs.report_job_request(kind=ReportKind.DPIA, object_id=dpia.pk, actor=request.user)
        except ServiceError as exc:
            self.message_user(request, f"{str(dpia)}: no report started: {exc}", messages.ERROR)
            return
        url = reverse("admin:governance_reportjob_change", args=[job.pk])
        self.message_user(request, format_html('Report <a href="{}">job {}</a> queued for {}.', url, job.pk, str(dpia)),
                          messages.SUCCESS)

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["processing_activity", *CONTENT_FIELDS]
        return ["processing_activity", *CONTENT_FIELDS, *STATE_FIELDS]

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return []
        if not _is_draft(obj):
            return ["processing_activity", *CONTENT_FIELDS, *STATE_FIELDS]
        return ["processing_activity", *STATE_FIELDS]

    def has_delete_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        if not change:
            created = services.dpia_create(
                processing_activity=data["processing_activity"], actor=request.user, title=data.get("title") or "",
                model_version_ids=[m.pk for m in data.get("model_versions") or []],
                models_used_for_decisions=data.get("models_used_for_decisions", False),
                **{k: data[k] for k in CONTENT_FIELDS if k in data and data[k] not in (None, "") and k not in (
                    "title", "model_versions", "models_used_for_decisions", "required_override")},
            )
            obj.pk = created.pk
            obj._state.adding = False
            return
        changes = {k: data[k] for k in form.changed_data if k in CONTENT_FIELDS and k != "model_versions"}
        if "model_versions" in form.changed_data:
            changes["model_version_ids"] = [m.pk for m in data["model_versions"]]
        if changes:
            services.dpia_update(dpia=Dpia.objects.get(pk=obj.pk), actor=request.user, **changes)

    def save_related(self, request, form, formsets, change):
        # Covered models were saved by the service; inlines go through their own services.
        dpia = Dpia.objects.get(pk=form.instance.pk)
        for formset in formsets:
            # The admin's change message reads these; rows were written by the services instead.
            formset.new_objects, formset.changed_objects, formset.deleted_objects = [], [], []
            if formset.model is DpiaScreeningAnswer:
                answers = [
                    {"criterion": f.instance.criterion, "answer": f.cleaned_data["confirmed"], "reason": f.cleaned_data.get("override_reason", "")}
                    for f in formset.forms
                    if f.has_changed() and f.cleaned_data.get("confirmed") is not None
                ]
                if answers:
                    services.dpia_screening_confirm(dpia=dpia, actor=request.user, answers=answers)
            elif formset.model is DpiaRisk:
                for f in formset.forms:
                    if f.has_changed() and not f.instance.pk:
                        services.dpia_risk_add(
                            dpia=dpia, actor=request.user,
                            **{k: f.cleaned_data.get(k) for k in ("description", "likelihood", "severity", "mitigations", "residual_likelihood", "residual_severity")},
                        )

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except ServiceError as exc:
            # The whole save was rolled back; show the reason on the same page.
            self.message_user(request, f"Not saved: {exc}", messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())

    @admin.action(description="Sign the selected DPIA drafts")
    def sign_selected(self, request, queryset):
        for dpia in queryset:
            try:
                services.dpia_sign(dpia=dpia, actor=request.user)
                self.message_user(request, f"{str(dpia)}: signed.", messages.SUCCESS)
            except ServiceError as exc:
                self.message_user(request, f"{str(dpia)}: {exc}", messages.ERROR)

    @admin.action(description="Generate the PDF report")
    def generate_pdf(self, request, queryset):
        for dpia in queryset:
            self._queue_report(request, dpia)
