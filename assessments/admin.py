"""Admin pages for DPIAs.

Every change goes through the services, so the admin writes the same audit events and
obeys the same rules as the API: a signed version is read-only here, and saving a change
to it starts a new version.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.http import HttpResponseRedirect
from django.urls import reverse
from django.utils.html import format_html

from assessments import services
from assessments.models import Dpia, DpiaRisk, DpiaScreeningAnswer, DpiaStatus
from governance.admin_mixins import ModelAdmin, TabularInline
from governance.models import ReportKind
from governance.reports import jobs
from governance.services import ServiceError

CONTENT_FIELDS = [
    "title", "models_used_for_decisions", "model_versions", "systematic_description", "necessity_and_proportionality",
    "measures", "dpo_advice", "data_subject_views", "views_not_sought_reason", "review_date", "required_override",
    "required_override_justification",
]
STATE_FIELDS = [
    "version", "previous_version", "status", "dpia_required", "article_35_3_cases", "prior_consultation_required",
    "signed_by", "signed_at", "review_reason", "marked_for_review_at", "created_by", "created_at", "updated_at",
]


def _is_draft(obj) -> bool:
    return obj is None or obj.status == DpiaStatus.DRAFT


class ScreeningInline(TabularInline):
    model = DpiaScreeningAnswer
    fields = ["criterion", "proposed", "source", "confirmed", "override_reason", "confirmed_by", "confirmed_at"]
    readonly_fields = ["criterion", "proposed", "source", "confirmed_by", "confirmed_at"]
    extra = 0
    can_delete = False

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
class DpiaAdmin(ModelAdmin):
    list_display = ["title", "processing_activity", "version", "status", "effective_required", "prior_consultation_required", "review_date", "signed_at"]
    list_filter = ["status", "prior_consultation_required", "processing_activity"]
    search_fields = ["title", "processing_activity__name"]
    inlines = [ScreeningInline, RiskInline]
    filter_horizontal = ["model_versions"]
    actions = ["sign_selected", "generate_pdf"]

    @admin.display(boolean=True, description="DPIA required")
    def effective_required(self, obj: Dpia) -> bool:
        return obj.effective_required

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
                self.message_user(request, f"{dpia}: signed.", messages.SUCCESS)
            except ServiceError as exc:
                self.message_user(request, f"{dpia}: {exc}", messages.ERROR)

    @admin.action(description="Generate the PDF report")
    def generate_pdf(self, request, queryset):
        for dpia in queryset:
            job = jobs.report_job_request(kind=ReportKind.DPIA, object_id=dpia.pk, actor=request.user)
            url = reverse("admin:governance_reportjob_change", args=[job.pk])
            self.message_user(request, format_html('Report job <a href="{}">#{}</a> queued for {}.', url, job.pk, dpia), messages.SUCCESS)
