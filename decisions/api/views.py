"""Decisions API: serving a model (``models/{id}/predict/``), the decision records, the
decision log and its export, contesting a decision and deciding its review, and the
input-retention option of a processing activity.

Thin: each view validates the shape it can and calls a service or selector; the services
name the field at fault (400) or the state that refuses (409).
"""

from __future__ import annotations

from django.conf import settings
from django.http import StreamingHttpResponse
from django.shortcuts import get_object_or_404
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.response import Response
from rest_framework.views import APIView

from decisions import selectors, services
from decisions.api import serializers
from decisions.filtersets import DecisionFilterSet, DecisionInputRetentionFilterSet, DecisionReviewFilterSet
from decisions.models import DecisionInputRetention
from governance.api.parsers import request_body_object
from governance.models import ProcessingActivity
from governance.permissions import DPO_AND_AUDITOR, DPO_AND_ENGINEER, DPO_ONLY
from governance.services import ServiceError, moment_for_field
from mlops.models import ModelVersion

CONFLICT = OpenApiResponse(description="Refused in the current state (a version not active, a review decided).")


class PredictView(APIView):
    """Decide with a served model version: one row or up to 10,000 in the dataset's schema."""

    role_permissions = {"post": DPO_AND_ENGINEER, "default": DPO_AND_ENGINEER}

    @extend_schema(
        request=serializers.PredictRequestSerializer,
        responses={200: serializers.PredictResponseSerializer, 409: CONFLICT},
        examples=[OpenApiExample(
            "One row, explained",
            value={"rows": [{"age": 61, "systolic_bp": 148.0, "smoker": True, "condition": "diabetes"}],
                   "subjects": ["patient-0042@clinic.example"], "explain": True},
            request_only=True,
        )],
        summary="Decide about rows with an active model version (output policy applied, explained, recorded)",
    )
    def post(self, request, pk: int):
        version = get_object_or_404(
            ModelVersion.objects.select_related("training_run__snapshot__dataset"), pk=pk)
        data = request_body_object(request)
        answer = services.decisions_make(
            model_version=version, rows=data.get("rows"), subjects=data.get("subjects"),
            explain=data.get("explain"), explain_method=data.get("explain_method"), actor=request.user,
        )
        return Response(answer)


def _window(request) -> dict:
    """``model``, ``since``, ``until`` of the log and the export: 400 naming a bad one."""
    params = request.query_params
    out: dict = {"model_version_id": None, "since": None, "until": None}
    model = params.get("model", "").strip()
    if model:
        if not model.isdigit() or int(model) > 2**63 - 1:
            raise ServiceError("model: a model version id (a whole number).", field="model")
        out["model_version_id"] = int(model)
    for name in ("since", "until"):
        value = params.get(name, "").strip()
        if value:
            out[name] = moment_for_field(value, field=name, require_timezone=False, recorded=False)
    if out["since"] and out["until"] and out["since"] >= out["until"]:
        raise ServiceError("until: must be after since.", field="until")
    return out


WINDOW_PARAMETERS = [
    OpenApiParameter("model", OpenApiTypes.INT64, description="Only this model version."),
    OpenApiParameter("since", OpenApiTypes.DATETIME, description="From this moment (a date: its midnight, local)."),
    OpenApiParameter("until", OpenApiTypes.DATETIME, description="Before this moment."),
]


class _CsvNegotiation(DefaultContentNegotiation):
    """The export is CSV whatever the client accepts: the JSON renderer only renders errors."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


@extend_schema_view(
    list=extend_schema(summary="Decisions, newest first (filter: model_version, outcome, decided_after/before, contested)"),
    retrieve=extend_schema(summary="One decision: its output as presented and its explanation summary"),
)
class DecisionViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Recorded decisions (never their inputs, never who: only whether a person was named)."""

    queryset = selectors.decisions_visible().order_by("-decided_at", "-id")
    serializer_class = serializers.DecisionSerializer
    filterset_class = DecisionFilterSet
    ordering_fields = ["decided_at", "id"]
    role_permissions = {"contest": DPO_ONLY, "default": DPO_AND_AUDITOR}

    def get_content_negotiator(self):
        if getattr(self, "action", None) == "export":
            return _CsvNegotiation()
        return super().get_content_negotiator()

    @extend_schema(
        request=serializers.ContestSerializer,
        responses={201: serializers.DecisionReviewSerializer, 409: CONFLICT},
        examples=[OpenApiExample("By letter", value={
            "reason": "The decision ignored that my blood pressure readings were taken during an infection.",
            "channel": "letter"}, request_only=True)],
        summary="Contest a decision (Art. 22(3)): open a human review, due in one month (Art. 12(3))",
    )
    @action(detail=True, methods=["post"])
    def contest(self, request, pk=None):
        data = request_body_object(request)
        review = services.decision_contest(
            decision=self.get_object(), reason=data.get("reason"), channel=data.get("channel", "api"),
            received_at=data.get("received_at"), actor=request.user,
        )
        review = selectors.reviews_visible().get(pk=review.pk)
        return Response(serializers.DecisionReviewSerializer(review).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        parameters=WINDOW_PARAMETERS, responses=serializers.DecisionLogSerializer,
        summary="The decision log: decisions per model version, day and outcome",
    )
    @action(detail=False, methods=["get"], filterset_class=None, pagination_class=None)
    def log(self, request):
        counts = selectors.decision_log_counts(**_window(request))
        return Response(serializers.DecisionLogSerializer(
            {"retention_days": settings.DECISION_LOG_RETENTION_DAYS, "counts": counts}).data)

    @extend_schema(
        parameters=WINDOW_PARAMETERS, responses={(200, "text/csv"): OpenApiTypes.STR},
        summary="The decision log as CSV (DPIA, AI Act Art. 12 / 26(6) record keeping)",
    )
    @action(detail=False, methods=["get"], filterset_class=None, pagination_class=None)
    def export(self, request):
        window = _window(request)
        response = StreamingHttpResponse(selectors.decision_log_csv(**window), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="decisions-{timezone.localdate().isoformat()}.csv"'
        return response


@extend_schema_view(
    list=extend_schema(summary="Reviews of contested decisions, by deadline (filter: status, outcome, decision)"),
    retrieve=extend_schema(summary="One review"),
)
class DecisionReviewViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Human reviews of contested decisions (Art. 22(3))."""

    queryset = selectors.reviews_visible().order_by("due_at", "id")
    serializer_class = serializers.DecisionReviewSerializer
    filterset_class = DecisionReviewFilterSet
    ordering_fields = ["due_at", "requested_at", "id"]
    role_permissions = {"decide": DPO_ONLY, "default": DPO_AND_AUDITOR}

    @extend_schema(
        request=serializers.DecideSerializer, responses={200: serializers.DecisionReviewSerializer, 409: CONFLICT},
        examples=[OpenApiExample("Changed", value={
            "outcome": "changed", "reasons": "The readings were taken during an acute infection; repeated readings "
                                             "are normal.", "new_output": {"label": 0}}, request_only=True)],
        summary="Decide a review (a DPO): upheld, overturned or changed, with reasons",
    )
    @action(detail=True, methods=["post"])
    def decide(self, request, pk=None):
        data = request_body_object(request)
        review = services.decision_review_decide(
            review=self.get_object(), outcome=data.get("outcome"), reasons=data.get("reasons"),
            new_output=data.get("new_output"), reviewer=request.user,
        )
        return Response(serializers.DecisionReviewSerializer(selectors.reviews_visible().get(pk=review.pk)).data)


class DecisionInputRetentionViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Whether a processing activity's decisions keep their inputs, for how long and under
    which article. Append-only: setting one writes a new row; the latest is in force."""

    queryset = DecisionInputRetention.objects.select_related("set_by").order_by("-created_at", "-id")
    serializer_class = serializers.DecisionInputRetentionSerializer
    filterset_class = DecisionInputRetentionFilterSet
    role_permissions = {"create": DPO_ONLY, "default": DPO_AND_AUDITOR}

    @extend_schema(
        request=serializers.DecisionInputRetentionSetSerializer,
        responses={201: serializers.DecisionInputRetentionSerializer},
        examples=[OpenApiExample("Keep for the review period", value={
            "processing_activity": 2, "days": 40, "article": "Art. 22(3) GDPR: human intervention on request",
            "reason": "A reviewer needs the inputs the model saw while a decision can still be contested."},
            request_only=True)],
        summary="Set the input retention of a processing activity (DPO only)",
    )
    def create(self, request):
        body = serializers.DecisionInputRetentionSetSerializer(data=request_body_object(request))
        body.is_valid(raise_exception=True)
        data = body.validated_data
        activity = ProcessingActivity.objects.filter(pk=data["processing_activity"]).first()
        if activity is None:
            raise ServiceError(f"processing_activity: no processing activity {data['processing_activity']}.",
                               field="processing_activity")
        retention = services.decision_input_retention_set(
            processing_activity=activity, days=data["days"], article=data.get("article", ""), reason=data["reason"],
            actor=request.user,
        )
        return Response(self.get_serializer(retention).data, status=status.HTTP_201_CREATED)
