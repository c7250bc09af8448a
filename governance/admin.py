"""Admin for the DPO: governance records through their services, the consent ledger read-only.

A search for an external identifier (an email, a patient number) is pseudonymised first,
because only pseudonyms are stored.
"""

from __future__ import annotations

from datetime import timedelta

from django import forms
from django.apps import apps
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, path, reverse
from django.utils import timezone
from django.utils.dateparse import parse_duration
from django.utils.duration import duration_iso_string
from django.utils.html import format_html, format_html_join

from governance import display, selectors, services
from governance.admin_mixins import ModelAdmin, ReadOnlyAdmin
from governance.admin_panels import Button, Panel, PanelsAdminMixin, facts, paragraphs
from governance.audit_anchor import audit_chain_anchored_verify
from governance.models import (
    ApiKey,
    AuditEvent,
    CompellingGrounds,
    ConsentEvent,
    DataCategory,
    DataSubject,
    DataSubjectCategory,
    ProcessingActivity,
    ProcessingObjection,
    ProcessingRestriction,
    Purpose,
    PurposeCompatibility,
    ReportJob,
    ReportKind,
    ReportStatus,
    RestrictionLifting,
)
from governance.pseudonymisation import IdentifierError, pseudonymise
from governance.reports import jobs
from governance.reports.ropa import ropa_csv
from governance.roles import AUDITOR, DPO, has_role


def _url(name: str, *args) -> str:
    return reverse(f"admin:{name}", args=args)


def _dpo_or_auditor(user) -> bool:
    return user.is_superuser or has_role(user, DPO, AUDITOR)


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
    list_display = ["name", "lawful_basis", "special_category_condition", "controller_name", "updated_shown"]
    list_filter = ["lawful_basis", "special_category_condition", "controller_is_public_authority",
                   "erasure_on_consent_withdrawal", "purposes"]
    search_fields = ["name", "description", "controller_name", "purposes__code"]
    filter_horizontal = ["purposes", "data_subject_categories"]
    list_before_template = "admin/workspace/panels.html"

    @admin.display(description="updated", ordering="updated_at")
    def updated_shown(self, obj) -> str:
        return display.moment(obj.updated_at)

    def changelist_view(self, request, extra_context=None):
        panels = []
        if _dpo_or_auditor(request.user):
            panels.append(Panel(
                "Record of processing activities (Art. 30)",
                format_html('<p>Every activity below, as a register: <a href="{}">download the CSV</a> now, or '
                            'generate the PDF in the background.</p>', _url("governance_processingactivity_ropa_csv")),
                buttons=[Button(_url("governance_reportjob_start", ReportKind.ROPA), "Generate the RoPA PDF",
                                "The file appears in the report jobs.")],
            ))
        return super().changelist_view(request, extra_context={"workspace_panels": panels, **(extra_context or {})})

    def get_urls(self):
        return [
            path("ropa.csv", self.admin_site.admin_view(self.ropa_csv_view), name="governance_processingactivity_ropa_csv"),
            *super().get_urls(),
        ]

    def ropa_csv_view(self, request):
        if not (self.has_view_permission(request) and _dpo_or_auditor(request.user)):
            raise PermissionDenied("The record of processing is for the DPO and auditors.")
        response = HttpResponse(ropa_csv(), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="ropa-{timezone.localdate().isoformat()}.csv"'
        return response

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
    list_display = ["event_id", "subject_pseudonym", "purpose", "action", "occurred_shown", "expires_shown", "method"]
    list_filter = ["action", "purpose", "method", "occurred_at"]
    list_select_related = ["subject", "purpose"]
    date_hierarchy = "occurred_at"
    search_fields = ["event_id"]
    search_help_text = "An external identifier (pseudonymised before the search), a pseudonym or an event id."

    @admin.display(description="subject")
    def subject_pseudonym(self, obj) -> str:
        return obj.subject.pseudonym[:16] + "…"

    @admin.display(description="occurred", ordering="occurred_at")
    def occurred_shown(self, obj) -> str:
        return display.moment(obj.occurred_at)

    @admin.display(description="expires", ordering="expires_at")
    def expires_shown(self, obj) -> str:
        return display.moment(obj.expires_at)

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
                    (display.moment(e.occurred_at), e.get_action_display(), display.moment(e.expires_at),
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


def verification_words(result) -> str:
    """A verification's outcome as a sentence a DPO can repeat."""
    if result.ok:
        events = "the only event" if result.checked == 1 else f"all {result.checked:,} events"
        return f"The audit chain is intact: {events} checked, every link and hash matches."
    position = f" at event #{result.broken_position}" if result.broken_position else ""
    return (f"The audit chain is broken{position}: {result.reason} "
            f"({result.checked:,} events verified before the break.)")


def checkpoint_words(result) -> str:
    if not result.checkpoints:
        return "No signed checkpoint has been written yet."
    return (f"{result.checkpoints:,} signed checkpoint(s); the last signs the chain up to event "
            f"#{result.last_checkpoint_position}.")


@admin.register(AuditEvent)
class AuditEventAdmin(PanelsAdminMixin, ReadOnlyAdmin):
    list_display = ["position", "occurred_shown", "actor", "action", "object_type", "object_id"]
    list_filter = ["action", "object_type"]
    search_fields = ["action", "object_id", "actor", "=subject_ref"]
    fields = ["position", "occurred_shown", "actor", "action", "object_type", "object_id", "subject_ref",
              "details_table", "hashes"]
    readonly_fields = fields
    list_before_template = "admin/workspace/panels.html"

    @admin.display(description="occurred", ordering="occurred_at")
    def occurred_shown(self, obj: AuditEvent) -> str:
        return display.moment(obj.occurred_at)

    @admin.display(description="details")
    def details_table(self, obj: AuditEvent) -> str:
        details = obj.details if isinstance(obj.details, dict) else {"value": obj.details}
        return display.table(["Detail", "Value"], [(k.replace("_", " "), display.detail_value(k, v)) for k, v in details.items()],
                             empty="No details.")

    @admin.display(description="hash chain")
    def hashes(self, obj: AuditEvent) -> str:
        return f"hash {obj.hash[:16]}…, follows {obj.prev_hash[:16]}…"

    def changelist_view(self, request, extra_context=None):
        panels = [self.verification_panel(request)] if _dpo_or_auditor(request.user) else []
        return super().changelist_view(request, extra_context={"workspace_panels": panels, **(extra_context or {})})

    @staticmethod
    def verification_panel(request) -> Panel:
        last = selectors.audit_chain_last_verification()
        if last is None:
            body = paragraphs("The chain has not been verified yet.")
        else:
            details = last.details or {}
            state = ("intact" if last.action == "audit.verified"
                     else f"broken at event #{details.get('broken_position')}: {details.get('reason', '')}")
            body = facts([("Last verified", display.moment(last.occurred_at)),
                          ("Result", f"{state} ({display.number(details.get('checked'))} events checked)")])
        return Panel("Audit-chain verification", body, buttons=[Button(
            _url("governance_auditevent_verify"), "Verify the audit chain now",
            "Recomputes every hash and checks the signed checkpoints; the result is recorded in the chain.")])

    def get_urls(self):
        return [
            path("verify/", self.admin_site.admin_view(self.verify_view), name="governance_auditevent_verify"),
            *super().get_urls(),
        ]

    def verify_view(self, request):
        if not (self.has_view_permission(request) and _dpo_or_auditor(request.user)):
            raise PermissionDenied("Only the DPO and auditors verify the audit chain.")
        if request.method != "POST":
            return HttpResponseRedirect(_url("governance_auditevent_changelist"))
        result = audit_chain_anchored_verify()
        services.audit_chain_verification_record(
            ok=result.ok, checked=result.checked, broken_position=result.broken_position, reason=result.reason,
        )
        problems = [p for p in result.problems if p != result.reason]
        rows = [
            ("Result", format_html('<span class="{}">{}</span>', "pl-ok" if result.ok else "pl-bad",
                                   verification_words(result))),
            ("Events checked", display.number(result.checked)),
            ("First break", f"event #{result.broken_position}" if result.broken_position else "none"),
            ("Signed checkpoints", checkpoint_words(result)),
            ("Head of the chain", f"{result.head_hash[:16]}…"),
        ]
        if problems:
            rows.append(("Other problems", " ".join(problems)))
        panels = [Panel("Audit-chain verification", facts(rows),
                        caption=f"Verified {display.moment(timezone.now())}; the outcome is recorded as an audit event.")]
        (messages.success if result.ok else messages.error)(request, verification_words(result))
        context = {
            **self.admin_site.each_context(request),
            "title": "Audit-chain verification",
            "opts": self.model._meta,
            "breadcrumbs": [{"url": _url("governance_auditevent_changelist"), "text": "Audit events"},
                            {"text": "verification"}],
            "workspace_panels": panels,
        }
        return TemplateResponse(request, "admin/workspace/panels_page.html", context)


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


REPORT_OBJECTS = {
    ReportKind.DPIA: "assessments_dpia_change",
    ReportKind.MODEL_LINEAGE: "mlops_modelversion_change",
    ReportKind.ERASURE_CERTIFICATE: "rights_erasurerequest_change",
}


def _size(n: int) -> str:
    if n < 1024:
        return f"{n:,} bytes"
    if n < 1024 * 1024:
        return f"{display.number(n / 1024)} KB"
    return f"{display.number(n / 1024 / 1024)} MB"


@admin.register(ReportJob)
class ReportJobAdmin(PanelsAdminMixin, ReadOnlyAdmin):
    list_display = ["job", "kind", "about", "status", "requested_by", "requested_shown", "finished_shown", "download"]
    list_filter = ["kind", "status"]
    list_select_related = ["requested_by"]
    fields = ["kind", "about", "status", "requested_by", "requested_shown", "started_shown", "finished_shown",
              "download", "file_facts", "error"]
    readonly_fields = fields
    list_before_template = "admin/workspace/panels.html"

    @admin.display(description="job", ordering="id")
    def job(self, obj: ReportJob) -> str:
        return f"Job {obj.pk}"

    @admin.display(description="about")
    def about(self, obj: ReportJob) -> str:
        if obj.object_id is None:
            return "the whole register"
        spec = jobs.report_kinds().get(obj.kind)
        text = f"#{obj.object_id}"
        if spec is not None and spec.about is not None:
            # By the registered (app, model), so governance names the object without importing its app.
            described = apps.get_model(*spec.about).objects.filter(pk=obj.object_id).first()
            text = str(described) if described is not None else f"#{obj.object_id} (no longer exists)"
        name = REPORT_OBJECTS.get(obj.kind)
        try:
            return display.link(_url(name, obj.object_id), text) if name else text
        except NoReverseMatch:  # the app of that kind has no admin page here
            return text

    @admin.display(description="requested", ordering="created_at")
    def requested_shown(self, obj: ReportJob) -> str:
        return display.moment(obj.created_at)

    @admin.display(description="started")
    def started_shown(self, obj: ReportJob) -> str:
        return display.moment(obj.started_at)

    @admin.display(description="finished", ordering="finished_at")
    def finished_shown(self, obj: ReportJob) -> str:
        return display.moment(obj.finished_at)

    @admin.display(description="File")
    def download(self, obj: ReportJob) -> str:
        if obj.status != ReportStatus.SUCCEEDED:
            return {ReportStatus.QUEUED: "waiting for a worker", ReportStatus.RUNNING: "being rendered",
                    ReportStatus.FAILED: "none (the job failed)"}.get(obj.status, display.DASH)
        return format_html('<a href="{}">download PDF</a>', _url("governance_reportjob_download", obj.pk))

    @admin.display(description="file")
    def file_facts(self, obj: ReportJob) -> str:
        if obj.status != ReportStatus.SUCCEEDED:
            return display.DASH
        return f"{_size(obj.size_bytes)}; SHA-256 {obj.sha256}"

    def changelist_view(self, request, extra_context=None):
        panels = []
        if _dpo_or_auditor(request.user):
            panels.append(Panel(
                "Start a report",
                format_html('<p>DPIA and model-lineage reports start from their DPIA or model page; the record of '
                            'processing is also a <a href="{}">CSV</a>.</p>', _url("governance_processingactivity_ropa_csv")),
                buttons=[Button(_url("governance_reportjob_start", ReportKind.ROPA), "Generate the RoPA PDF")],
            ))
        pending = ReportJob.objects.filter(status__in=[ReportStatus.QUEUED, ReportStatus.RUNNING]).exists()
        extra = {"workspace_panels": panels, "auto_refresh": 5 if pending else 0, **(extra_context or {})}
        return super().changelist_view(request, extra_context=extra)

    def get_panels(self, request, obj: ReportJob) -> list[Panel]:
        if obj.status in (ReportStatus.QUEUED, ReportStatus.RUNNING):
            return [Panel("Progress", paragraphs(
                f"{obj.get_status_display()}: the report is rendered in the background; this page refreshes "
                "until it is ready."))]
        return []

    def change_view(self, request, object_id, form_url="", extra_context=None):
        job = self.get_object(request, object_id)
        pending = job is not None and job.status in (ReportStatus.QUEUED, ReportStatus.RUNNING)
        extra = {"auto_refresh": 3 if pending else 0, **(extra_context or {})}
        return super().change_view(request, object_id, form_url, extra_context=extra)

    def get_urls(self):
        return [
            path("<int:job_id>/download/", self.admin_site.admin_view(self.download_view), name="governance_reportjob_download"),
            path("start/<str:kind>/", self.admin_site.admin_view(self.start_view), name="governance_reportjob_start"),
            *super().get_urls(),
        ]

    def start_view(self, request, kind: str):
        """Start a report about the whole register (the RoPA) through the report-job service."""
        spec = jobs.report_kinds().get(kind)
        if spec is None or spec.about is not None:
            raise Http404("No such register report.")
        if not (self.has_view_permission(request) and _dpo_or_auditor(request.user)):
            raise PermissionDenied("Only the DPO and auditors request this report.")
        if request.method != "POST":
            return HttpResponseRedirect(_url("governance_reportjob_changelist"))
        try:
            job = jobs.report_job_request(kind=kind, actor=request.user)
        except services.ServiceError as exc:
            self.message_user(request, f"No report started: {exc}", messages.ERROR)
            return HttpResponseRedirect(_url("governance_reportjob_changelist"))
        self.message_user(request, f"{job.get_kind_display()}: job {job.pk} queued.", messages.SUCCESS)
        return HttpResponseRedirect(_url("governance_reportjob_change", job.pk))

    def download_view(self, request, job_id: int):
        job = get_object_or_404(ReportJob, pk=job_id)
        if not self.has_view_permission(request, job):
            raise Http404("No report with this id.")
        back = HttpResponseRedirect(_url("governance_reportjob_change", job.pk))
        if job.status != ReportStatus.SUCCEEDED:
            self.message_user(request, f"Report job {job.pk} is {job.get_status_display().lower()}: no file yet.",
                              messages.WARNING)
            return back
        file_path = jobs.report_file_path(job)
        if not file_path.is_file():
            self.message_user(request, f"The file of report job {job.pk} is missing from the report store; "
                                       "generate the report again.", messages.ERROR)
            return back
        return FileResponse(open(file_path, "rb"), content_type="application/pdf", as_attachment=True, filename=file_path.name)  # noqa: SIM115


# --- Processing limits (Art. 18, Art. 21): written through the API's services only -----


class _LimitAdmin(ReadOnlyAdmin):
    """A processing limit on a person, shown by pseudonym; searched by external identifier."""

    search_help_text = "An external identifier (pseudonymised before the search) or a pseudonym."
    search_fields = ["subject__pseudonym"]

    @admin.display(description="person (pseudonym)")
    def subject_pseudonym(self, obj) -> str:
        return obj.subject.pseudonym[:16] + "…"

    def get_search_results(self, request, queryset, search_term):
        if not search_term.strip():
            return queryset, False
        return _pseudonymised_search(queryset, search_term, "subject__pseudonym"), False


@admin.register(ProcessingRestriction)
class ProcessingRestrictionAdmin(_LimitAdmin):
    list_display = ["id", "subject_pseudonym", "ground_shown", "restricted_shown", "restricted_by", "state"]
    list_filter = ["ground", "restricted_at"]
    list_select_related = ["subject", "lifting"]
    fields = ["subject_pseudonym", "ground_shown", "justification", "restricted_shown", "restricted_by", "state",
              "lifting_shown"]
    readonly_fields = fields

    @admin.display(description="ground (Art. 18(1))", ordering="ground")
    def ground_shown(self, obj) -> str:
        return obj.get_ground_display()

    @admin.display(description="restricted", ordering="restricted_at")
    def restricted_shown(self, obj) -> str:
        return display.moment(obj.restricted_at)

    def _lifting(self, obj):
        try:
            return obj.lifting
        except RestrictionLifting.DoesNotExist:
            return None

    @admin.display(description="state")
    def state(self, obj) -> str:
        lifting = self._lifting(obj)
        return "in force" if lifting is None else f"lifted {display.moment(lifting.lifted_at)}"

    @admin.display(description="lifting (Art. 18(3))")
    def lifting_shown(self, obj) -> str:
        lifting = self._lifting(obj)
        if lifting is None:
            return "Not lifted: the person's data are only stored."
        return facts([
            ("Lifted", display.moment(lifting.lifted_at)), ("By", lifting.lifted_by),
            ("Person informed", display.moment(lifting.informed_at)), ("Why", lifting.reason),
        ])


@admin.register(ProcessingObjection)
class ProcessingObjectionAdmin(_LimitAdmin):
    list_display = ["id", "subject_pseudonym", "purpose", "direct_marketing", "objected_shown", "recorded_by", "state"]
    list_filter = ["direct_marketing", "purpose", "objected_at"]
    list_select_related = ["subject", "purpose", "compelling_grounds"]
    fields = ["subject_pseudonym", "purpose", "direct_marketing", "grounds", "objected_shown", "recorded_by", "state",
              "compelling_grounds_shown"]
    readonly_fields = fields

    @admin.display(description="objected", ordering="objected_at")
    def objected_shown(self, obj) -> str:
        return display.moment(obj.objected_at)

    def _grounds(self, obj):
        try:
            return obj.compelling_grounds
        except CompellingGrounds.DoesNotExist:
            return None

    @admin.display(description="state")
    def state(self, obj) -> str:
        if obj.direct_marketing:
            return "in force (direct marketing: absolute, Art. 21(3))"
        grounds = self._grounds(obj)
        return "in force" if grounds is None else f"overridden {display.moment(grounds.recorded_at)}"

    @admin.display(description="compelling legitimate grounds (Art. 21(1))")
    def compelling_grounds_shown(self, obj) -> str:
        grounds = self._grounds(obj)
        if grounds is None:
            return "None recorded: the person is left out of processing for the purpose."
        return facts([
            ("Recorded", display.moment(grounds.recorded_at)), ("By", grounds.recorded_by),
            ("Justification", grounds.justification),
        ])


@admin.register(RestrictionLifting)
class RestrictionLiftingAdmin(ReadOnlyAdmin):
    list_display = ["restriction", "lifted_shown", "lifted_by", "informed_shown"]
    list_select_related = ["restriction"]
    fields = ["restriction", "reason", "informed_shown", "lifted_shown", "lifted_by"]
    readonly_fields = fields

    @admin.display(description="lifted", ordering="lifted_at")
    def lifted_shown(self, obj) -> str:
        return display.moment(obj.lifted_at)

    @admin.display(description="person informed (Art. 18(3))", ordering="informed_at")
    def informed_shown(self, obj) -> str:
        return display.moment(obj.informed_at)


@admin.register(CompellingGrounds)
class CompellingGroundsAdmin(ReadOnlyAdmin):
    list_display = ["objection", "recorded_shown", "recorded_by"]
    list_select_related = ["objection"]
    fields = ["objection", "justification", "recorded_shown", "recorded_by"]
    readonly_fields = fields

    @admin.display(description="recorded", ordering="recorded_at")
    def recorded_shown(self, obj) -> str:
        return display.moment(obj.recorded_at)
