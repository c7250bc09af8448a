"""Admin for the DPO: governance records through their services, the consent ledger read-only.

A search for an external identifier (an email, a patient number) is pseudonymised first,
because only pseudonyms are stored.
"""

from __future__ import annotations

from datetime import timedelta

from django import forms
from django.contrib import admin, messages
from django.http import FileResponse, Http404
from django.urls import path, reverse
from django.utils import timezone
from django.utils.dateparse import parse_duration
from django.utils.duration import duration_iso_string
from django.utils.html import format_html, format_html_join

from governance import selectors, services
from governance.admin_mixins import ModelAdmin, ReadOnlyAdmin
from governance.models import (
    ApiKey,
    AuditEvent,
    ConsentEvent,
    DataCategory,
    DataSubject,
    DataSubjectCategory,
    ProcessingActivity,
    Purpose,
    PurposeCompatibility,
    ReportJob,
    ReportStatus,
)
from governance.pseudonymisation import IdentifierError, pseudonymise
from governance.reports import jobs


def _pseudonymised_search(queryset, search_term: str, field: str):
    """Rows whose ``field`` is the pseudonym of ``search_term`` (or equals it, when a pseudonym is pasted)."""
    term = search_term.strip()
    if not term:
        return queryset.none()
    try:
        candidates = [pseudonymise(term), term.lower()]
    except IdentifierError:
        candidates = [term.lower()]  # nothing visible to pseudonymise: no person matches
    return queryset.filter(**{f"{field}__in": candidates})


class ServiceAdminMixin:
    """Creation goes through the service (validation + audit); records are never deleted here."""

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Purpose)
class PurposeAdmin(ServiceAdminMixin, ModelAdmin):
    list_display = ["code", "name", "parent"]
    list_filter = [("parent", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["code", "name", "description"]
    fields = ["code", "name", "description", "parent"]
    readonly_fields = ["parent"]

    def get_readonly_fields(self, request, obj=None):
        return ["code", "parent"] if obj else ["parent"]

    def save_model(self, request, obj, form, change):
        if change:
            changes = {f: {"before": form.initial.get(f), "after": form.cleaned_data[f]} for f in form.changed_data}
            super().save_model(request, obj, form, change)
            services.audit_event_record(
                actor=request.user, action="purpose.updated", object_type="purpose", object_id=obj.pk,
                details={"code": obj.code, "changes": changes},
            )
            return
        created = services.purpose_create(
            code=form.cleaned_data["code"], name=form.cleaned_data["name"],
            description=form.cleaned_data.get("description", ""), actor=request.user,
        )
        obj.pk = created.pk
        obj.parent = created.parent

    def get_form(self, request, obj=None, **kwargs):
        form = super().get_form(request, obj, **kwargs)
        if obj is None:
            form.clean = _service_checked_clean(form.clean, self._check_new_purpose)
        return form

    @staticmethod
    def _check_new_purpose(cleaned: dict) -> None:
        code = cleaned.get("code") or ""
        if "." in code and not Purpose.objects.filter(code=code.rpartition(".")[0]).exists():
            raise forms.ValidationError({"code": f"The parent purpose {code.rpartition('.')[0]!r} does not exist."})


def _service_checked_clean(original_clean, check):
    def clean(self):
        cleaned = original_clean(self)
        check(cleaned)
        return cleaned

    return clean


@admin.register(PurposeCompatibility)
class PurposeCompatibilityAdmin(ServiceAdminMixin, ModelAdmin):
    list_display = ["original_purpose", "compatible_purpose", "approved_by", "approved_at"]
    list_filter = ["original_purpose", "compatible_purpose"]
    search_fields = ["original_purpose__code", "compatible_purpose__code"]
    readonly_fields = ["approved_by", "approved_at"]

    def has_change_permission(self, request, obj=None) -> bool:
        # An assessment is a signed statement: a new view needs a new assessment, not an edit.
        return obj is None and super().has_change_permission(request, obj)

    def get_form(self, request, obj=None, **kwargs):
        form = super().get_form(request, obj, **kwargs)

        def check(cleaned: dict) -> None:
            if not cleaned.get("original_purpose") or not cleaned.get("compatible_purpose"):
                return
            try:
                services.purpose_compatibility_check(
                    original_purpose=cleaned["original_purpose"], compatible_purpose=cleaned["compatible_purpose"],
                    approved_by=request.user,
                    texts={f: cleaned.get(f, "") for f in services.COMPATIBILITY_FACTORS},
                )
            except services.ServiceError as exc:
                field = exc.field if exc.field in form.base_fields else None
                raise forms.ValidationError({field: str(exc)}) from exc

        form.clean = _service_checked_clean(form.clean, check)
        return form

    def save_model(self, request, obj, form, change):
        data = {k: v for k, v in form.cleaned_data.items() if k not in ("approved_by", "approved_at")}
        obj.pk = services.purpose_compatibility_declare(approved_by=request.user, actor=request.user, **data).pk


@admin.register(DataCategory)
class DataCategoryAdmin(ServiceAdminMixin, ModelAdmin):
    list_display = ["code", "name", "special_category", "criminal_offence_data"]
    list_filter = ["special_category", "criminal_offence_data"]
    search_fields = ["code", "name"]

    def get_readonly_fields(self, request, obj=None):
        return ["code"] if obj else []

    def save_model(self, request, obj, form, change):
        if change:
            services.data_category_update(category=obj, changed=form.changed_data, actor=request.user)
            return
        obj.pk = services.data_category_create(actor=request.user, **form.cleaned_data).pk


@admin.register(DataSubjectCategory)
class DataSubjectCategoryAdmin(ServiceAdminMixin, ModelAdmin):
    list_display = ["code", "name", "vulnerable"]
    list_filter = ["vulnerable"]
    search_fields = ["code", "name"]

    def get_readonly_fields(self, request, obj=None):
        return ["code"] if obj else []

    def save_model(self, request, obj, form, change):
        if change:
            services.data_subject_category_update(category=obj, changed=form.changed_data, actor=request.user)
            return
        obj.pk = services.data_subject_category_create(actor=request.user, **form.cleaned_data).pk


class ProcessingActivityForm(forms.ModelForm):
    retention = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4}),
        help_text="Art. 30(1)(f): one line per data category, 'category_code = ISO 8601 duration', e.g. 'health = P1825D'.",
    )

    class Meta:
        model = ProcessingActivity
        exclude: list[str] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["retention"].initial = "\n".join(
                f"{rule.data_category.code} = {duration_iso_string(rule.retention)}"
                for rule in self.instance.retention_rules.select_related("data_category")
            )

    def clean_retention(self) -> dict:
        rules: dict = {}
        codes = {c.code: c for c in DataCategory.objects.all()}
        for number, line in enumerate(self.cleaned_data["retention"].splitlines(), start=1):
            if not line.strip():
                continue
            code, sep, period_text = (part.strip() for part in line.partition("="))
            period = parse_duration(period_text) if sep else None
            if code not in codes:
                raise forms.ValidationError(f"Line {number}: unknown data category {code!r}.")
            if period is None or period <= timedelta(0):
                raise forms.ValidationError(f"Line {number}: {period_text!r} is not a positive duration such as P365D.")
            rules[codes[code]] = period
        return rules

    def clean(self):
        cleaned = super().clean()
        if self.errors:
            return cleaned
        values = {f: cleaned.get(f) for f in services.PROCESSING_ACTIVITY_FIELDS}
        try:
            services.processing_activity_validate(
                values=values, purposes=list(cleaned.get("purposes") or []),
                data_subject_categories=list(cleaned.get("data_subject_categories") or []),
                retention=cleaned.get("retention") or {},
            )
        except services.ServiceError as exc:
            field = (exc.field or "").split("[")[0]
            raise forms.ValidationError({field if field in self.fields else None: str(exc)}) from exc
        return cleaned


@admin.register(ProcessingActivity)
class ProcessingActivityAdmin(ServiceAdminMixin, ModelAdmin):
    """Art. 30 records; every change is audited with its before/after diff by the service."""

    form = ProcessingActivityForm
    list_display = ["name", "lawful_basis", "special_category_condition", "controller_name", "updated_at"]
    list_filter = ["lawful_basis", "special_category_condition", "controller_is_public_authority",
                   "erasure_on_consent_withdrawal", "purposes"]
    search_fields = ["name", "description", "controller_name", "purposes__code"]
    filter_horizontal = ["purposes", "data_subject_categories"]

    def save_model(self, request, obj, form, change):
        cleaned = form.cleaned_data
        relations = {
            "purposes": list(cleaned["purposes"]),
            "data_subject_categories": list(cleaned["data_subject_categories"]),
            "retention": cleaned["retention"],
        }
        if change:
            changes = {f: cleaned[f] for f in form.changed_data if f in services.PROCESSING_ACTIVITY_FIELDS}
            services.processing_activity_update(activity=obj, actor=request.user, **changes, **relations)
        else:
            values = {f: cleaned[f] for f in services.PROCESSING_ACTIVITY_FIELDS if f in cleaned}
            obj.pk = services.processing_activity_create(actor=request.user, **values, **relations).pk

    def save_related(self, request, form, formsets, change):
        # The service has written purposes, categories and retention rules in save_model.
        for formset in formsets:
            self.save_formset(request, form, formset, change=change)


@admin.register(ConsentEvent)
class ConsentEventAdmin(ReadOnlyAdmin):
    list_display = ["event_id", "subject_pseudonym", "purpose", "action", "occurred_at", "expires_at", "method"]
    list_filter = ["action", "purpose", "method", "occurred_at"]
    list_select_related = ["subject", "purpose"]
    date_hierarchy = "occurred_at"
    search_fields = ["event_id"]
    search_help_text = "An external identifier (pseudonymised before the search), a pseudonym or an event id."

    @admin.display(description="subject")
    def subject_pseudonym(self, obj) -> str:
        return obj.subject.pseudonym[:16] + "…"

    def get_search_results(self, request, queryset, search_term):
        if not search_term.strip():
            return queryset, False
        by_subject = _pseudonymised_search(queryset, search_term, "subject__pseudonym")
        return by_subject | queryset.filter(event_id=search_term.strip()), False


@admin.register(DataSubject)
class DataSubjectAdmin(ReadOnlyAdmin):
    """A person by pseudonym, with their consent history per purpose."""

    list_display = ["pseudonym", "reference", "created_at", "normalisation_version"]
    list_filter = ["normalisation_version"]
    search_fields = ["pseudonym"]
    search_help_text = "An external identifier (pseudonymised before the search) or a pseudonym."
    fields = ["pseudonym", "reference", "created_at", "normalisation_version", "consent_history"]
    readonly_fields = fields

    def get_search_results(self, request, queryset, search_term):
        if not search_term.strip():
            return queryset, False
        return _pseudonymised_search(queryset, search_term, "pseudonym"), False

    @admin.display(description="Consent history per purpose (state now and timeline)")
    def consent_history(self, obj) -> str:
        history = selectors.consent_history(subject=obj, at=timezone.now())
        if not history:
            return "No consent events."
        blocks = []
        for entry in history:
            timeline = format_html_join(
                "",
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                (
                    (e.occurred_at.isoformat(timespec="minutes"), e.action,
                     e.expires_at.isoformat(timespec="minutes") if e.expires_at else "—",
                     e.notice_version, e.method, e.event_id)
                    for e in entry["events"]
                ),
            )
            blocks.append(
                format_html(
                    "<h3>{} — now: <strong>{}</strong></h3><table><thead><tr><th>occurred</th><th>action</th>"
                    "<th>expires</th><th>notice</th><th>method</th><th>event id</th></tr></thead><tbody>{}</tbody>"
                    "</table>",
                    entry["purpose"].code, selectors.CONSENT_REASONS[entry["state"]], timeline,
                )
            )
        return format_html_join("", "{}", ((b,) for b in blocks))


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ["position", "occurred_at", "actor", "action", "object_type", "object_id"]
    list_filter = ["action", "object_type"]
    search_fields = ["action", "object_id", "actor", "=subject_ref"]


@admin.register(ApiKey)
class ApiKeyAdmin(ReadOnlyAdmin):
    list_display = ["prefix", "user", "name", "created_at", "expires_at", "revoked_at", "last_used_at"]
    list_filter = ["revoked_at"]
    search_fields = ["prefix", "user__username", "name"]
    actions = ["revoke"]

    @admin.action(description="Revoke the selected API keys")
    def revoke(self, request, queryset):
        revoked = 0
        for api_key in queryset.filter(revoked_at__isnull=True):
            services.api_key_revoke(api_key=api_key, actor=request.user)
            revoked += 1
        self.message_user(request, f"{revoked} key(s) revoked.", messages.SUCCESS)


@admin.register(ReportJob)
class ReportJobAdmin(ModelAdmin):
    list_display = ["id", "kind", "object_id", "status", "requested_by", "created_at", "finished_at", "download"]
    list_filter = ["kind", "status"]
    readonly_fields = [
        "kind", "object_id", "status", "requested_by", "file_path", "sha256", "size_bytes", "error", "created_at",
        "started_at", "finished_at", "download",
    ]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="File")
    def download(self, obj: ReportJob) -> str:
        if obj.status != ReportStatus.SUCCEEDED:
            return "—"
        return format_html('<a href="{}">download PDF</a>', reverse("admin:governance_reportjob_download", args=[obj.pk]))

    def get_urls(self):
        return [
            path("<int:job_id>/download/", self.admin_site.admin_view(self.download_view), name="governance_reportjob_download"),
            *super().get_urls(),
        ]

    def download_view(self, request, job_id: int):
        job = ReportJob.objects.filter(pk=job_id, status=ReportStatus.SUCCEEDED).first()
        if job is None or not self.has_view_permission(request, job):
            raise Http404("No finished report with this id.")
        file_path = jobs.report_file_path(job)
        if not file_path.is_file():
            raise Http404("The report file is missing.")
        return FileResponse(open(file_path, "rb"), content_type="application/pdf", as_attachment=True, filename=file_path.name)  # noqa: SIM115
