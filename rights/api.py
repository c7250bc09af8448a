"""REST API of the rights: /api/v1/erasure-requests/, /api/v1/requests/ (every right) and
the immediate access and portability answers under /api/v1/subjects/.

Creating, verifying, executing, extending, rejecting and overriding a remediation are
for the DPO; the DPO and the auditor read. No response carries an identifier or a
pseudonym: a person appears only as ``subject_ref``.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import django_filters
from django.conf import settings
from django.http import FileResponse, HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    PolymorphicProxySerializer,
    extend_schema,
    extend_schema_view,
)
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.response import Response
from rest_framework.views import APIView

from governance.api.parsers import request_body_object
from governance.filtersets import ApiFilterSet, StrictBooleanFilter
from governance.models import RestrictionGround
from governance.permissions import DPO_AND_AUDITOR, DPO_ONLY
from governance.services import ServiceError
from rights import selectors, services
from rights.models import (
    ErasureChannel,
    ErasureGround,
    ErasureRegime,
    ErasureRemediationOverride,
    ErasureRequest,
    ErasureStatus,
    ErasureStep,
    RecipientNotification,
    RefusalGround,
    RemediationAction,
    RightsRefusalGround,
    RightsRequest,
    RightsRequestType,
)
from rights.portability import portability_zip
from rights.reports import access_answer_pdf_write
from rights.services.answers import answer_files

# --- Serializers ---------------------------------------------------------------------


class ErasureStepSerializer(serializers.ModelSerializer):
    class Meta:
        model = ErasureStep
        fields = ["name", "status", "attempts", "started_at", "finished_at", "details", "error"]


class RecipientNotificationSerializer(serializers.ModelSerializer):
    class Meta:
        model = RecipientNotification
        fields = ["recipient", "third_country", "processing_activity_id", "notified_at", "method"]


class RemediationOverrideSerializer(serializers.ModelSerializer):
    model_version = serializers.IntegerField(source="model_version_id")
    decided_by = serializers.StringRelatedField()

    class Meta:
        model = ErasureRemediationOverride
        fields = ["model_version", "action", "justification", "decided_by", "decided_at"]


class ErasureRequestSerializer(serializers.ModelSerializer):
    verified_by = serializers.StringRelatedField(allow_null=True)
    effective_due_at = serializers.DateField(read_only=True)
    days_left = serializers.SerializerMethodField()
    overdue = serializers.SerializerMethodField()
    data_held = serializers.BooleanField(source="data_held_at_receipt", read_only=True)
    steps = ErasureStepSerializer(many=True, read_only=True)
    recipient_notifications = RecipientNotificationSerializer(many=True, read_only=True)
    remediation_overrides = RemediationOverrideSerializer(many=True, read_only=True)
    certificate_available = serializers.SerializerMethodField()

    class Meta:
        model = ErasureRequest
        fields = [
            "id", "subject_ref", "data_held", "channel", "received_at", "regime", "ground", "purpose", "status",
            "due_at", "extended_due_at", "effective_due_at", "days_left", "overdue", "extension_reasons",
            "extended_at", "subject_informed_of_extension_at", "verified_at", "verified_by", "verification_method",
            "refusal_ground", "refusal_justification", "refusal_notice", "rejected_at", "execution_started_at",
            "completed_at", "outcome", "certificate_available", "certificate_sha256", "remediation_overrides",
            "steps", "recipient_notifications", "created_at",
        ]

    def get_days_left(self, obj: ErasureRequest) -> int | None:
        return selectors.erasure_request_days_left(erasure_request=obj)

    def get_overdue(self, obj: ErasureRequest) -> bool:
        return selectors.erasure_request_is_overdue(erasure_request=obj)

    def get_certificate_available(self, obj: ErasureRequest) -> bool:
        return bool(obj.certificate_path)


class ErasureRequestCreateSerializer(serializers.Serializer):
    subject = serializers.CharField(help_text="The person's external identifier (e-mail, customer number); pseudonymised on arrival, never stored.")
    ground = serializers.ChoiceField(choices=ErasureGround.choices)
    received_at = serializers.DateTimeField(required=False, help_text="Defaults to now.")
    channel = serializers.ChoiceField(choices=ErasureChannel.choices, required=False, default=ErasureChannel.API)
    regime = serializers.ChoiceField(choices=ErasureRegime.choices, required=False, default=ErasureRegime.EU)


class VerifySerializer(serializers.Serializer):
    method = serializers.CharField(required=False, allow_blank=True, help_text="How the identity was verified.")


class ExtendSerializer(serializers.Serializer):
    reasons = serializers.CharField()
    subject_informed_at = serializers.DateTimeField()


class RejectSerializer(serializers.Serializer):
    refusal_ground = serializers.ChoiceField(choices=RefusalGround.choices)
    justification = serializers.CharField()


class OverrideSerializer(serializers.Serializer):
    model_version = serializers.IntegerField()
    action = serializers.ChoiceField(choices=RemediationAction.choices)
    justification = serializers.CharField()


class ImpactSerializer(serializers.Serializer):
    data_held = serializers.BooleanField()
    executed = serializers.BooleanField()
    datasets = serializers.ListField(child=serializers.DictField())
    snapshots = serializers.ListField(child=serializers.DictField())
    training_runs = serializers.ListField(child=serializers.DictField())
    model_versions = serializers.ListField(child=serializers.DictField())
    consent_events = serializers.IntegerField()
    totals = serializers.DictField(child=serializers.IntegerField())


# --- Filters and views ----------------------------------------------------------------


class ErasureRequestFilterSet(ApiFilterSet):
    status = django_filters.ChoiceFilter(choices=ErasureStatus.choices)
    overdue = StrictBooleanFilter(method="filter_overdue", help_text="Open and past the (extended) deadline.")
    regime = django_filters.ChoiceFilter(choices=ErasureRegime.choices)
    ground = django_filters.ChoiceFilter(choices=ErasureGround.choices)

    class Meta:
        model = ErasureRequest
        fields = ["status", "regime", "ground"]

    def filter_overdue(self, queryset, name, value):
        overdue = selectors.erasure_requests_overdue_q()
        return queryset.filter(overdue) if value else queryset.exclude(overdue)


class NotifiedSerializer(serializers.Serializer):
    recipient = serializers.CharField(help_text="One of the request's recipient_notifications.")
    method = serializers.CharField(help_text="How the recipient was told.")
    notified_at = serializers.DateTimeField(required=False, help_text="When; empty: now.")


@extend_schema_view(
    list=extend_schema(summary="Erasure requests, by deadline (filter: status, overdue)"),
    retrieve=extend_schema(summary="One erasure request with its step log and notifications"),
)
class ErasureRequestViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Requests for erasure (GDPR Art. 17) and their workflow."""

    serializer_class = ErasureRequestSerializer
    filterset_class = ErasureRequestFilterSet
    ordering_fields = ["effective_due", "received_at", "id"]
    role_permissions = {"read": DPO_AND_AUDITOR, "write": DPO_ONLY, "default": DPO_ONLY}

    def get_queryset(self):
        return selectors.erasure_request_queryset().order_by("effective_due", "id").prefetch_related(
            "steps", "recipient_notifications", "remediation_overrides__decided_by"
        ).select_related("verified_by")

    def _respond(self, request_obj: ErasureRequest, code: int = status.HTTP_200_OK) -> Response:
        fresh = self.get_queryset().get(pk=request_obj.pk)
        return Response(ErasureRequestSerializer(fresh).data, status=code)

    @extend_schema(
        request=ErasureRequestCreateSerializer,
        responses={201: ErasureRequestSerializer, 400: OpenApiResponse(description="A field is missing or invalid."),
                   409: OpenApiResponse(description="A request for this person is already open.")},
        examples=[OpenApiExample("Request by e-mail", value={
            "subject": "alice@example.org", "ground": "17_1_b", "received_at": "2025-09-03T10:00:00Z",
            "channel": "email", "regime": "eu"}, request_only=True)],
        summary="Record a request for erasure (an unknown person is answered: no data held)",
    )
    def create(self, request):
        data = request_body_object(request)
        obj = services.erasure_request_receive(
            identifier=data.get("subject"), ground=data.get("ground"), channel=data.get("channel"),
            received_at=data.get("received_at"), regime=data.get("regime"), actor=request.user,
        )
        return self._respond(obj, status.HTTP_201_CREATED)

    @extend_schema(request=VerifySerializer, responses=ErasureRequestSerializer, summary="Record identity verification")
    @action(detail=True, methods=["post"])
    def verify(self, request, pk=None):
        obj = self.get_object()
        method = request_body_object(request).get("method") or ""
        return self._respond(services.erasure_request_verify(erasure_request=obj, method=method, actor=request.user))

    @extend_schema(responses=ImpactSerializer, summary="What the erasure touches and the remediation per model")
    @action(detail=True, methods=["get"])
    def impact(self, request, pk=None):
        obj = self.get_object()
        return Response(selectors.erasure_request_impact(erasure_request=obj))

    @extend_schema(request=None, responses={202: ErasureRequestSerializer, 409: OpenApiResponse(description="Not verified, or finished.")},
                   summary="Execute the erasure (Celery task; resumes if already in progress)")
    @action(detail=True, methods=["post"])
    def execute(self, request, pk=None):
        obj = self.get_object()
        started = services.erasure_request_execute_start(erasure_request=obj, actor=request.user)
        return self._respond(started, status.HTTP_202_ACCEPTED)

    @extend_schema(
        request=ExtendSerializer, responses=ErasureRequestSerializer,
        examples=[OpenApiExample("Extend", value={
            "reasons": "Data held in 14 models across 3 systems; retraining is scheduled.",
            "subject_informed_at": "2025-09-20T09:00:00Z"}, request_only=True)],
        summary="Extend the deadline once by two months (Art. 12(3))",
    )
    @action(detail=True, methods=["post"])
    def extend(self, request, pk=None):
        obj = self.get_object()
        data = request_body_object(request)
        return self._respond(services.erasure_request_extend(
            erasure_request=obj, reasons=data.get("reasons"), subject_informed_at=data.get("subject_informed_at"),
            actor=request.user,
        ))

    @extend_schema(
        request=RejectSerializer, responses=ErasureRequestSerializer,
        examples=[OpenApiExample("Legal claims", value={
            "refusal_ground": "17_3_e", "justification": "The records are evidence in pending litigation (case 2025/118)."},
            request_only=True)],
        summary="Refuse under an Art. 17(3) exemption (carries the Art. 12(4) notice)",
    )
    @action(detail=True, methods=["post"])
    def reject(self, request, pk=None):
        obj = self.get_object()
        data = request_body_object(request)
        return self._respond(services.erasure_request_reject(
            erasure_request=obj, refusal_ground=data.get("refusal_ground"), justification=data.get("justification"),
            actor=request.user,
        ))

    @extend_schema(request=NotifiedSerializer, responses=ErasureRequestSerializer,
                   summary="Record that a recipient was told of the erasure (Art. 19)")
    @action(detail=True, methods=["post"])
    def notified(self, request, pk=None):
        obj, data = self.get_object(), request_body_object(request)
        services.erasure_request_recipient_notified(
            erasure_request=obj, recipient=data.get("recipient"), notified_at=data.get("notified_at"),
            method=data.get("method") or "", actor=request.user)
        return self._respond(obj)

    @extend_schema(
        request=OverrideSerializer, responses={201: RemediationOverrideSerializer},
        examples=[OpenApiExample("Rely on DP", value={
            "model_version": 12, "action": "rely_on_dp",
            "justification": "ε=1.0 at δ=1e-6; MIA audit AUC 0.51; retraining costs 3 GPU-days."}, request_only=True)],
        summary="Override the remediation the policy proposes for one model",
    )
    @action(detail=True, methods=["post"], url_path="remediation-overrides")
    def remediation_overrides(self, request, pk=None):
        obj = self.get_object()
        data = request_body_object(request)
        override = services.erasure_request_override_remediation(
            erasure_request=obj, model_version_id=data.get("model_version"), action=data.get("action"),
            justification=data.get("justification"), actor=request.user,
        )
        return Response(RemediationOverrideSerializer(override).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        responses={(200, "application/pdf"): OpenApiTypes.BINARY},
        summary="The written answer (PDF): the erasure certificate, or the Art. 12(4) notice of refusal",
        description="A completed request's certificate of erasure; for a rejected request, the notice of refusal "
                    "with the Art. 17(3) exemption, the reasons and the rights to complain and to a judicial remedy.",
    )
    @action(detail=True, methods=["get"])
    def certificate(self, request, pk=None):
        obj = self.get_object()
        if not obj.certificate_path:
            raise NotFound(
                "No answer document yet: the certificate is produced when the execution completes, "
                "the notice of refusal when the request is rejected."
            )
        path = Path(settings.REPORT_ROOT) / obj.certificate_path
        if not path.exists():
            raise NotFound("The certificate file is missing from the report storage.")
        return FileResponse(
            open(path, "rb"), content_type="application/pdf", as_attachment=True,  # noqa: SIM115 (FileResponse closes it)
            filename=Path(obj.certificate_path).name,
        )


# --- The rights of access (Art. 15) and portability (Art. 20) ---------------------------
# POST, so the identifier stays out of URLs and access logs; it is pseudonymised on arrival
# and never stored. The format is a body field: DRF reserves the ``?format=`` query
# parameter for choosing a renderer.


class SubjectAccessRequestSerializer(serializers.Serializer):
    subject = serializers.CharField(help_text="The person's external identifier (e-mail, customer number); pseudonymised on arrival, never stored.")
    format = serializers.ChoiceField(choices=["json", "pdf"], required=False, default="json",
                                     help_text="json: the machine-readable answer; pdf: the answer for the person.")


class SubjectPortabilityRequestSerializer(serializers.Serializer):
    subject = serializers.CharField(help_text="The person's external identifier; pseudonymised on arrival, never stored.")
    format = serializers.ChoiceField(choices=["json", "csv"], required=False, default="json",
                                     help_text="json: one JSON document; csv: a ZIP of one CSV per dataset and export.json.")


def _attachment(content: bytes, *, content_type: str, filename: str) -> HttpResponse:
    response = HttpResponse(content, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["X-Content-SHA256"] = hashlib.sha256(content).hexdigest()
    return response


class SubjectAccessView(APIView):
    """The answer to a right-of-access request (GDPR Art. 15) for one person.

    For the DPO only: the answer holds the person's own data (Art. 15(3)).
    """

    role_permissions = {"default": DPO_ONLY}

    @extend_schema(
        request=SubjectAccessRequestSerializer,
        responses={(200, "application/json"): OpenApiTypes.OBJECT, (200, "application/pdf"): OpenApiTypes.BINARY},
        examples=[OpenApiExample("Access answer as JSON", value={"subject": "alice@example.org"}, request_only=True),
                  OpenApiExample("Access answer as PDF", value={"subject": "alice@example.org", "format": "pdf"},
                                 request_only=True)],
        summary="Answer a right-of-access request (Art. 15): JSON, or the PDF for the person",
        description="Every item of Art. 15(1)(a)–(h) and 15(2) and the copy of the data (15(3)); see docs/rights.md. "
                    "An unknown person is answered: no data held (data_held false). Each answer is audited.",
    )
    def post(self, request):
        data = request_body_object(request)
        answer = services.subject_access_answer(identifier=data.get("subject"), format=data.get("format"),
                                                actor=request.user)
        if (data.get("format") or "json") != "pdf":
            return Response(answer)
        # Written to a private temporary directory and deleted once read: the answer holds the
        # person's data, and a copy left in the report storage would outlive its purpose.
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "access-answer.pdf"
            access_answer_pdf_write(answer=answer, path=path)
            content = path.read_bytes()
        reference = answer.get("subject_ref") or "no-data-held"
        return _attachment(content, content_type="application/pdf", filename=f"access-answer-{reference}.pdf")


class SubjectPortabilityView(APIView):
    """The data a person provided, processed on consent or contract (GDPR Art. 20)."""

    role_permissions = {"default": DPO_ONLY}

    @extend_schema(
        request=SubjectPortabilityRequestSerializer,
        responses={(200, "application/json"): OpenApiTypes.OBJECT, (200, "application/zip"): OpenApiTypes.BINARY,
                   409: OpenApiResponse(description="Art. 20(1): the person has no record processed on consent or "
                                                    "contract; the body names the bases found.")},
        examples=[OpenApiExample("Export as CSV", value={"subject": "alice@example.org", "format": "csv"},
                                 request_only=True)],
        summary="Export a person's data for portability (Art. 20): JSON, or a ZIP of CSV files",
        description="Only records in datasets whose processing activity rests on consent (Art. 6(1)(a)) or a "
                    "contract (6(1)(b)); refused with 409 naming Art. 20(1) otherwise. An unknown person is "
                    "answered: no data held (data_held false). Each export and refusal is audited.",
    )
    def post(self, request):
        data = request_body_object(request)
        export = services.subject_portability_export(identifier=data.get("subject"), format=data.get("format"),
                                                     actor=request.user)
        if (data.get("format") or "json") != "csv" or not export["data_held"]:
            return Response(export)
        return _attachment(portability_zip(export), content_type="application/zip",
                           filename=f"portability-{export['subject_ref']}.zip")


# --- Every other right: /api/v1/requests/ ----------------------------------------------
# One intake for every right (issue 18): type erasure is handed to the erasure intake and
# answered with its representation; the other types are RightsRequest rows. The auditor
# reads the requests' metadata, never an answer (it holds the person's data).


class RightsRequestSerializer(serializers.ModelSerializer):
    verified_by = serializers.StringRelatedField(allow_null=True)
    type_label = serializers.CharField(source="get_type_display", read_only=True)
    article = serializers.CharField(read_only=True)
    effective_due_at = serializers.DateField(read_only=True)
    days_left = serializers.SerializerMethodField()
    overdue = serializers.SerializerMethodField()
    data_held = serializers.BooleanField(source="data_held_at_receipt", read_only=True)
    purpose = serializers.SlugRelatedField(slug_field="code", read_only=True, allow_null=True)
    answer_available = serializers.SerializerMethodField()
    answer_expired = serializers.SerializerMethodField()
    recipient_notifications = RecipientNotificationSerializer(many=True, read_only=True)

    class Meta:
        model = RightsRequest
        fields = [
            "id", "type", "type_label", "article", "subject_ref", "data_held", "channel", "received_at", "regime",
            "status", "due_at", "extended_due_at", "effective_due_at", "days_left", "overdue", "extension_reasons",
            "extended_at", "subject_informed_of_extension_at", "verified_at", "verified_by", "verification_method",
            "refusal_ground", "refusal_justification", "refusal_notice", "rejected_at", "purpose",
            "restriction_ground", "limit_id", "execution_started_at", "completed_at", "outcome", "answer_available",
            "answer_expired", "answer_sha256", "answer_expires_at", "progress", "recipient_notifications", "created_at",
        ]

    def get_days_left(self, obj: RightsRequest) -> int | None:
        return selectors.erasure_request_days_left(erasure_request=obj)

    def get_overdue(self, obj: RightsRequest) -> bool:
        return selectors.erasure_request_is_overdue(erasure_request=obj)

    def get_answer_available(self, obj: RightsRequest) -> bool:
        return bool(obj.answer_path) and not selectors.rights_answer_expired(rights_request=obj)

    def get_answer_expired(self, obj: RightsRequest) -> bool:
        return selectors.rights_answer_expired(rights_request=obj)


class RightsRequestCreateSerializer(serializers.Serializer):
    type = serializers.ChoiceField(choices=[*RightsRequestType.choices, ("erasure", "Erasure (Art. 17)")])
    subject = serializers.CharField(help_text="The person's external identifier; pseudonymised on arrival, never stored.")
    channel = serializers.ChoiceField(choices=ErasureChannel.choices, required=False, default=ErasureChannel.API)
    received_at = serializers.DateTimeField(required=False, help_text="Defaults to now.")
    regime = serializers.ChoiceField(choices=ErasureRegime.choices, required=False, default=ErasureRegime.EU)
    notes = serializers.CharField(required=False, allow_blank=True)
    ground = serializers.ChoiceField(choices=ErasureGround.choices, required=False, help_text="Erasure: Art. 17(1) ground.")
    purpose = serializers.CharField(required=False, help_text="Objection: the purpose code objected to.")
    grounds = serializers.CharField(required=False, help_text="Objection: the person's grounds (Art. 21(1)).")
    restriction_ground = serializers.ChoiceField(choices=RestrictionGround.choices, required=False)
    justification = serializers.CharField(required=False, help_text="Restriction or rectification: why.")
    dataset = serializers.IntegerField(required=False, help_text="Rectification: the dataset whose records are corrected.")
    corrections = serializers.ListField(child=serializers.DictField(), required=False,
                                        help_text='Rectification: [{"record": id, "values": {field: value}}].')


class ErasureReceivedSerializer(ErasureRequestSerializer):
    """An erasure request received at /requests/: its representation, with ``type``."""

    type = serializers.CharField(default="erasure", read_only=True)

    class Meta(ErasureRequestSerializer.Meta):
        fields = ["type", *ErasureRequestSerializer.Meta.fields]


class RightsRejectSerializer(serializers.Serializer):
    refusal_ground = serializers.ChoiceField(choices=RightsRefusalGround.choices)
    justification = serializers.CharField()


class LiftSerializer(serializers.Serializer):
    reason = serializers.CharField()
    informed_at = serializers.DateTimeField(help_text="When the person was told, before the lifting (Art. 18(3)).")


class RightsRequestFilterSet(ApiFilterSet):
    type = django_filters.ChoiceFilter(choices=RightsRequestType.choices)
    status = django_filters.ChoiceFilter(choices=ErasureStatus.choices)
    overdue = StrictBooleanFilter(method="filter_overdue", help_text="Open and past the (extended) deadline.")

    class Meta:
        model = RightsRequest
        fields = ["type", "status"]

    def filter_overdue(self, queryset, name, value):
        overdue = selectors.erasure_requests_overdue_q()
        return queryset.filter(overdue) if value else queryset.exclude(overdue)


class _AnyFormatNegotiation(DefaultContentNegotiation):
    """``?format=`` of the answer route chooses the file, not a renderer."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


@extend_schema_view(
    list=extend_schema(summary="Requests under Art. 15, 16, 18, 20, 21, by deadline (filter: type, status, overdue); "
                               "erasure requests are under /erasure-requests/"),
    retrieve=extend_schema(summary="One rights request"),
)
class RightsRequestViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Data-subject requests of every right; erasure is received here and kept under /erasure-requests/."""

    serializer_class = RightsRequestSerializer
    filterset_class = RightsRequestFilterSet
    ordering_fields = ["effective_due", "received_at", "id"]
    role_permissions = {"read": DPO_AND_AUDITOR, "write": DPO_ONLY, "answer": DPO_ONLY, "default": DPO_ONLY}

    def get_queryset(self):
        return selectors.rights_request_queryset().order_by("effective_due", "id").select_related(
            "verified_by", "purpose").prefetch_related("recipient_notifications")

    def get_content_negotiator(self):
        if getattr(self, "action", None) == "answer":
            return _AnyFormatNegotiation()
        return super().get_content_negotiator()

    def _respond(self, obj: RightsRequest, code: int = status.HTTP_200_OK) -> Response:
        return Response(RightsRequestSerializer(self.get_queryset().get(pk=obj.pk)).data, status=code)

    @extend_schema(
        request=RightsRequestCreateSerializer,
        responses={201: PolymorphicProxySerializer(
            component_name="ReceivedRequest", resource_type_field_name=None,
            serializers=[RightsRequestSerializer, ErasureReceivedSerializer]),
            400: OpenApiResponse(description="A field is missing or invalid."),
            409: OpenApiResponse(description="Already restricted, objecting, or a request of the type open.")},
        examples=[OpenApiExample("Access by e-mail", value={
            "type": "access", "subject": "alice@example.org", "channel": "email"}, request_only=True),
            OpenApiExample("Objection", value={
                "type": "objection", "subject": "alice@example.org", "purpose": "analytics.product",
                "grounds": "I do not want my usage profiled."}, request_only=True)],
        summary="Receive a request of any right (an unknown person is answered: no data held)",
    )
    def create(self, request):
        data = request_body_object(request)
        if data.get("type") == "erasure":
            obj = services.erasure_request_receive(
                identifier=data.get("subject"), ground=data.get("ground"), channel=data.get("channel"),
                received_at=data.get("received_at"), regime=data.get("regime"), notes=data.get("notes"),
                actor=request.user,
            )
            fresh = selectors.erasure_request_queryset().get(pk=obj.pk)
            return Response(ErasureReceivedSerializer(fresh).data, status=status.HTTP_201_CREATED)
        text = data.get("grounds") if data.get("type") == RightsRequestType.OBJECTION else data.get("justification")
        obj = services.rights_request_receive(
            type=data.get("type"), identifier=data.get("subject"), channel=data.get("channel"),
            received_at=data.get("received_at"), regime=data.get("regime"), notes=data.get("notes"),
            purpose=data.get("purpose"), restriction_ground=data.get("restriction_ground"), justification=text,
            dataset=data.get("dataset"), corrections=data.get("corrections"), actor=request.user,
        )
        return self._respond(obj, status.HTTP_201_CREATED)

    @extend_schema(request=VerifySerializer, responses=RightsRequestSerializer, summary="Record identity verification")
    @action(detail=True, methods=["post"])
    def verify(self, request, pk=None):
        obj = self.get_object()
        return self._respond(services.rights_request_verify(
            rights_request=obj, method=request_body_object(request).get("method") or "", actor=request.user))

    @extend_schema(request=ExtendSerializer, responses=RightsRequestSerializer,
                   summary="Extend the deadline once by two months (Art. 12(3))")
    @action(detail=True, methods=["post"])
    def extend(self, request, pk=None):
        obj, data = self.get_object(), request_body_object(request)
        return self._respond(services.rights_request_extend(
            rights_request=obj, reasons=data.get("reasons"), subject_informed_at=data.get("subject_informed_at"),
            actor=request.user))

    @extend_schema(request=RightsRejectSerializer, responses=RightsRequestSerializer,
                   summary="Refuse a manifestly unfounded or excessive request (Art. 12(5); carries the notice)")
    @action(detail=True, methods=["post"])
    def reject(self, request, pk=None):
        obj, data = self.get_object(), request_body_object(request)
        return self._respond(services.rights_request_reject(
            rights_request=obj, refusal_ground=data.get("refusal_ground"), justification=data.get("justification"),
            actor=request.user))

    @extend_schema(request=None, responses={202: RightsRequestSerializer,
                                            409: OpenApiResponse(description="Not verified, or finished.")},
                   summary="Execute: build the answer (task) or record the limit")
    @action(detail=True, methods=["post"])
    def execute(self, request, pk=None):
        obj = self.get_object()
        return self._respond(services.rights_request_execute(rights_request=obj, actor=request.user),
                             status.HTTP_202_ACCEPTED)

    @extend_schema(request=LiftSerializer, responses=RightsRequestSerializer,
                   summary="Lift the restriction this request recorded (Art. 18(3))")
    @action(detail=True, methods=["post"])
    def lift(self, request, pk=None):
        obj, data = self.get_object(), request_body_object(request)
        return self._respond(services.rights_request_restriction_lift(
            rights_request=obj, informed_at=data.get("informed_at"), reason=data.get("reason"), actor=request.user))

    @extend_schema(request=NotifiedSerializer, responses=RightsRequestSerializer,
                   summary="Record that a recipient was told of the rectification or restriction (Art. 19)")
    @action(detail=True, methods=["post"])
    def notified(self, request, pk=None):
        obj, data = self.get_object(), request_body_object(request)
        services.rights_request_recipient_notified(
            rights_request=obj, recipient=data.get("recipient"), notified_at=data.get("notified_at"),
            method=data.get("method") or "", actor=request.user)
        return self._respond(obj)

    @extend_schema(
        parameters=[OpenApiParameter("format", str, enum=["json", "pdf", "csv"],
                                     description="json (default); pdf for access; csv (a ZIP) for portability.")],
        responses={(200, "application/octet-stream"): OpenApiTypes.BINARY,
                   410: OpenApiResponse(description="The download period (RIGHTS_ANSWER_DOWNLOAD_DAYS) has ended.")},
        summary="Download the answer of an access or portability request",
    )
    @action(detail=True, methods=["get"])
    def answer(self, request, pk=None):
        obj = self.get_object()
        if selectors.rights_answer_expired(rights_request=obj):
            return Response({"detail": "The download period of this answer has ended; its files are deleted."},
                            status=status.HTTP_410_GONE)
        files = answer_files(obj)
        if not files:
            raise NotFound("No answer yet: it is built when the request is executed.")
        fmt = request.query_params.get("format") or "json"
        if fmt not in files:
            raise ServiceError(f"{fmt!r} is not offered for this answer; choose one of: {', '.join(files)}.",
                               field="format")
        path = files[fmt]
        if not path.exists():
            raise NotFound("The answer file is missing from the report storage.")
        types = {"json": "application/json", "pdf": "application/pdf", "csv": "application/zip"}
        return FileResponse(open(path, "rb"), content_type=types[fmt], as_attachment=True,  # noqa: SIM115
                            filename=f"{obj.type}-{obj.subject_ref}-{path.name}")
