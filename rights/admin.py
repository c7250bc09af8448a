"""Admin pages of the erasure workflow, the DPO's workspace for requests: a list by deadline
with days left and an OVERDUE badge; a request page that follows the workflow (status and
deadline at the top, the impact as linked tables, one button per next step, each behind a
confirmation that restates the impact, a live timeline of the execution, the answer
document to download); a form to log a request received by letter, phone or in person;
and the person page (rights.admin_views). Every write is a rights.services call."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpResponseRedirect
from django.urls import path, reverse
from django.utils.html import format_html
from unfold.decorators import action, display

from governance import display as show
from governance.admin_mixins import ModelAdmin, ReadOnlyAdmin
from governance.models import RestrictionGround
from governance.roles import AUDITOR, DPO, has_role
from rights import admin_requests as requests_views
from rights import admin_views as views
from rights import deadlines, selectors
from rights.admin_filters import ErasureDeadlineFilter, ErasureExecutionFilter
from rights.models import (
    ErasureChannel,
    ErasureGround,
    ErasureReceipt,
    ErasureRegime,
    ErasureRequest,
    ErasureStatus,
    ErasureStepStatus,
    RefusalGround,
    RightsRefusalGround,
    RightsRequest,
    RightsRequestType,
)

BADGES = {"danger": "danger", "warning": "warning", "info": "info", "success": "success", "primary": "primary",
          "default": "default"}
# The next steps of the workflow, by status (further narrowed per request in get_actions_detail).
NEXT_STEPS = {
    ErasureStatus.RECEIVED: ["verify_step", "extend_step", "override_step", "reject_step"],
    ErasureStatus.VERIFIED: ["execute_step", "extend_step", "override_step", "reject_step"],
    ErasureStatus.IN_PROGRESS: ["execute_step", "extend_step"],
    ErasureStatus.COMPLETED: ["notified_step"],
}


class _RequestColumns:
    """The columns an erasure request and a request under another right show alike: number,
    status, the Art. 12(3) deadline and how it stands, how and when it was received."""

    @admin.display(description="request", ordering="id")
    def request_display(self, obj):
        return f"Request {obj.pk}"

    @display(description="status", ordering="status", label=BADGES)
    def status_badge(self, obj):
        return views.STATUS_VARIANT.get(obj.status, "default"), obj.get_status_display()

    @display(description="time", label=BADGES)
    def deadline_badge(self, obj):
        state = views.deadline_state(obj)
        variant = "danger" if state["overdue"] or state["late_by"] else "warning" if state["due_soon"] else (
            "info" if obj.is_open else "default")
        return variant, state["text"]

    @admin.display(description="deadline", ordering="effective_due")
    def deadline(self, obj):
        return show.moment(obj.effective_due_at)

    @admin.display(description="received by", ordering="channel")
    def channel_display(self, obj):
        return show.label(ErasureChannel, obj.channel)

    @admin.display(description="received", ordering="received_at")
    def received_display(self, obj):
        return show.moment(obj.received_at)


@admin.register(ErasureRequest)
class ErasureRequestAdmin(_RequestColumns, ModelAdmin):
    list_display = ["request_display", "status_badge", "deadline_badge", "deadline", "ground_display",
                    "channel_display", "received_display"]
    list_display_links = ["request_display"]
    # The deadline and execution filters are what the dashboard's counts link to.
    list_filter = [ErasureDeadlineFilter, ErasureExecutionFilter, "status", "regime", "ground", "channel"]
    search_fields = ["id", "subject_ref"]
    actions = None  # every step is taken on the request's own page, behind a confirmation
    change_form_before_template = "admin/rights/erasurerequest/summary.html"
    change_form_after_template = "admin/rights/erasurerequest/details.html"
    actions_list = ["log_request", "find_person"]
    actions_detail = ["verify_step", "execute_step", "extend_step", "override_step", "reject_step", "notified_step"]
    readonly_fields = [
        "channel_display", "received_display", "regime_display", "ground_display", "purpose", "notes",
        "created_by", "data_held_display", "verified_display", "verification_method", "extended_display",
        "extension_reasons", "informed_display", "refusal_ground_display", "refusal_justification",
        "completed_display", "outcome", "document_link", "certificate_sha256",
    ]

    def get_queryset(self, request):
        return selectors.erasure_request_queryset().select_related("purpose", "verified_by", "created_by").order_by(
            "effective_due", "id")

    def has_add_permission(self, request):
        return has_role(request.user, DPO)

    def has_change_permission(self, request, obj=None):
        # The page is read-only (no Save): a request changes only through its workflow steps.
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_fieldsets(self, request, obj=None):
        if obj is None:
            return [(None, {"fields": []})]
        sets = [("Request", {"fields": [
            f for f, shown in (
                ("channel_display", True), ("received_display", True), ("regime_display", True),
                ("ground_display", True), ("purpose", obj.purpose_id is not None), ("notes", bool(obj.notes)),
                ("created_by", obj.created_by_id is not None), ("data_held_display", True),
            ) if shown]})]
        if obj.verified_at:
            sets.append(("Identity verified", {"fields": ["verified_display", "verification_method"]}))
        if obj.extended_due_at:
            sets.append(("Extension", {"fields": ["extended_display", "extension_reasons", "informed_display"]}))
        if obj.rejected_at:
            sets.append(("Refusal", {"fields": ["refusal_ground_display", "refusal_justification"]}))
        if obj.outcome or obj.certificate_path:
            sets.append(("Answer", {"fields": [
                f for f, shown in (
                    ("completed_display", obj.completed_at is not None), ("outcome", bool(obj.outcome)),
                    ("document_link", bool(obj.certificate_path)), ("certificate_sha256", bool(obj.certificate_sha256)),
                ) if shown]}))
        return sets

    # --- Columns and fields, in words --------------------------------------------------

    @admin.display(description="ground", ordering="ground")
    def ground_display(self, obj):
        return show.label(ErasureGround, obj.ground)

    @admin.display(description="deadline rules")
    def regime_display(self, obj):
        return show.label(ErasureRegime, obj.regime)

    @admin.display(description="data held when received")
    def data_held_display(self, obj):
        return "yes" if obj.data_held_at_receipt else "no personal data held under this identifier"

    @admin.display(description="verified")
    def verified_display(self, obj):
        by = f" by {obj.verified_by}" if obj.verified_by_id else ""
        return f"{show.moment(obj.verified_at)}{by}"

    @admin.display(description="extended to")
    def extended_display(self, obj):
        return f"{show.moment(obj.extended_due_at)} (first deadline {show.moment(obj.due_at)})"

    @admin.display(description="person informed of the extension")
    def informed_display(self, obj):
        return show.moment(obj.subject_informed_of_extension_at)

    @admin.display(description="exemption relied on")
    def refusal_ground_display(self, obj):
        return show.label(RefusalGround, obj.refusal_ground)

    @admin.display(description="answered")
    def completed_display(self, obj):
        return show.moment(obj.completed_at)

    @admin.display(description="answer document")
    def document_link(self, obj):
        if not obj.certificate_path:
            return "—"
        url = reverse("admin:rights_erasurerequest_certificate", args=[obj.pk])
        what = "refusal notice" if obj.status == ErasureStatus.REJECTED else "certificate"
        return format_html('<a href="{}">Download the {} (PDF)</a>', url, what)

    # --- The request page --------------------------------------------------------------

    def get_actions_detail(self, request, object_id):
        """Only the steps that can come next for this request, and only for the DPO."""
        found = views.request_or_404(object_id) if str(object_id).isdigit() else None
        if found is None or not has_role(request.user, DPO):
            return []
        allowed = set(NEXT_STEPS.get(found.status, []))
        if found.status == ErasureStatus.IN_PROGRESS and not found.steps.filter(
                status=ErasureStepStatus.FAILED).exists():
            allowed.discard("execute_step")  # running: resuming is offered once a step has failed
        ok, _ = deadlines.extension_allowed(first_due=found.due_at, today=selectors.today(),
                                            already_extended=found.extended_due_at is not None)
        if not ok:
            allowed.discard("extend_step")
        if "override_step" in allowed and not views._live_versions(found):
            allowed.discard("override_step")
        if "notified_step" in allowed and not found.recipient_notifications.filter(notified_at__isnull=True).exists():
            allowed.discard("notified_step")
        return [a for a in super().get_actions_detail(request, object_id)
                if a.action_name.removeprefix("rights_erasurerequest_") in allowed]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        obj = views.request_or_404(object_id)
        impact = selectors.erasure_request_impact(erasure_request=obj)
        person_url = None
        if obj.subject_ref and has_role(request.user, DPO, AUDITOR):
            person_url = reverse("admin:rights_person", args=[obj.subject_ref])
        extra = {
            "deadline_state": views.deadline_state(obj),
            "impact": views.impact_tables(impact),
            "person_url": person_url,
            "recipients": requests_views.recipient_rows(obj),
            **views.progress_context(obj),
            **(extra_context or {}),
        }
        return super().change_view(request, str(obj.pk), form_url, extra_context=extra)

    def add_view(self, request, form_url="", extra_context=None):
        return views.log_request_view(self, request)

    @action(description="Log a request (letter, phone, in person)", url_path="log", icon="add")
    def log_request(self, request):
        return HttpResponseRedirect(reverse("admin:rights_erasurerequest_add"))

    @action(description="Find a person", url_path="find-person", icon="person_search")
    def find_person(self, request):
        return HttpResponseRedirect(reverse("admin:rights_person_search"))

    @action(description="Verify the identity", url_path="verify", icon="verified_user")
    def verify_step(self, request, object_id):
        return views.verify_view(self, request, object_id)

    @action(description="Execute the erasure", url_path="execute", icon="delete_forever")
    def execute_step(self, request, object_id):
        return views.execute_view(self, request, object_id)

    @action(description="Extend the deadline", url_path="extend", icon="event")
    def extend_step(self, request, object_id):
        return views.extend_view(self, request, object_id)

    @action(description="Override a remediation", url_path="override", icon="rule")
    def override_step(self, request, object_id):
        return views.override_view(self, request, object_id)

    @action(description="Reject (Art. 17(3))", url_path="reject", icon="block")
    def reject_step(self, request, object_id):
        return views.reject_view(self, request, object_id)

    @action(description="Record a recipient told (Art. 19)", url_path="notified", icon="outgoing_mail")
    def notified_step(self, request, object_id):
        return requests_views.erasure_notified_view(self, request, object_id)

    def get_urls(self):
        return [
            path("<path:object_id>/certificate/", self.admin_site.admin_view(self.document_view),
                 name="rights_erasurerequest_certificate"),
            path("<path:object_id>/progress/", self.admin_site.admin_view(self.progress_view),
                 name="rights_erasurerequest_progress"),
            path("person/", self.admin_site.admin_view(self.person_search_view), name="rights_person_search"),
            path("person/<uuid:reference>/", self.admin_site.admin_view(self.person_view), name="rights_person"),
            *super().get_urls(),
        ]

    def document_view(self, request, object_id):
        return views.document_view(self, request, object_id)

    def progress_view(self, request, object_id):
        return views.progress_view(self, request, object_id)

    def person_search_view(self, request):
        return views.person_search_view(self, request)

    def person_view(self, request, reference):
        return views.person_view(self, request, reference)


@admin.register(ErasureReceipt)
class ErasureReceiptAdmin(ModelAdmin):
    """What stays of an executed erasure: counts only (the receipt hash is never shown)."""

    list_display = ["request_link", "completed_display", "records_deleted", "snapshots_amended", "models_remediated",
                    "consent_events_deleted", "recipients_to_tell"]
    readonly_fields = ["request_link", "completed_display", "records_deleted", "datasets", "snapshots_amended",
                       "membership_rows_removed", "models_remediated", "consent_events_deleted", "recipients_to_tell"]
    fields = readonly_fields

    @admin.display(description="request", ordering="request_id")
    def request_link(self, obj):
        return show.link(reverse("admin:rights_erasurerequest_change", args=[obj.request_id]), f"Request {obj.request_id}")

    @admin.display(description="completed", ordering="completed_at")
    def completed_display(self, obj):
        return show.moment(obj.completed_at)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


# --- Requests under the other rights (Art. 15, 16, 18, 20, 21) ---------------------------
# A list by deadline and a request page with one button per next step of the workflow,
# each a form (rights.admin_requests); nothing is edited in place: a request changes only
# by its services, as through /api/v1/requests/.


@admin.register(RightsRequest)
class RightsRequestAdmin(_RequestColumns, ReadOnlyAdmin):
    list_display = ["request_display", "type_display", "status_badge", "deadline_badge", "deadline",
                    "channel_display", "received_display", "limit_link"]
    list_display_links = ["request_display"]
    list_filter = ["type", "status", "regime", "channel"]
    search_fields = ["id", "subject_ref"]
    actions = None
    actions_list = ["log_request"]
    actions_detail = ["verify_step", "execute_step", "extend_step", "reject_step", "lift_step", "notified_step"]
    change_form_after_template = "admin/rights/rightsrequest/details.html"
    fieldsets = [
        ("Request", {"fields": ["type_display", "subject_ref", "data_held_display", "channel_display",
                                "received_display", "regime_display", "notes"]}),
        ("Deadline (Art. 12(3))", {"fields": ["deadline", "deadline_badge", "extended_display", "extension_reasons",
                                              "informed_display"]}),
        ("Identity (Art. 12(6))", {"fields": ["verified_display", "verification_method"]}),
        ("What is asked", {"fields": ["purpose", "restriction_ground_display", "justification"]}),
        ("Answer", {"fields": ["status_badge", "completed_display", "outcome", "limit_link", "answer_display",
                               "answer_sha256"]}),
        ("Refusal (Art. 12(4), 12(5))", {"fields": ["refusal_ground_display", "refusal_justification",
                                                    "refusal_notice"]}),
    ]
    readonly_fields = [f for _, options in fieldsets for f in options["fields"]]

    def get_queryset(self, request):
        return selectors.rights_request_queryset().select_related("purpose", "verified_by").order_by(
            "effective_due", "id")

    def has_add_permission(self, request, obj=None):
        return has_role(request.user, DPO)  # the add page is the log form, a service call

    def get_actions_detail(self, request, object_id):
        """Only the steps that can come next for this request, and only for the DPO."""
        found = selectors.rights_request_queryset().filter(pk=object_id).first() if str(object_id).isdigit() else None
        if found is None or not has_role(request.user, DPO):
            return []
        allowed = requests_views.next_steps(found)
        return [a for a in super().get_actions_detail(request, object_id)
                if a.action_name.removeprefix("rights_rightsrequest_") in allowed]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        obj = requests_views.rights_request_or_404(object_id)
        extra = {**requests_views.details_context(obj), **(extra_context or {})}
        return super().change_view(request, str(obj.pk), form_url, extra_context=extra)

    def add_view(self, request, form_url="", extra_context=None):
        return requests_views.log_view(self, request)

    @action(description="Log a request (letter, phone, in person)", url_path="log", icon="add")
    def log_request(self, request):
        return HttpResponseRedirect(reverse("admin:rights_rightsrequest_add"))

    @action(description="Verify the identity", url_path="verify", icon="verified_user")
    def verify_step(self, request, object_id):
        return requests_views.verify_view(self, request, object_id)

    @action(description="Execute", url_path="execute", icon="play_arrow")
    def execute_step(self, request, object_id):
        return requests_views.execute_view(self, request, object_id)

    @action(description="Extend the deadline", url_path="extend", icon="event")
    def extend_step(self, request, object_id):
        return requests_views.extend_view(self, request, object_id)

    @action(description="Refuse (Art. 12(5))", url_path="reject", icon="block")
    def reject_step(self, request, object_id):
        return requests_views.reject_view(self, request, object_id)

    @action(description="Lift the restriction", url_path="lift", icon="lock_open")
    def lift_step(self, request, object_id):
        return requests_views.lift_view(self, request, object_id)

    @action(description="Record a recipient told (Art. 19)", url_path="notified", icon="outgoing_mail")
    def notified_step(self, request, object_id):
        return requests_views.notified_view(self, request, object_id)

    def get_urls(self):
        return [
            path("<path:object_id>/answer/<str:fmt>/", self.admin_site.admin_view(self.answer_view),
                 name="rights_rightsrequest_answer"),
            *super().get_urls(),
        ]

    def answer_view(self, request, object_id, fmt):
        return requests_views.answer_view(self, request, object_id, fmt)

    @admin.display(description="right", ordering="type")
    def type_display(self, obj):
        return show.label(RightsRequestType, obj.type)

    @admin.display(description="regime")
    def regime_display(self, obj):
        return show.label(ErasureRegime, obj.regime)

    @admin.display(description="data held at receipt")
    def data_held_display(self, obj):
        return "yes" if obj.data_held_at_receipt else "no: answered that no data are held"

    @admin.display(description="verified")
    def verified_display(self, obj):
        return f"{show.moment(obj.verified_at)} by {obj.verified_by}" if obj.verified_at else "not yet"

    @admin.display(description="extended to")
    def extended_display(self, obj):
        return show.moment(obj.extended_due_at) if obj.extended_due_at else "not extended"

    @admin.display(description="subject informed of the extension")
    def informed_display(self, obj):
        return show.moment(obj.subject_informed_of_extension_at) if obj.subject_informed_of_extension_at else "—"

    @admin.display(description="restriction ground")
    def restriction_ground_display(self, obj):
        return show.label(RestrictionGround, obj.restriction_ground) if obj.restriction_ground else "—"

    @admin.display(description="refused on")
    def refusal_ground_display(self, obj):
        return show.label(RightsRefusalGround, obj.refusal_ground) if obj.refusal_ground else "—"

    @admin.display(description="completed")
    def completed_display(self, obj):
        return show.moment(obj.completed_at) if obj.completed_at else "—"

    @admin.display(description="limit recorded")
    def limit_link(self, obj):
        model = {RightsRequestType.RESTRICTION: "processingrestriction",
                 RightsRequestType.OBJECTION: "processingobjection"}.get(obj.type)
        if model is None or obj.limit_id is None:
            return "—"
        what = "Restriction" if obj.type == RightsRequestType.RESTRICTION else "Objection"
        return format_html('<a href="{}">{} {}</a>', reverse(f"admin:governance_{model}_change", args=[obj.limit_id]),
                           what, obj.limit_id)

    @admin.display(description="answer file")
    def answer_display(self, obj):
        if obj.type not in (RightsRequestType.ACCESS, RightsRequestType.PORTABILITY):
            return "—"
        if selectors.rights_answer_expired(rights_request=obj):
            return f"expired on {show.moment(obj.answer_expires_at)}; the files are deleted"
        if not obj.answer_path:
            return "not built yet"
        return f"downloadable by the DPO until {show.moment(obj.answer_expires_at)} (GET /api/v1/requests/{obj.pk}/answer/)"
