"""Admin pages of the erasure workflow: requests by deadline with days left, actions that
call the services, and the impact shown on a request's page before execution."""

from __future__ import annotations

from pathlib import Path

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm
from django.http import FileResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from governance.admin_mixins import ModelAdmin, TabularInline
from governance.services import ServiceError
from rights import selectors, services
from rights.models import (
    ErasureReceipt,
    ErasureRequest,
    ErasureStep,
    RecipientNotification,
    RefusalGround,
)


class ErasureActionForm(ActionForm):
    """Extra inputs for the actions that need them (extend, reject)."""

    reasons = forms.CharField(required=False, label="Extension reasons")
    subject_informed_at = forms.DateTimeField(required=False, label="Subject informed at (YYYY-MM-DD HH:MM)")
    refusal_ground = forms.ChoiceField(required=False, choices=[("", "—"), *RefusalGround.choices], label="17(3) ground")
    justification = forms.CharField(required=False, label="Justification")


class ErasureStepInline(TabularInline):
    model = ErasureStep
    extra = 0
    can_delete = False
    fields = ["name", "status", "attempts", "started_at", "finished_at", "details", "error"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


class RecipientNotificationInline(TabularInline):
    model = RecipientNotification
    extra = 0
    can_delete = False
    fields = ["recipient", "third_country", "notified_at"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(ErasureRequest)
class ErasureRequestAdmin(ModelAdmin):
    list_display = ["id", "status", "ground", "regime", "received_at", "deadline", "days_left_display", "subject_ref"]
    list_filter = ["status", "regime", "ground", "channel"]
    search_fields = ["id", "subject_ref"]
    action_form = ErasureActionForm
    actions = ["verify", "execute", "extend", "reject", "download_certificate"]
    inlines = [ErasureStepInline, RecipientNotificationInline]
    readonly_fields = [
        "subject_ref", "data_held_at_receipt", "channel", "received_at", "regime", "ground", "purpose", "status",
        "due_at", "extended_due_at", "extension_reasons", "extended_at", "subject_informed_of_extension_at",
        "verified_at", "verified_by", "verification_method", "refusal_ground", "refusal_justification",
        "refusal_notice", "rejected_at", "execution_started_at", "completed_at", "outcome", "certificate_link",
        "certificate_sha256", "impact_display",
    ]
    fields = readonly_fields

    def get_queryset(self, request):
        return selectors.erasure_request_queryset().order_by("effective_due", "id")

    def has_add_permission(self, request):
        return False  # requests come in through the API, which pseudonymises the identifier

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="deadline", ordering="effective_due")
    def deadline(self, obj):
        return obj.effective_due_at

    @admin.display(description="days left")
    def days_left_display(self, obj):
        if not obj.is_open:
            return "—"
        left = (obj.effective_due_at - selectors.today()).days
        if left < 0:
            return format_html('<strong style="color:#ba2121">overdue by {} day(s)</strong>', -left)
        if left <= 7:
            return format_html('<span style="color:#c57600">{}</span>', left)
        return left

    @admin.display(description="certificate")
    def certificate_link(self, obj):
        if not obj.certificate_path:
            return "—"
        url = reverse("admin:rights_erasurerequest_certificate", args=[obj.pk])
        return format_html('<a href="{}">download PDF</a>', url)

    @admin.display(description="impact")
    def impact_display(self, obj):
        impact = selectors.erasure_request_impact(erasure_request=obj)
        if not impact["data_held"]:
            return "No personal data of this person is held." if not impact["executed"] else "Executed: nothing remains."
        datasets = format_html_join("", "<li>dataset {} ({}): {} record(s)</li>", (
            (d["id"], d["name"], d["records"]) for d in impact["datasets"]))
        snapshots = format_html_join("", "<li>snapshot {} (dataset {}, {}): {} record(s)</li>", (
            (s["id"], s["dataset_id"], s["purpose"], s["records"]) for s in impact["snapshots"]))
        models_ = format_html_join("", "<li>{} v{} [{}]: {}{}</li>", (
            (m["name"], m["version"], m["status"], m["remediation"],
             f" (overridden from {m['proposed_remediation']})" if m["override"] else "")
            for m in impact["model_versions"]))
        return format_html(
            "<ul>{}</ul><ul>{}</ul><ul>{}</ul><p>{} consent event(s) will be deleted with the subject row.</p>",
            datasets, snapshots, models_ or "no model versions", impact["consent_events"],
        )

    def get_urls(self):
        return [
            path("<int:pk>/certificate/", self.admin_site.admin_view(self.certificate_view),
                 name="rights_erasurerequest_certificate"),
            *super().get_urls(),
        ]

    def certificate_view(self, request, pk: int):
        obj = ErasureRequest.objects.get(pk=pk)
        return self._certificate_response(obj)

    def _certificate_response(self, obj):
        path_ = Path(settings.REPORT_ROOT) / obj.certificate_path
        return FileResponse(open(path_, "rb"), content_type="application/pdf", as_attachment=True,  # noqa: SIM115
                            filename=Path(obj.certificate_path).name)

    def _each(self, request, queryset, fn, verb: str) -> None:
        done = 0
        for obj in queryset:
            try:
                fn(obj)
                done += 1
            except ServiceError as exc:
                self.message_user(request, f"Request {obj.pk}: {exc}", messages.ERROR)
        if done:
            self.message_user(request, f"{done} request(s) {verb}.", messages.SUCCESS)

    @admin.action(description="Verify identity of selected requests")
    def verify(self, request, queryset):
        self._each(request, queryset, lambda o: services.erasure_request_verify(
            erasure_request=o, method="verified in admin", actor=request.user), "verified")

    @admin.action(description="Execute selected requests (Celery)")
    def execute(self, request, queryset):
        self._each(request, queryset, lambda o: services.erasure_request_execute_start(
            erasure_request=o, actor=request.user), "queued for execution")

    @admin.action(description="Extend deadline by two months (fill reasons and 'subject informed at')")
    def extend(self, request, queryset):
        informed = request.POST.get("subject_informed_at") or timezone.now()
        self._each(request, queryset, lambda o: services.erasure_request_extend(
            erasure_request=o, reasons=request.POST.get("reasons", ""), subject_informed_at=informed,
            actor=request.user), "extended")

    @admin.action(description="Reject under Art. 17(3) (fill ground and justification)")
    def reject(self, request, queryset):
        self._each(request, queryset, lambda o: services.erasure_request_reject(
            erasure_request=o, refusal_ground=request.POST.get("refusal_ground"),
            justification=request.POST.get("justification", ""), actor=request.user), "rejected")

    @admin.action(description="Download the certificate (one request)")
    def download_certificate(self, request, queryset):
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one request.", messages.ERROR)
            return None
        obj = queryset.first()
        if not obj.certificate_path:
            self.message_user(
                request, "No answer document yet: the certificate comes with completion, the refusal notice with "
                "rejection.", messages.ERROR,
            )
            return None
        return self._certificate_response(obj)


@admin.register(ErasureReceipt)
class ErasureReceiptAdmin(ModelAdmin):
    list_display = ["request", "completed_at", "records_deleted", "snapshots_amended", "models_remediated",
                    "consent_events_deleted", "recipients_notified"]
    readonly_fields = [f.name for f in ErasureReceipt._meta.fields if f.name != "identifier_receipt_hash"]
    exclude = ["identifier_receipt_hash"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
