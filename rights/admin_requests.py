"""The DPO's workflow for requests under Art. 15, 16, 18, 20 and 21 in the admin: log a
request received by letter, phone or in person, verify the identity, extend the deadline,
refuse under Art. 12(5), execute, lift a restriction, record the Art. 19 notifications and
download the answer. Each page is a form; every write is a ``rights.services`` call, whose
refusal comes back as a form error naming the field, never a server error.

Nothing here stores, logs or echoes a raw identifier: the service pseudonymises it, and a
form with errors is shown again without it.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from unfold.widgets import UnfoldAdminTextareaWidget, UnfoldAdminTextInputWidget

from governance import display
from governance.models import Purpose, RestrictionGround
from governance.services import ServiceError
from rights import selectors, services
from rights.admin_views import (
    INPUT,
    LOGGED_CHANNELS,
    ExtendForm,
    VerifyForm,
    _page,
    _select,
    deadline_state,
    identifier_forget,
    request_logged,
    require_dpo,
    service_error_to_form,
)
from rights.models import (
    ErasureChannel,
    ErasureRegime,
    ErasureStatus,
    RightsRefusalGround,
    RightsRequest,
    RightsRequestType,
)
from rights.services.answers import answer_files

MOMENT_FORMATS = ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%d"]


def _moment_field(label: str, help_text: str, required: bool = True) -> forms.DateTimeField:
    return forms.DateTimeField(
        label=label, required=required, input_formats=MOMENT_FORMATS, help_text=help_text,
        widget=UnfoldAdminTextInputWidget(attrs={"type": "datetime-local", **INPUT}),
    )


def _text_area(label: str, help_text: str, required: bool = True, rows: int = 3) -> forms.CharField:
    return forms.CharField(label=label, required=required, help_text=help_text,
                           widget=UnfoldAdminTextareaWidget(attrs={"rows": rows}))


def corrections_parse(text: str) -> list[dict[str, Any]]:
    """The DPO's corrections, one per line as ``<record id>: <field> = <value>``, as the
    service takes them (``[{"record": id, "values": {field: value}}]``). A value is read as
    JSON when it is (42, 3.5, true, "text"), else as the text typed."""
    by_record: dict[int, dict[str, Any]] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        record, sep, rest = line.partition(":")
        field, eq, value = rest.partition("=")
        if not sep or not eq or not record.strip().isdigit() or not field.strip():
            raise forms.ValidationError(f"Line {number}: write '<record id>: <field> = <value>', e.g. '12: age = 42'.")
        value = value.strip()
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        by_record.setdefault(int(record), {})[field.strip()] = parsed
    if not by_record:
        raise forms.ValidationError("Give at least one correction.")
    return [{"record": record, "values": values} for record, values in by_record.items()]


class LogRightsRequestForm(forms.Form):
    """A request under any right but erasure (erasure has its own form and workflow)."""

    type = forms.ChoiceField(label="Right exercised", choices=RightsRequestType.choices,
                             widget=_select(RightsRequestType.choices))
    identifier = forms.CharField(
        label="The person's identifier", max_length=500, strip=True,
        help_text="Their e-mail or customer number as they gave it. Pseudonymised on save; never stored or shown again.",
        widget=UnfoldAdminTextInputWidget(attrs=INPUT),
    )
    channel = forms.ChoiceField(
        label="Received by", choices=[(c.value, c.label) for c in LOGGED_CHANNELS], initial=ErasureChannel.LETTER,
        widget=_select([(c.value, c.label) for c in LOGGED_CHANNELS]),
    )
    received_at = _moment_field("Received at", "When it reached us (the deadline counts from this day). Empty: now.",
                                required=False)
    regime = forms.ChoiceField(label="Law that sets the deadline", choices=ErasureRegime.choices,
                               initial=ErasureRegime.EU, widget=_select(ErasureRegime.choices))
    purpose = forms.ModelChoiceField(
        label="Objection: the purpose objected to", required=False, queryset=Purpose.objects.order_by("code"),
        to_field_name="code", help_text="Only for an objection (Art. 21).",
    )
    restriction_ground = forms.ChoiceField(
        label="Restriction: the Art. 18(1) ground", required=False,
        choices=[("", "—"), *RestrictionGround.choices], widget=_select([("", "—"), *RestrictionGround.choices]),
    )
    dataset = forms.IntegerField(label="Rectification: the dataset (its id)", required=False, min_value=1)
    corrections = _text_area(
        "Rectification: the corrected values",
        "One per line: '<record id>: <field> = <value>', e.g. '12: age = 42'. Checked against the dataset's schema.",
        required=False)
    justification = _text_area(
        "Reason or grounds",
        "Restriction: why processing is restricted; objection: the person's grounds (not needed against direct "
        "marketing); rectification: the reason for the correction.", required=False)
    notes = _text_area("Notes", "E.g. the letter's reference. Do not write the identifier here.", required=False)

    def clean(self):
        data = super().clean()
        text = (data.get("corrections") or "").strip()
        data["corrections_list"] = None
        if data.get("type") == RightsRequestType.RECTIFICATION:
            try:
                data["corrections_list"] = corrections_parse(text)
            except forms.ValidationError as exc:
                self.add_error("corrections", exc)
        return data


class RightsRejectForm(forms.Form):
    refusal_ground = forms.ChoiceField(
        label="Ground (Art. 12(5))", choices=[("", "Choose the ground…"), *RightsRefusalGround.choices],
        widget=_select([("", "Choose the ground…"), *RightsRefusalGround.choices]),
    )
    justification = _text_area("Justification", "Goes into the Art. 12(4) notice; the controller bears the burden "
                                                 "of showing the request is manifestly unfounded or excessive.", rows=4)


class ConfirmForm(forms.Form):
    confirm = forms.BooleanField(label="I have checked what this request asks", required=True,
                                 error_messages={"required": "Tick the box to confirm."})


class LiftForm(forms.Form):
    informed_at = _moment_field("Person informed at", "Art. 18(3): the person is told before the restriction is lifted.")
    reason = _text_area("Why the restriction is lifted", "E.g. the accuracy was verified (Art. 18(1)(a)).")


class NotifiedForm(forms.Form):
    recipient = forms.ChoiceField(label="Recipient told")
    method = forms.CharField(label="How", max_length=300, help_text="E.g. e-mail to the processor's privacy contact.",
                             widget=UnfoldAdminTextInputWidget(attrs=INPUT))
    notified_at = _moment_field("When", "Empty: now.", required=False)

    def __init__(self, *args: Any, recipients: list[str], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.fields["recipient"].choices = [(r, r) for r in recipients]
        self.fields["recipient"].widget = _select(self.fields["recipient"].choices)


# --- Views ------------------------------------------------------------------------------


def rights_request_or_404(object_id: Any) -> RightsRequest:
    found = selectors.rights_request_queryset().filter(pk=object_id).first() if str(object_id).isdigit() else None
    if found is None:
        raise Http404("No such request.")
    return found


def change_url(rights_request: RightsRequest) -> str:
    return reverse("admin:rights_rightsrequest_change", args=[rights_request.pk])


def _asked(obj: RightsRequest) -> list[tuple[str, str]]:
    """What the request asks, in words, for the confirmation pages."""
    rows = [("Right", obj.get_type_display()), ("Received", display.moment(obj.received_at))]
    if obj.purpose_id:
        rows.append(("Purpose objected to", f"{obj.purpose.name} ({obj.purpose.code})"))
    if obj.restriction_ground:
        rows.append(("Restriction ground", RestrictionGround(obj.restriction_ground).label))
    if obj.corrections:
        fix = obj.corrections
        rows.append(("Corrections", f"dataset {fix.get('dataset')}: " + "; ".join(
            f"record {c.get('record')}: " + ", ".join(f"{k} → {v}" for k, v in (c.get("values") or {}).items())
            for c in fix.get("corrections") or [])))
    if obj.justification:
        rows.append(("Reason or grounds", obj.justification))
    return rows


def _form_page(model_admin: Any, request: HttpRequest, obj: RightsRequest, form: forms.Form, *, step: str, title: str,
               intro: str, button: str, danger: bool = False) -> HttpResponse:
    return _page(model_admin, request, "admin/rights/rightsrequest/confirm.html", title,
                 status=400 if request.method == "POST" else 200, original=obj, form=form, step=step, intro=intro,
                 button=button, danger=danger, asked=_asked(obj), deadline=deadline_state(obj),
                 back_url=change_url(obj))


def _step(model_admin: Any, request: HttpRequest, object_id: Any, form_class: type[forms.Form], call,
          success: str, *, fields: dict[str, str] | None = None, form_kwargs: dict | None = None, **page: Any):
    """One workflow step: the form, the service call on a valid post, the refusal on its field."""
    require_dpo(request)
    obj = rights_request_or_404(object_id)
    form = form_class(request.POST or None, **(form_kwargs(obj) if form_kwargs else {}))
    if request.method == "POST" and form.is_valid():
        try:
            call(obj, form.cleaned_data, request.user)
        except ServiceError as exc:
            service_error_to_form(form, exc, fields=fields)
        else:
            messages.success(request, success.format(pk=obj.pk))
            model_admin.log_change(request, obj, success.format(pk=obj.pk))
            return HttpResponseRedirect(change_url(obj))
    return _form_page(model_admin, request, obj, form, **page)


def log_view(model_admin: Any, request: HttpRequest) -> HttpResponse:
    require_dpo(request)
    form = LogRightsRequestForm(request.POST or None)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            data = form.cleaned_data
            try:
                created = services.rights_request_receive(
                    type=data["type"], identifier=data["identifier"], channel=data["channel"],
                    received_at=data["received_at"], regime=data["regime"], notes=data["notes"],
                    purpose=data["purpose"].code if data["purpose"] else None,
                    restriction_ground=data["restriction_ground"] or None, justification=data["justification"],
                    dataset=data["dataset"], corrections=data["corrections_list"], actor=request.user,
                )
            except ServiceError as exc:
                service_error_to_form(form, exc, fields={"subject": "identifier", "grounds": "justification"})
            else:
                return request_logged(model_admin, request, created, change_url(created))
        status = 400
        identifier_forget(form)
    return _page(model_admin, request, "admin/rights/rightsrequest/log_request.html", "Log a data-subject request",
                 status=status, form=form)


def verify_view(model_admin: Any, request: HttpRequest, object_id: Any) -> HttpResponse:
    return _step(model_admin, request, object_id, VerifyForm,
                 lambda obj, d, user: services.rights_request_verify(rights_request=obj, method=d["method_text"],
                                                                     actor=user),
                 "Request {pk}: identity verified.", fields={"method": "other"}, step="verify",
                 title="Verify the identity", button="Record the verification",
                 intro="Record how the requester's identity was checked (Art. 12(6)). Execution is possible only "
                       "after this.")


def extend_view(model_admin: Any, request: HttpRequest, object_id: Any) -> HttpResponse:
    return _step(model_admin, request, object_id, ExtendForm,
                 lambda obj, d, user: services.rights_request_extend(
                     rights_request=obj, reasons=d["reasons"], subject_informed_at=d["subject_informed_at"],
                     actor=user),
                 "Request {pk}: deadline extended.", step="extend", title="Extend the deadline",
                 button="Extend the deadline",
                 intro="Art. 12(3) allows one extension by two further months, decided within the first period, "
                       "with the person told why.")


def reject_view(model_admin: Any, request: HttpRequest, object_id: Any) -> HttpResponse:
    return _step(model_admin, request, object_id, RightsRejectForm,
                 lambda obj, d, user: services.rights_request_reject(
                     rights_request=obj, refusal_ground=d["refusal_ground"], justification=d["justification"],
                     actor=user),
                 "Request {pk} refused; the Art. 12(4) notice is ready to download.", step="reject",
                 title="Refuse the request", button="Refuse and write the notice", danger=True,
                 intro="The person receives a notice with the ground, your justification and their rights to "
                       "complain to a supervisory authority and to a judicial remedy.")


EXECUTE_INTRO = {
    RightsRequestType.ACCESS: "The answer (JSON and PDF: every item of Art. 15(1) and (2) and a copy of the data) "
                              "is built in the background; this page shows its progress.",
    RightsRequestType.PORTABILITY: "The export (JSON and CSV) of the data the person provided under consent or "
                                   "contract is built in the background (Art. 20).",
    RightsRequestType.RECTIFICATION: "New versions of the records are written; snapshots taken from now use them, "
                                     "models trained on the old values become stale, and the recipients to tell "
                                     "(Art. 19) are listed.",
    RightsRequestType.RESTRICTION: "From now the person is left out of new snapshots and of training; nothing is "
                                   "deleted. The recipients to tell (Art. 19) are listed.",
    RightsRequestType.OBJECTION: "From now the person is left out of the purpose objected to (Art. 21); live "
                                 "models trained for it on the person are remediated as for a withdrawal.",
}


def execute_view(model_admin: Any, request: HttpRequest, object_id: Any) -> HttpResponse:
    obj = rights_request_or_404(object_id)
    return _step(model_admin, request, object_id, ConfirmForm,
                 lambda o, d, user: services.rights_request_execute(rights_request=o, actor=user),
                 "Request {pk}: executed.", step="execute", title="Execute the request", button="Execute",
                 intro=EXECUTE_INTRO[obj.type])


def lift_view(model_admin: Any, request: HttpRequest, object_id: Any) -> HttpResponse:
    return _step(model_admin, request, object_id, LiftForm,
                 lambda obj, d, user: services.rights_request_restriction_lift(
                     rights_request=obj, informed_at=d["informed_at"], reason=d["reason"], actor=user),
                 "Request {pk}: restriction lifted.", step="lift", title="Lift the restriction",
                 button="Lift the restriction",
                 intro="The person's data enter new snapshots and training again from the lifting; who, why and "
                       "when are recorded.")


def notified_view(model_admin: Any, request: HttpRequest, object_id: Any) -> HttpResponse:
    return _step(model_admin, request, object_id, NotifiedForm,
                 lambda obj, d, user: services.rights_request_recipient_notified(
                     rights_request=obj, recipient=d["recipient"], method=d["method"], notified_at=d["notified_at"],
                     actor=user),
                 "Request {pk}: recipient recorded as told (Art. 19).",
                 form_kwargs=lambda obj: {"recipients": list(
                     obj.recipient_notifications.filter(notified_at__isnull=True).values_list("recipient", flat=True))},
                 step="notified", title="Record an Art. 19 notification", button="Record",
                 intro="Record when and how a recipient of the person's data was told of the rectification or "
                       "restriction. The ledger sends no message itself.")


def erasure_notified_view(model_admin: Any, request: HttpRequest, object_id: Any) -> HttpResponse:
    """The same record for a completed erasure, on the erasure request's page."""
    from rights.admin_views import change_url as erasure_change_url
    from rights.admin_views import request_or_404

    require_dpo(request)
    obj = request_or_404(object_id)
    pending = list(obj.recipient_notifications.filter(notified_at__isnull=True).values_list("recipient", flat=True))
    form = NotifiedForm(request.POST or None, recipients=pending)
    if request.method == "POST" and form.is_valid():
        try:
            services.erasure_request_recipient_notified(
                erasure_request=obj, recipient=form.cleaned_data["recipient"], method=form.cleaned_data["method"],
                notified_at=form.cleaned_data["notified_at"], actor=request.user)
        except ServiceError as exc:
            service_error_to_form(form, exc)
        else:
            text = f"Request {obj.pk}: recipient recorded as told (Art. 19)."
            messages.success(request, text)
            model_admin.log_change(request, obj, text)
            return HttpResponseRedirect(erasure_change_url(obj))
    return _page(model_admin, request, "admin/rights/rightsrequest/confirm.html", "Record an Art. 19 notification",
                 status=400 if request.method == "POST" else 200, original=obj, form=form, step="notified",
                 intro="Record when and how a recipient of the person's data was told of the erasure. The ledger "
                       "sends no message itself.", button="Record",
                 asked=[("Right", "Erasure (Art. 17)"), ("Completed", display.moment(obj.completed_at))],
                 deadline=deadline_state(obj), back_url=erasure_change_url(obj))


def recipient_rows(obj: Any) -> list[list[str]]:
    """The Art. 19 table of a request's page: recipient, third country, told when and how."""
    return [
        [n.recipient, n.third_country or "—",
         f"{display.moment(n.notified_at)} — {n.method}" if n.notified_at else "to be told"]
        for n in obj.recipient_notifications.all()
    ]


def answer_view(model_admin: Any, request: HttpRequest, object_id: Any, fmt: str) -> HttpResponse:
    """The answer file (access, portability) or refusal notice, for the DPO to hand over."""
    obj = rights_request_or_404(object_id)
    if not model_admin.has_view_permission(request, obj):
        raise PermissionDenied
    require_dpo(request)  # the answer holds the person's data: the DPO hands it over, not the auditor
    path = answer_files(obj).get(fmt)
    if selectors.rights_answer_expired(rights_request=obj) or path is None or not path.is_file():
        messages.warning(request, f"Request {obj.pk}: no {fmt} answer file to download (not built, or its download "
                                  "period ended and it was deleted; the SHA-256 stays on the request).")
        return HttpResponseRedirect(change_url(obj))
    types = {"json": "application/json", "pdf": "application/pdf", "csv": "application/zip"}
    return FileResponse(path.open("rb"), content_type=types[fmt], as_attachment=True,
                        filename=f"{obj.type}-request-{obj.pk}-{path.name}")


def next_steps(obj: RightsRequest) -> set[str]:
    """The workflow steps that can come next for ``obj``."""
    steps: set[str] = set()
    if obj.status == ErasureStatus.RECEIVED:
        steps |= {"verify_step", "extend_step", "reject_step"}
    elif obj.status == ErasureStatus.VERIFIED:
        steps |= {"execute_step", "extend_step", "reject_step"}
    elif obj.status == ErasureStatus.IN_PROGRESS:
        steps |= {"extend_step"}
    if obj.extended_due_at is not None:
        steps.discard("extend_step")
    if obj.status == ErasureStatus.COMPLETED and obj.type == RightsRequestType.RESTRICTION and obj.limit_id:
        from governance.models import ProcessingRestriction

        if ProcessingRestriction.objects.filter(pk=obj.limit_id, lifting__isnull=True).exists():
            steps.add("lift_step")
    if obj.recipient_notifications.filter(notified_at__isnull=True).exists():
        steps.add("notified_step")
    return steps


def details_context(obj: RightsRequest) -> dict[str, Any]:
    """The request page's cards: progress of an answer, the files, the Art. 19 recipients."""
    files = [] if selectors.rights_answer_expired(rights_request=obj) else [
        (fmt.upper(), reverse("admin:rights_rightsrequest_answer", args=[obj.pk, fmt]))
        for fmt, path in answer_files(obj).items() if path.is_file()
    ]
    progress = obj.progress if obj.status == ErasureStatus.IN_PROGRESS and obj.progress else None
    return {
        "answer_links": files,
        "answer_until": display.moment(obj.answer_expires_at) if obj.answer_expires_at else "",
        "progress": progress,
        "progress_percent": round(100 * progress["done"] / max(1, progress["total"])) if progress else 0,
        "recipients": recipient_rows(obj),
    }
