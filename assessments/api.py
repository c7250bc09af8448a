"""REST API for DPIAs (/api/v1/dpias/): the DPO writes and signs them, the auditor reads them."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.response import Response

from assessments import selectors, services
from assessments.filtersets import DpiaFilterSet
from assessments.models import (
    Dpia,
    DpiaRisk,
    DpiaScreeningAnswer,
    Likelihood,
    Severity,
    Wp248Criterion,
)
from governance.api.reports import pdf_response
from governance.models import ProcessingActivity, ReportStatus
from governance.permissions import DPO_AND_AUDITOR, DPO_ONLY

# --- Serializers ---------------------------------------------------------------------


class ScreeningAnswerSerializer(serializers.ModelSerializer):
    answer = serializers.BooleanField(read_only=True)

    class Meta:
        model = DpiaScreeningAnswer
        fields = ["criterion", "proposed", "source", "confirmed", "override_reason", "answer", "confirmed_at"]


class DpiaRiskSerializer(serializers.ModelSerializer):
    class Meta:
        model = DpiaRisk
        fields = [
            "id", "description", "likelihood", "severity", "inherent_level", "mitigations",
            "residual_likelihood", "residual_severity", "residual_level", "created_at",
        ]


class DpiaSerializer(serializers.ModelSerializer):
    screening = ScreeningAnswerSerializer(many=True, read_only=True)
    risks = DpiaRiskSerializer(many=True, read_only=True)
    model_version_ids = serializers.PrimaryKeyRelatedField(source="model_versions", many=True, read_only=True)
    signed_by = serializers.StringRelatedField(allow_null=True)
    effective_required = serializers.BooleanField(read_only=True)

    class Meta:
        model = Dpia
        fields = [
            "id", "processing_activity", "version", "previous_version", "status", "title", "model_version_ids",
            "models_used_for_decisions", "screening", "dpia_required", "article_35_3_cases", "required_override",
            "required_override_justification", "effective_required", "systematic_description",
            "necessity_and_proportionality", "measures", "risks", "dpo_advice", "data_subject_views",
            "views_not_sought_reason", "review_date", "prior_consultation_required", "signed_by", "signed_at",
            "review_reason", "marked_for_review_at", "created_at", "updated_at",
        ]


class DpiaContentSerializer(serializers.Serializer):
    title = serializers.CharField(max_length=200, required=False)
    # Bounded by the database's bigint, so an id no row can have is a 400, not an overflow.
    model_version_ids = serializers.ListField(child=serializers.IntegerField(min_value=1, max_value=2**63 - 1),
                                              required=False)
    models_used_for_decisions = serializers.BooleanField(required=False)
    systematic_description = serializers.CharField(required=False, allow_blank=True)
    necessity_and_proportionality = serializers.CharField(required=False, allow_blank=True)
    measures = serializers.CharField(required=False, allow_blank=True)
    dpo_advice = serializers.CharField(required=False, allow_blank=True)
    data_subject_views = serializers.CharField(required=False, allow_blank=True)
    views_not_sought_reason = serializers.CharField(required=False, allow_blank=True)
    review_date = serializers.DateField(required=False, allow_null=True)
    required_override = serializers.BooleanField(required=False, allow_null=True)
    required_override_justification = serializers.CharField(required=False, allow_blank=True)


class DpiaCreateSerializer(DpiaContentSerializer):
    processing_activity = serializers.PrimaryKeyRelatedField(queryset=ProcessingActivity.objects.all())


class ScreeningItemSerializer(serializers.Serializer):
    criterion = serializers.ChoiceField(choices=Wp248Criterion.choices)
    answer = serializers.BooleanField()
    reason = serializers.CharField(required=False, allow_blank=True, default="")


class ScreeningConfirmSerializer(serializers.Serializer):
    answers = ScreeningItemSerializer(many=True, allow_empty=False)
    required_override = serializers.BooleanField(required=False, allow_null=True, default=None)
    required_override_justification = serializers.CharField(required=False, allow_blank=True, default="")


class RiskInputSerializer(serializers.Serializer):
    description = serializers.CharField()
    likelihood = serializers.ChoiceField(choices=Likelihood.choices)
    severity = serializers.ChoiceField(choices=Severity.choices)
    mitigations = serializers.CharField(required=False, allow_blank=True, default="")
    residual_likelihood = serializers.ChoiceField(choices=Likelihood.choices, required=False)
    residual_severity = serializers.ChoiceField(choices=Severity.choices, required=False)


# --- Views ---------------------------------------------------------------------------


class DpiaViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, mixins.UpdateModelMixin, viewsets.GenericViewSet
):
    """DPIAs (Art. 35). A change to a signed version starts a new version and returns it."""

    serializer_class = DpiaSerializer
    http_method_names = ["get", "post", "patch", "head", "options"]
    role_permissions = {
        "list": DPO_AND_AUDITOR,
        "retrieve": DPO_AND_AUDITOR,
        "report": DPO_AND_AUDITOR,
        "default": DPO_ONLY,
    }
    filterset_class = DpiaFilterSet

    def get_queryset(self):
        return selectors.dpia_list()

    @extend_schema(
        request=DpiaCreateSerializer,
        responses={201: DpiaSerializer},
        examples=[
            OpenApiExample(
                "Open a DPIA",
                value={"processing_activity": 1, "model_version_ids": [3], "models_used_for_decisions": True},
                request_only=True,
            )
        ],
    )
    def create(self, request, *args, **kwargs):
        data = DpiaCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        dpia = services.dpia_create(actor=request.user, **values)
        return Response(DpiaSerializer(selectors.dpia_list().get(pk=dpia.pk)).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=DpiaContentSerializer, responses={200: DpiaSerializer})
    def partial_update(self, request, *args, **kwargs):
        dpia = self.get_object()
        data = DpiaContentSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        updated = services.dpia_update(dpia=dpia, actor=request.user, **data.validated_data)
        return Response(DpiaSerializer(selectors.dpia_list().get(pk=updated.pk)).data)

    @extend_schema(
        request=None,
        responses={200: DpiaSerializer, 400: OpenApiResponse(description="Required sections empty, named in `sections`.")},
    )
    @action(detail=True, methods=["post"])
    def sign(self, request, pk=None):
        """Sign the draft version; refused with 400 naming every empty required section."""
        dpia = services.dpia_sign(dpia=self.get_object(), actor=request.user)
        return Response(DpiaSerializer(selectors.dpia_list().get(pk=dpia.pk)).data)

    @extend_schema(request=ScreeningConfirmSerializer, responses={200: DpiaSerializer})
    @action(detail=True, methods=["post"])
    def screening(self, request, pk=None):
        """Confirm or override WP248 screening answers (an override needs a reason)."""
        dpia = self.get_object()
        data = ScreeningConfirmSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        updated = services.dpia_screening_confirm(
            dpia=dpia, actor=request.user, answers=[dict(a) for a in data.validated_data["answers"]],
            required_override=data.validated_data["required_override"],
            required_override_justification=data.validated_data["required_override_justification"],
        )
        return Response(DpiaSerializer(selectors.dpia_list().get(pk=updated.pk)).data)

    @extend_schema(
        request=RiskInputSerializer,
        responses={201: DpiaRiskSerializer},
        examples=[
            OpenApiExample(
                "Membership inference",
                value={
                    "description": "Membership inference reveals that a person's record was used for training.",
                    "likelihood": "possible", "severity": "significant",
                    "mitigations": "DP-SGD with ε ≤ 3; MIA audit before release.",
                    "residual_likelihood": "remote", "residual_severity": "significant",
                },
                request_only=True,
            )
        ],
    )
    @action(detail=True, methods=["post"])
    def risks(self, request, pk=None):
        """Add a risk to the register (on a signed version: to a new version)."""
        dpia = self.get_object()
        data = RiskInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        risk = services.dpia_risk_add(dpia=dpia, actor=request.user, **data.validated_data)
        return Response(DpiaRiskSerializer(risk).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        methods=["GET"], request=None,
        responses={
            (200, "application/pdf"): OpenApiTypes.BINARY,
            404: OpenApiResponse(description="Not rendered yet: POST to render it."),
            409: OpenApiResponse(description="The DPIA changed since its last rendering: POST to render it again."),
        },
    )
    @extend_schema(
        methods=["POST"], request=None,
        responses={
            (201, "application/pdf"): OpenApiTypes.BINARY,
            500: OpenApiResponse(description="The rendering failed; the failure is recorded."),
        },
    )
    @action(detail=True, methods=["get", "post"])
    def report(self, request, pk=None):
        """GET: the last rendering of the DPIA as a PDF (reading writes nothing). POST: render
        it now, keep it as a report job and record report.generated in the audit chain."""
        dpia = self.get_object()
        filename = f"dpia-{dpia.pk}-v{dpia.version}.pdf"
        if request.method == "POST":
            job = services.dpia_report_render(dpia=dpia, actor=request.user)
            if job.status != ReportStatus.SUCCEEDED:
                return Response({"detail": f"The report could not be rendered: {job.error}"}, status=500)
            response = pdf_response(job, filename=filename)
            response.status_code = status.HTTP_201_CREATED
            response["Location"] = f"/api/v1/reports/{job.pk}/"
            return response
        job, changed = selectors.dpia_report_latest(dpia=dpia)
        if job is None:
            raise NotFound(
                f"DPIA {dpia.pk} has not been rendered yet: POST /api/v1/dpias/{dpia.pk}/report/ renders it."
            )
        if changed:
            raise services.ServiceConflict(
                f"DPIA {dpia.pk} changed after its last rendering (report {job.pk}, rendered "
                f"{job.started_at.isoformat()}): POST /api/v1/dpias/{dpia.pk}/report/ renders it again.",
                report_job=job.pk,
            )
        response = pdf_response(job, filename=filename)
        response["X-Report-Job"] = str(job.pk)
        response["X-Rendered-At"] = job.finished_at.isoformat() if job.finished_at else ""
        return response
