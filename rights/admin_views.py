"""The DPO's request and person pages in the admin: forms, readable tables and the views the
erasure admin mounts (rights.admin). Views stay thin: every write is a ``rights.services``
call, and a refusal comes back as a form error or a message, never a server error.

Nothing here stores, logs or echoes a raw identifier: it is pseudonymised by the service
(logging a request) or by governance's pseudonymisation (looking a person up), and the
pages that follow a form name the person only by the subject's random reference.
"""

from __future__ import annotations

import logging
from datetime import date
from pathlib import Path
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from unfold.widgets import (
    UnfoldAdminSelectWidget,
    UnfoldAdminTextareaWidget,
    UnfoldAdminTextInputWidget,
)

from governance import display
from governance.roles import AUDITOR, DPO, has_role
from governance.services import ServiceError
from rights import deadlines, selectors, services
from rights.models import (
    ErasureChannel,
    ErasureGround,
    ErasureRegime,
    ErasureRequest,
    ErasureStatus,
    ErasureStep,
    ErasureStepStatus,
    RefusalGround,
    RemediationAction,
)

logger = logging.getLogger(__name__)

# Channels a DPO logs by hand; the API and consent withdrawals open their own requests.
LOGGED_CHANNELS = [
    ErasureChannel.LETTER, ErasureChannel.PHONE, ErasureChannel.IN_PERSON, ErasureChannel.EMAIL,
    ErasureChannel.WEB_FORM,
]
STEP_ORDER = [
    "plan", "amend_snapshots", "delete_records", "taint_models", "remediate_lineage_", "delete_old_artifacts",
    "delete_consent_events", "notify_recipients", "delete_subject", "verify_claims", "certificate",
]
STEP_LABELS = {
    "plan": "Plan what the erasure touches",
    "amend_snapshots": "Remove the person from the snapshots",
    "delete_records": "Delete the person's records",
    "taint_models": "Mark models trained on the data as tainted",
    "delete_old_artifacts": "Delete the files of replaced model versions",
    "delete_consent_events": "Delete the consent events",
    "notify_recipients": "List the recipients to tell (Art. 19)",
    "delete_subject": "Delete the subject row (the receipt stays)",
    "verify_claims": "Verify every claim against the database",
    "certificate": "Issue the certificate",
}
REMEDIATION_WORDS = {
    **dict(RemediationAction.choices),
    "delete_artifact": "Delete the file of this replaced version",
}
STATUS_VARIANT = {
    ErasureStatus.RECEIVED: "info", ErasureStatus.VERIFIED: "primary", ErasureStatus.IN_PROGRESS: "warning",
    ErasureStatus.COMPLETED: "success", ErasureStatus.REJECTED: "default",
}
INPUT = {"autocomplete": "off"}


# --- Small helpers ----------------------------------------------------------------------


def admin_url(name: str, *args: Any) -> str | None:
    """The admin page ``name`` of an object, or None when that page is not registered."""
    try:
        return reverse(f"admin:{name}", args=args)
    except NoReverseMatch:
        return None


def linked(name: str, pk: Any, text: Any) -> Any:
    url = admin_url(name, pk)
    return display.link(url, text) if url else text


def request_or_404(object_id: Any) -> ErasureRequest:
    """The request named by a URL's id; a 404 for anything else (``abc``, ``-1``, 99999)."""
    try:
        pk = int(str(object_id))
    except (TypeError, ValueError):
        raise Http404("No such erasure request.")
    request = selectors.erasure_request_queryset().filter(pk=pk).select_related("purpose", "verified_by").first()
    if request is None:
        raise Http404("No such erasure request.")
    return request


def require_dpo(request: HttpRequest) -> None:
    if not has_role(request.user, DPO):
        raise PermissionDenied("Only the DPO acts on erasure requests.")


def require_dpo_or_auditor(request: HttpRequest) -> None:
    if not has_role(request.user, DPO, AUDITOR):
        raise PermissionDenied("Only the DPO and auditors look people up.")


def days_left(erasure_request: ErasureRequest, *, on: date | None = None) -> int | None:
    return selectors.erasure_request_days_left(erasure_request=erasure_request, on=on)


def deadline_state(erasure_request: ErasureRequest) -> dict[str, Any]:
    """What the top of a request page and its list row say about time: the deadline, the days
    left, and whether it is overdue (open and past it) or was answered late."""
    left = days_left(erasure_request)
    answered = erasure_request.completed_at or erasure_request.rejected_at
    late_by = None
    if answered is not None:
        late_by = (timezone.localtime(answered).date() - erasure_request.effective_due_at).days
        late_by = late_by if late_by > 0 else None
    if left is None:
        text = f"answered {late_by} day(s) late" if late_by else "answered in time" if answered else "closed"
    elif left < 0:
        text = f"OVERDUE by {-left} day(s)"
    elif left == 0:
        text = "due today"
    else:
        text = f"{left} day(s) left"
    return {
        "deadline": display.moment(erasure_request.effective_due_at),
        "extended": erasure_request.extended_due_at is not None,
        "days_left": left,
        "days_left_text": "—" if left is None else f"{-left} overdue" if left < 0 else str(left),
        "overdue": left is not None and left < 0,
        "due_soon": left is not None and 0 <= left <= 7,
        "late_by": late_by,
        "text": text,
    }


# --- The impact as linked tables --------------------------------------------------------


def impact_tables(impact: dict[str, Any], *, remediation_header: str = "What will happen") -> dict[str, Any]:
    """The impact of an erasure (rights.selectors) as rows of linked cells for the page."""
    datasets = [
        [linked("provenance_dataset_change", d["id"], d["name"]), display.number(d["records"])]
        for d in impact["datasets"]
    ]
    snapshots = [
        [linked("provenance_snapshot_change", s["id"], f"Snapshot #{s['id']}"),
         linked("provenance_dataset_change", s["dataset_id"], f"dataset #{s['dataset_id']}"),
         s["purpose"], display.number(s["records"])]
        for s in impact["snapshots"]
    ]
    runs = [
        [linked("mlops_trainingrun_change", r["id"], r["name"] or f"Run #{r['id']}"),
         linked("provenance_snapshot_change", r["snapshot_id"], f"Snapshot #{r['snapshot_id']}"),
         str(r["status"]).replace("_", " "), "SISA" if r.get("sisa") else "single model"]
        for r in impact["training_runs"]
    ]
    models = []
    for m in impact["model_versions"]:
        override = m.get("override")
        planned = REMEDIATION_WORDS.get(m["remediation"], m["remediation"])
        if override:
            planned = (f"{planned} — decided by the DPO instead of "
                       f"“{REMEDIATION_WORDS.get(m['proposed_remediation'], m['proposed_remediation'])}”: "
                       f"{override['justification']}")
        models.append([
            linked("mlops_modelversion_change", m["id"], f"{m['name']} v{m['version']}"),
            str(m["status"]).replace("_", " "), display.epsilon(m["epsilon"], non_private=m["non_private"]),
            planned,
        ])
    return {
        "datasets": {"headers": ["Dataset", "Records"], "rows": datasets},
        "snapshots": {"headers": ["Snapshot", "Dataset", "Purpose", "Records"], "rows": snapshots},
        "runs": {"headers": ["Training run", "Snapshot", "Status", "Kind"], "rows": runs},
        "models": {"headers": ["Model version", "Status", "ε", remediation_header], "rows": models},
        "counts": [
            (display.number(n), word if n == 1 else f"{word}s") for word, n in (
                ("record", impact["totals"]["records"]), ("dataset", impact["totals"]["datasets"]),
                ("snapshot", impact["totals"]["snapshots"]), ("training run", impact["totals"]["training_runs"]),
                ("model version", impact["totals"]["model_versions"]), ("consent event", impact["consent_events"]),
            )
        ],
        "data_held": impact["data_held"],
        "executed": impact["executed"],
    }


# --- The steps as a timeline ------------------------------------------------------------


def _step_label(name: str, details: dict) -> str:
    if name.startswith("remediate_lineage_"):
        return f"Remediate the model “{details.get('name') or name.removeprefix('remediate_lineage_')}”"
    return STEP_LABELS.get(name, name.replace("_", " ").capitalize())


def _step_outcome(name: str, d: dict) -> str:
    """One sentence per step from its recorded details (never the details themselves)."""
    from rights.certificate import outcome_words

    if name == "plan":
        t = d.get("totals", {})
        return (f"{t.get('records', 0)} record(s) in {t.get('datasets', 0)} dataset(s), {t.get('snapshots', 0)} "
                f"snapshot(s), {t.get('model_versions', 0)} model version(s), {d.get('consent_events', 0)} consent "
                f"event(s), {len(d.get('recipients', []))} recipient(s) to notify")
    if name == "amend_snapshots":
        rows = d.get("amendments", [])
        return f"{len(rows)} snapshot(s) amended, {sum(r.get('records_removed', 0) for r in rows)} row(s) removed"
    if name == "delete_records":
        return f"{d.get('records_deleted', 0)} record(s) deleted"
    if name == "taint_models":
        return f"{len(d.get('newly_tainted', []))} model version(s) newly marked tainted"
    if name.startswith("remediate_lineage_"):
        text = outcome_words(d)
        if d.get("outcome") == "awaiting_owner":
            since = str(d.get("waiting_since") or "")[:16].replace("T", " ")
            text += (f"; v{d.get('version')} is tainted and not served meanwhile; owner: {d.get('owner') or '—'}; "
                     f"waiting since {since} UTC")
        elif d.get("model_version"):
            text += f"; version v{d.get('version')} stands now"
        check = d.get("unlearning_check") or {}
        if check.get("status") in ("passed", "failed"):
            text += f"; unlearning check {check['status']}"
        return text
    if name == "delete_old_artifacts":
        return f"{len(d.get('artifacts', []))} file(s) deleted"
    if name == "delete_consent_events":
        return f"{d.get('consent_events_deleted', 0)} consent event(s) deleted"
    if name == "notify_recipients":
        names = d.get("recipients", [])
        return ("To tell: " + ", ".join(names)) if names else "No recipient is named by the activities involved"
    if name == "delete_subject":
        return "Subject row deleted"
    if name == "verify_claims":
        checks = d.get("checks", [])
        return f"{sum(1 for c in checks if c.get('ok'))} of {len(checks)} claim(s) hold"
    if name == "certificate":
        return f"Certificate issued (SHA-256 {str(d.get('sha256', ''))[:16]}…)"
    return ""


def _order(name: str) -> int:
    key = "remediate_lineage_" if name.startswith("remediate_lineage_") else name
    return STEP_ORDER.index(key) if key in STEP_ORDER else len(STEP_ORDER)


def step_timeline(erasure_request: ErasureRequest) -> list[dict[str, Any]]:
    """Each step of the execution as a line of the timeline: label, moments, outcome; the
    steps not reached yet follow as "waiting" while the request is in progress."""
    steps = sorted(ErasureStep.objects.filter(request=erasure_request), key=lambda s: (_order(s.name), s.id))
    lines = []
    for s in steps:
        details = s.details if isinstance(s.details, dict) else {}
        lines.append({
            "label": _step_label(s.name, details),
            "status": s.get_status_display(),
            "variant": {"done": "success", "failed": "danger", "waiting": "info"}.get(s.status, "warning"),
            "started": display.moment(s.started_at),
            "finished": display.moment(s.finished_at) if s.finished_at else "",
            "outcome": s.error if s.status == ErasureStepStatus.FAILED else _step_outcome(s.name, details),
            "attempts": s.attempts,
        })
    if erasure_request.status == ErasureStatus.IN_PROGRESS:
        seen = {"remediate_lineage_" if s.name.startswith("remediate_lineage_") else s.name for s in steps}
        for name in STEP_ORDER:
            if name not in seen and name != "remediate_lineage_":
                lines.append({"label": STEP_LABELS[name], "status": "Waiting", "variant": "default",
                              "started": "", "finished": "", "outcome": "", "attempts": 0})
    return lines


def progress_context(erasure_request: ErasureRequest) -> dict[str, Any]:
    failed = ErasureStep.objects.filter(request=erasure_request, status=ErasureStepStatus.FAILED).exists()
    waiting = ErasureStep.objects.filter(request=erasure_request, status=ErasureStepStatus.WAITING).exists()
    running = erasure_request.status == ErasureStatus.IN_PROGRESS and not failed and not waiting
    return {
        "original": erasure_request,
        "timeline": step_timeline(erasure_request),
        "running": running,
        "failed": failed,
        "waiting": waiting and not failed,
        "progress_url": reverse("admin:rights_erasurerequest_progress", args=[erasure_request.pk]),
        "document_url": (reverse("admin:rights_erasurerequest_certificate", args=[erasure_request.pk])
                         if erasure_request.certificate_path else None),
        "status_label": erasure_request.get_status_display(),
        "status_variant": STATUS_VARIANT.get(erasure_request.status, "default"),
    }


# --- Forms ------------------------------------------------------------------------------


def _select(choices) -> UnfoldAdminSelectWidget:
    widget = UnfoldAdminSelectWidget()
    widget.choices = choices
    return widget


class LogRequestForm(forms.Form):
    """A request received by letter, phone or in person; the service pseudonymises the identifier."""

    identifier = forms.CharField(
        label="The person's identifier", max_length=500, strip=True,
        help_text="Their e-mail or customer number as they gave it. Pseudonymised on save; never stored or shown again.",
        widget=UnfoldAdminTextInputWidget(attrs=INPUT),
    )
    channel = forms.ChoiceField(
        label="Received by", choices=[(c.value, c.label) for c in LOGGED_CHANNELS],
        initial=ErasureChannel.LETTER, widget=_select([(c.value, c.label) for c in LOGGED_CHANNELS]),
    )
    received_at = forms.DateTimeField(
        label="Received at", required=False, input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%d"],
        help_text="When it reached us (the deadline counts from this day). Empty: now.",
        widget=UnfoldAdminTextInputWidget(attrs={"type": "datetime-local", **INPUT}),
    )
    ground = forms.ChoiceField(
        label="Ground invoked (Art. 17(1))", choices=[("", "Choose the ground…"), *ErasureGround.choices],
        widget=_select([("", "Choose the ground…"), *ErasureGround.choices]),
    )
    regime = forms.ChoiceField(
        label="Law that sets the deadline", choices=ErasureRegime.choices, initial=ErasureRegime.EU,
        widget=_select(ErasureRegime.choices),
    )
    notes = forms.CharField(
        label="Notes", required=False, max_length=4000,
        help_text="E.g. the letter's reference or who took the call. Do not write the identifier here.",
        widget=UnfoldAdminTextareaWidget(attrs={"rows": 3}),
    )


class VerifyForm(forms.Form):
    METHODS = [
        ("", "Choose how the identity was checked…"),
        ("Signed-in account (the request came from the person's own account)",
         "Signed-in account (the request came from the person's own account)"),
        ("Confirmation link sent to the e-mail address on file", "Confirmation link sent to the e-mail address on file"),
        ("Security questions answered on a call back to the number on file",
         "Security questions answered on a call back to the number on file"),
        ("Identity document seen in person", "Identity document seen in person"),
        ("Signed letter matching the postal address on file", "Signed letter matching the postal address on file"),
    ]
    method = forms.ChoiceField(label="How the identity was verified (Art. 12(6))", choices=METHODS,
                               widget=_select(METHODS), required=False)
    other = forms.CharField(label="Or describe another method", required=False, max_length=300,
                            widget=UnfoldAdminTextInputWidget(attrs=INPUT))

    def clean(self):
        data = super().clean()
        method = (data.get("other") or "").strip() or data.get("method") or ""
        if not method:
            self.add_error("method", "Choose the method used, or describe it.")
        data["method_text"] = method
        return data


class ExtendForm(forms.Form):
    reasons = forms.CharField(
        label="Reasons for the extension", help_text="Art. 12(3): complex or numerous requests; the person is told why.",
        widget=UnfoldAdminTextareaWidget(attrs={"rows": 3}),
    )
    subject_informed_at = forms.DateTimeField(
        label="Person informed at", input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%d"],
        help_text="Within the first period.",
        widget=UnfoldAdminTextInputWidget(attrs={"type": "datetime-local", **INPUT}),
    )


class RejectForm(forms.Form):
    refusal_ground = forms.ChoiceField(
        label="Exemption relied on (Art. 17(3))", choices=[("", "Choose the exemption…"), *RefusalGround.choices],
        widget=_select([("", "Choose the exemption…"), *RefusalGround.choices]),
    )
    justification = forms.CharField(
        label="Justification", help_text="Goes into the Art. 12(4) notice sent to the person.",
        widget=UnfoldAdminTextareaWidget(attrs={"rows": 4}),
    )


class OverrideForm(forms.Form):
    model_version = forms.ChoiceField(label="Model version")
    action = forms.ChoiceField(label="Remediation instead", choices=RemediationAction.choices,
                               widget=_select(RemediationAction.choices))
    justification = forms.CharField(label="Justification", widget=UnfoldAdminTextareaWidget(attrs={"rows": 3}))

    def __init__(self, *args: Any, versions: list[tuple[str, str]], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.fields["model_version"].choices = versions
        self.fields["model_version"].widget = _select(versions)


class ExecuteForm(forms.Form):
    confirm = forms.BooleanField(
        label="I have reviewed what will be erased and remediated", required=True,
        error_messages={"required": "Tick the box to confirm the erasure."},
    )


class PersonSearchForm(forms.Form):
    identifier = forms.CharField(
        label="The person's identifier", max_length=500,
        help_text="Pseudonymised before the lookup; never stored, logged or shown again.",
        widget=UnfoldAdminTextInputWidget(attrs=INPUT),
    )


def service_error_to_form(form: forms.Form, exc: ServiceError, *, fields: dict[str, str] | None = None) -> None:
    """The service's refusal on the field it names (mapped to the form's field), else on the form."""
    field = (fields or {}).get(exc.field or "", exc.field)
    form.add_error(field if field in form.fields else None, str(exc))


# --- Views ------------------------------------------------------------------------------


def _page(model_admin: Any, request: HttpRequest, template: str, title: str, status: int = 200,
          **context: Any) -> TemplateResponse:
    return TemplateResponse(request, template, {
        **model_admin.admin_site.each_context(request), "opts": model_admin.model._meta, "title": title, **context,
    }, status=status)


def change_url(erasure_request: ErasureRequest) -> str:
    return reverse("admin:rights_erasurerequest_change", args=[erasure_request.pk])


def request_logged(model_admin: Any, request: HttpRequest, created: Any, url: str) -> HttpResponse:
    """After a request of any right was logged by hand: say what happens next, note it in
    the admin's recent actions, go to its page."""
    if created.status == ErasureStatus.COMPLETED:
        messages.info(request, f"Request {created.pk} logged: no personal data are held under this "
                               "identifier, so it was answered at once.")
    else:
        messages.success(request, f"Request {created.pk} logged; answer due {display.moment(created.effective_due_at)}.")
    model_admin.log_addition(request, created, f"Logged (received by {created.get_channel_display()}).")
    return HttpResponseRedirect(url)


def identifier_forget(form: forms.Form) -> None:
    """The identifier is never echoed back, not even into a form with errors."""
    form.data = form.data.copy()
    form.data["identifier"] = ""


def log_request_view(model_admin: Any, request: HttpRequest) -> HttpResponse:
    require_dpo(request)
    form = LogRequestForm(request.POST or None)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            data = form.cleaned_data
            try:
                created = services.erasure_request_receive(
                    identifier=data["identifier"], ground=data["ground"], channel=data["channel"],
                    received_at=data["received_at"], regime=data["regime"], notes=data["notes"], actor=request.user,
                )
            except ServiceError as exc:
                service_error_to_form(form, exc, fields={"subject": "identifier"})
            else:
                return request_logged(model_admin, request, created, change_url(created))
        status = 400
        identifier_forget(form)
    return _page(model_admin, request, "admin/rights/erasurerequest/log_request.html", "Log an erasure request",
                 status=status, form=form)


def _confirm(model_admin: Any, request: HttpRequest, erasure_request: ErasureRequest, *, step: str, title: str,
             form: forms.Form, intro: str, button: str, danger: bool = False, status: int = 200) -> TemplateResponse:
    impact = selectors.erasure_request_impact(erasure_request=erasure_request)
    return _page(
        model_admin, request, "admin/rights/erasurerequest/confirm.html", title, status=status,
        original=erasure_request, form=form, step=step, intro=intro, button=button, danger=danger,
        impact=impact_tables(impact), deadline=deadline_state(erasure_request), back_url=change_url(erasure_request),
    )


def _run(model_admin: Any, request: HttpRequest, obj: ErasureRequest, form: forms.Form, call, success: str,
         fields: dict[str, str] | None = None) -> bool:
    try:
        call()
    except ServiceError as exc:
        service_error_to_form(form, exc, fields=fields)
        return False
    messages.success(request, success)
    # The admin's "Recent actions" list the DPO's steps too (the audit chain is the record).
    model_admin.log_change(request, obj, success)
    return True


def verify_view(model_admin: Any, request: HttpRequest, object_id: Any) -> HttpResponse:
    require_dpo(request)
    obj = request_or_404(object_id)
    form = VerifyForm(request.POST or None)
    if request.method == "POST" and form.is_valid() and _run(
        model_admin, request, obj, form, lambda: services.erasure_request_verify(
            erasure_request=obj, method=form.cleaned_data["method_text"], actor=request.user),
        f"Request {obj.pk}: identity verified ({form.cleaned_data['method_text']}).", {"method": "other"},
    ):
        return HttpResponseRedirect(change_url(obj))
    return _confirm(model_admin, request, obj, step="verify", title=f"Verify the identity — request {obj.pk}",
                    form=form, button="Record the verification", status=400 if request.method == "POST" else 200,
                    intro="Record how the requester's identity was checked. Execution is possible only after this.")


def extend_view(model_admin: Any, request: HttpRequest, object_id: Any) -> HttpResponse:
    require_dpo(request)
    obj = request_or_404(object_id)
    form = ExtendForm(request.POST or None)
    if request.method == "POST" and form.is_valid() and _run(
        model_admin, request, obj, form, lambda: services.erasure_request_extend(
            erasure_request=obj, reasons=form.cleaned_data["reasons"],
            subject_informed_at=form.cleaned_data["subject_informed_at"], actor=request.user),
        f"Request {obj.pk}: deadline extended.",
    ):
        return HttpResponseRedirect(change_url(obj))
    extended = deadlines.extended_due_date(
        regime=obj.regime, received_on=timezone.localtime(obj.received_at).date(),
        holidays=deadlines.configured_holidays(),
    )
    return _confirm(model_admin, request, obj, step="extend", title=f"Extend the deadline — request {obj.pk}",
                    form=form, button="Extend the deadline", status=400 if request.method == "POST" else 200,
                    intro=f"Art. 12(3) allows one extension, decided within the first period: the deadline moves "
                          f"from {display.moment(obj.due_at)} to {display.moment(extended)}.")


def reject_view(model_admin: Any, request: HttpRequest, object_id: Any) -> HttpResponse:
    require_dpo(request)
    obj = request_or_404(object_id)
    form = RejectForm(request.POST or None)
    if request.method == "POST" and form.is_valid() and _run(
        model_admin, request, obj, form, lambda: services.erasure_request_reject(
            erasure_request=obj, refusal_ground=form.cleaned_data["refusal_ground"],
            justification=form.cleaned_data["justification"], actor=request.user),
        f"Request {obj.pk} rejected; the Art. 12(4) notice is ready to download.",
    ):
        return HttpResponseRedirect(change_url(obj))
    return _confirm(model_admin, request, obj, step="reject", title=f"Reject the request — request {obj.pk}",
                    form=form, button="Reject and write the notice", danger=True,
                    status=400 if request.method == "POST" else 200,
                    intro="Nothing below is erased: the person receives a notice with the exemption, your "
                          "justification and their rights to complain and to a judicial remedy.")


def _live_versions(obj: ErasureRequest) -> list[tuple[str, str]]:
    impact = selectors.erasure_request_impact(erasure_request=obj)
    return [
        (str(m["id"]), f"{m['name']} v{m['version']} — now: {REMEDIATION_WORDS.get(m['remediation'], m['remediation'])}")
        for m in impact["model_versions"] if m["status"] in selectors.LIVE_MODEL_STATUSES
    ]


def override_view(model_admin: Any, request: HttpRequest, object_id: Any) -> HttpResponse:
    require_dpo(request)
    obj = request_or_404(object_id)
    form = OverrideForm(request.POST or None, versions=_live_versions(obj))
    if request.method == "POST" and form.is_valid() and _run(
        model_admin, request, obj, form, lambda: services.erasure_request_override_remediation(
            erasure_request=obj, model_version_id=form.cleaned_data["model_version"],
            action=form.cleaned_data["action"], justification=form.cleaned_data["justification"], actor=request.user),
        f"Request {obj.pk}: remediation decided.",
    ):
        return HttpResponseRedirect(change_url(obj))
    return _confirm(model_admin, request, obj, step="override", title=f"Override a remediation — request {obj.pk}",
                    form=form, button="Record the decision", status=400 if request.method == "POST" else 200,
                    intro="Decide, with a written reason, to remediate one model otherwise than the policy "
                          "proposes. Keeping a model on its DP guarantee is recorded as an accepted risk.")


def execute_view(model_admin: Any, request: HttpRequest, object_id: Any) -> HttpResponse:
    require_dpo(request)
    obj = request_or_404(object_id)
    form = ExecuteForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            services.erasure_request_execute_start(erasure_request=obj, actor=request.user)
        except ServiceError as exc:
            service_error_to_form(form, exc)
        except Exception:
            # Embedded mode (no broker) runs the task here, at the commit: a failed step is
            # recorded on the request, shown on its timeline and resumed from there.
            logger.exception("erasure request %s: execution stopped", obj.pk)
            messages.error(request, f"Request {obj.pk}: execution stopped at a failed step; the timeline shows "
                                    "which one and why. Fix the cause, then resume.")
            return HttpResponseRedirect(change_url(obj))
        else:
            obj.refresh_from_db()
            model_admin.log_change(request, obj, "Execution started.")
            if obj.status == ErasureStatus.COMPLETED:
                messages.success(request, f"Request {obj.pk}: erasure completed; the certificate is ready.")
            else:
                messages.info(request, f"Request {obj.pk}: erasure queued; it runs in the background and this "
                                       "page shows its progress.")
            return HttpResponseRedirect(change_url(obj))
    resume = obj.status == ErasureStatus.IN_PROGRESS
    return _confirm(model_admin, request, obj, step="execute",
                    title=f"{'Resume' if resume else 'Execute'} the erasure — request {obj.pk}",
                    form=form, button="Resume the erasure" if resume else "Erase now", danger=True,
                    status=400 if request.method == "POST" else 200,
                    intro="This cannot be undone. The person's records are deleted, the snapshots amended, each model "
                          "below remediated as shown, their consent events and subject row deleted, and the "
                          "recipients notified. It runs in the background; you can leave the page.")


def progress_view(model_admin: Any, request: HttpRequest, object_id: Any) -> HttpResponse:
    obj = request_or_404(object_id)
    if not model_admin.has_view_permission(request, obj):
        raise PermissionDenied
    return TemplateResponse(request, "admin/rights/erasurerequest/progress.html", progress_context(obj))


def document_view(model_admin: Any, request: HttpRequest, object_id: Any) -> HttpResponse:
    """The certificate (completed) or the refusal notice (rejected) as a PDF download."""
    obj = request_or_404(object_id)
    if not model_admin.has_view_permission(request, obj):
        raise PermissionDenied
    if not obj.certificate_path:
        messages.warning(request, f"Request {obj.pk} has no answer document yet: the certificate comes with "
                                  "completion, the refusal notice with rejection.")
        return HttpResponseRedirect(change_url(obj))
    root = Path(settings.REPORT_ROOT).resolve()
    path = (root / obj.certificate_path).resolve()
    if root not in path.parents or not path.is_file():
        messages.error(request, f"The answer document of request {obj.pk} is missing from the report store "
                                f"(expected {obj.certificate_path}); its SHA-256 stays on the request.")
        return HttpResponseRedirect(change_url(obj))
    return FileResponse(path.open("rb"), content_type="application/pdf", as_attachment=True, filename=path.name)


# --- The person page --------------------------------------------------------------------


def person_search_view(model_admin: Any, request: HttpRequest) -> HttpResponse:
    """Find a person by identifier (POST only, so it never reaches a URL or an access log)."""
    require_dpo_or_auditor(request)
    from governance.pseudonymisation import pseudonymise
    from governance.selectors import data_subject_find

    form = PersonSearchForm(request.POST or None)
    searched, previous, status = False, None, 200
    if request.method == "POST":
        if form.is_valid():
            identifier = form.cleaned_data["identifier"]
            try:
                subject = data_subject_find(identifier=identifier)
                receipt_hash = services.erasure_receipt_hash(pseudonym=pseudonymise(identifier))
            except (TypeError, ValueError) as exc:
                form = PersonSearchForm()
                form.add_error("identifier", str(exc))
                status = 400
            else:
                if subject is not None:
                    return HttpResponseRedirect(reverse("admin:rights_person", args=[subject.reference]))
                searched = True
                previous = selectors.erasure_previous_completed(receipt_hash=receipt_hash)
                form = PersonSearchForm()  # never echo the identifier back
        else:
            status = 400
            form.data = form.data.copy()
            form.data["identifier"] = ""
    return _page(model_admin, request, "admin/rights/person_search.html", "Find a person", status=status,
                 form=form, searched=searched, previous=previous)


def _consent_timeline(subject: Any) -> list[dict[str, Any]]:
    from governance.selectors import consent_history

    rows = []
    for entry in consent_history(subject=subject):
        purpose = entry["purpose"]
        rows.append({
            "purpose": purpose,
            "purpose_url": admin_url("governance_purpose_change", purpose.pk),
            "valid": entry["valid"],
            "state": str(entry["state"]).replace("_", " ") if entry["state"] else "",
            "events": [
                {"action": e.get_action_display(), "given": e.action == "given",
                 "at": display.moment(e.occurred_at), "method": e.method.replace("_", " "), "notice": e.notice_version,
                 "expires": display.moment(e.expires_at) if e.expires_at else ""}
                for e in entry["events"]
            ],
        })
    return rows


def _request_rows(reference: Any) -> list[list[Any]]:
    rows = []
    for r in selectors.erasure_request_queryset().filter(subject_ref=reference).order_by("-received_at"):
        state = deadline_state(r)
        rows.append([
            display.link(change_url(r), f"Request {r.pk}"), r.get_status_display(), display.moment(r.received_at),
            display.label(ErasureGround, r.ground), state["deadline"], state["text"],
        ])
    return rows


def person_view(model_admin: Any, request: HttpRequest, reference: Any) -> HttpResponse:
    """Everything held about one person, named by the subject's random reference."""
    require_dpo_or_auditor(request)
    from governance.models import DataSubject

    subject = DataSubject.objects.filter(reference=reference).first()
    requests_ = _request_rows(reference)
    if subject is None and not requests_:
        raise Http404("No such person.")
    impact = (selectors.subject_impact_for_erasure(subject_id=subject.pk) if subject is not None else None)
    return _page(
        model_admin, request, "admin/rights/person.html", f"Person {reference}",
        reference=reference, subject=subject,
        consent=_consent_timeline(subject) if subject is not None else [],
        impact=impact_tables(impact, remediation_header="Remediation if erased") if impact else None,
        requests_table={"headers": ["Request", "Status", "Received", "Ground", "Deadline", "Time"], "rows": requests_},
        log_url=reverse("admin:rights_erasurerequest_add") if has_role(request.user, DPO) else None,
        search_url=reverse("admin:rights_person_search"),
    )
