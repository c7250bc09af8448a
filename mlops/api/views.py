"""MLOps API: training runs, the model registry and dataset privacy budgets."""

from __future__ import annotations

import json

from django.http import FileResponse, HttpResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.parsers import JSONParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from governance.permissions import DPO_AND_ENGINEER, DPO_ONLY, READ_ROLES
from governance.roles import sees_erasure_detail
from governance.services.errors import ServiceConflict
from mlops import artifacts, selectors, services
from mlops.api import serializers
from mlops.filtersets import (
    AuditPolicyFilterSet,
    ModelVersionFilterSet,
    OutputPolicyFilterSet,
    RectificationPolicyFilterSet,
    TrainingRunFilterSet,
)
from mlops.models import AuditPolicy, Executor, ModelOutputPolicy, ModelVersion, RectificationPolicy
from mlops.services import external
from provenance import lineage_exports
from provenance.models import Dataset

CONFLICT = OpenApiResponse(description="Refused in the current state (e.g. over the dataset's privacy budget).")


class TrainingRunViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """DP training runs: queue one, follow its progress, cancel it."""

    queryset = selectors.training_runs_visible()
    serializer_class = serializers.TrainingRunSerializer
    filterset_class = TrainingRunFilterSet
    ordering_fields = ["created_at", "finished_at", "epsilon"]
    role_permissions = {
        "create": DPO_AND_ENGINEER, "cancel": DPO_AND_ENGINEER, "report": DPO_AND_ENGINEER,
        "fail": DPO_AND_ENGINEER, "approve_overspend": DPO_ONLY, "default": READ_ROLES,
    }

    @extend_schema(
        request=serializers.TrainingRunRequestSerializer,
        responses={201: serializers.ExternalRunCreatedSerializer, 202: serializers.TrainingRunSerializer,
                   400: OpenApiTypes.OBJECT, 409: CONFLICT},
        examples=[
            OpenApiExample(
                "DP model at ε = 1",
                value={"snapshot": 12, "name": "credit-risk", "model_spec": {"hidden_sizes": [64]}, "epochs": 5,
                       "batch_size": 256, "target_epsilon": 1.0, "max_grad_norm": 1.0},
                request_only=True,
            ),
            OpenApiExample(
                "Trained outside the ledger",
                value={"executor": "external", "snapshot": 12, "name": "cnn-images", "epochs": 3, "batch_size": 64,
                       "target_epsilon": 2.0, "max_grad_norm": 1.0, "description": "Small CNN, Opacus 1.6"},
                request_only=True,
            ),
            OpenApiExample(
                "SISA ensemble",
                value={"snapshot": 12, "target_epsilon": 3.0, "sisa": {"shards": 3, "slices": 2}},
                request_only=True,
            ),
        ],
    )
    def create(self, request):
        """Queue a training run (202), or with ``"executor": "external"`` reserve the budget of a
        run trained outside the ledger (201, with its run token); refused with 400 naming the
        field, or 409 over budget."""
        body = serializers.TrainingRunRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        values = dict(body.validated_data)
        executor = values.pop("executor")
        if executor == Executor.EXTERNAL:
            for field in serializers.EXTERNAL_REFUSED_FIELDS:
                values.pop(field, None)
            run, token = external.external_run_start(**values, requested_by=request.user)
            run.refresh_from_db()
            data = serializers.ExternalRunCreatedSerializer(
                run, context={**self.get_serializer_context(), "run_token": token}
            ).data
            return Response(data, status=status.HTTP_201_CREATED)
        run = services.training_run_queue(**values, requested_by=request.user)
        run.refresh_from_db()
        return Response(self.get_serializer(run).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        request={
            "application/json": serializers.ExternalReportSerializer,
            "multipart/form-data": {
                "type": "object",
                "properties": {"report": {"type": "string", "description": "The report as JSON."},
                               "file": {"type": "string", "format": "binary"}},
                "required": ["report"],
            },
        },
        responses={201: serializers.ExternalReportResultSerializer, 400: OpenApiTypes.OBJECT, 409: CONFLICT},
        examples=[OpenApiExample(
            "Opacus RDP history",
            value={"run_token": "…", "accountant": "rdp", "history": [[1.1, 0.01, 500]],
                   "metrics": {"val_accuracy": 0.91}, "artifact_sha256": "0" * 64,
                   "description": "ResNet-18, 5 epochs"},
            request_only=True,
        )],
    )
    @action(detail=True, methods=["post"], parser_classes=[JSONParser, MultiPartParser])
    def report(self, request, pk=None):
        """Report an external run: ε is recomputed from the accountant history, the ledger is
        settled and the model version registered (201). 403: not this run's token (the
        refusal is audited). 409: over the reservation without a DPO's approval, over the
        dataset's cap, or the run is not waiting for a report."""
        run = self.get_object()
        payload, upload = _report_payload(request)
        body = serializers.ExternalReportSerializer(data=payload)
        body.is_valid(raise_exception=True)
        version = external.external_run_report(
            run_id=run.pk, **body.validated_data, sent_epsilon=payload.get("epsilon"), artifact=upload,
            actor=request.user,
        )
        run.refresh_from_db()
        return Response(
            {"run": self.get_serializer(run).data, "model_version": serializers.ReportedVersionSerializer(version).data},
            status=status.HTTP_201_CREATED,
        )

    @extend_schema(request=serializers.ExternalFailSerializer,
                   responses={200: serializers.TrainingRunSerializer, 409: CONFLICT})
    @action(detail=True, methods=["post"])
    def fail(self, request, pk=None):
        """An external run's trainer gave up: the run is failed and its reservation released."""
        run = self.get_object()
        body = serializers.ExternalFailSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        failed = external.external_run_fail(run_id=run.pk, actor=request.user, **body.validated_data)
        return Response(self.get_serializer(failed).data)

    @extend_schema(request=serializers.OverspendApproveSerializer,
                   responses={200: serializers.TrainingRunSerializer, 409: CONFLICT})
    @action(detail=True, methods=["post"], url_path="approve-overspend", url_name="approve-overspend")
    def approve_overspend(self, request, pk=None):
        """Let an external run report up to ``epsilon_limit`` instead of the ε it reserved (DPO only)."""
        body = serializers.OverspendApproveSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        run = external.external_run_approve_overspend(run=self.get_object(), actor=request.user,
                                                      **body.validated_data)
        return Response(self.get_serializer(run).data)

    @extend_schema(request=None, responses={200: serializers.TrainingRunSerializer, 409: CONFLICT})
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        run = services.training_run_cancel(run=self.get_object(), actor=request.user)
        return Response(self.get_serializer(run).data)


class ModelVersionViewSet(viewsets.ReadOnlyModelViewSet):
    """The model registry: ε and δ, metrics, membership-inference results, lineage, weights."""

    queryset = selectors.model_versions_visible()
    serializer_class = serializers.ModelVersionSerializer
    filterset_class = ModelVersionFilterSet
    ordering_fields = ["created_at", "epsilon", "version"]
    role_permissions = {"artifact": DPO_AND_ENGINEER, "retire": DPO_AND_ENGINEER, "default": READ_ROLES}

    def get_serializer_class(self):
        # The detail carries the reproducibility record (one more query for the audit's
        # records); the list stays one query per page.
        if self.action == "retrieve":
            return serializers.ModelVersionDetailSerializer
        return serializers.ModelVersionSerializer

    @extend_schema(responses=serializers.ModelStatusSerializer)
    @action(detail=True, methods=["get"], url_path="status", url_name="status")
    def model_status(self, request, pk=None):
        """Whether a serving system may serve this version now (``servable``: active only)."""
        version = self.get_object()
        return Response(serializers.ModelStatusSerializer(version, context=self.get_serializer_context()).data)

    @extend_schema(request=serializers.ModelRetireSerializer, responses=serializers.ModelStatusSerializer)
    @action(detail=True, methods=["post"])
    def retire(self, request, pk=None):
        """Take a live version out of service for good (a DPO, or the engineer who asked for its
        run): e.g. a model trained outside the ledger its owner will not retrain after an erasure."""
        from mlops.services.registry import model_version_retire_by

        body = serializers.ModelRetireSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        version = model_version_retire_by(model_version=self.get_object(), actor=request.user,
                                          reason=body.validated_data["reason"])
        return Response(serializers.ModelStatusSerializer(version, context=self.get_serializer_context()).data)

    @extend_schema(responses=OpenApiTypes.OBJECT)
    @action(detail=True, methods=["get"])
    def lineage(self, request, pk=None):
        """Everything upstream: training run, snapshot, datasets, processing activities."""
        return Response(selectors.model_lineage(model_version=self.get_object()))

    @extend_schema(responses={
        (200, "application/octet-stream"): OpenApiTypes.BINARY,
        409: OpenApiResponse(description="The weights are missing or do not match their recorded SHA-256."),
    })
    @action(detail=True, methods=["get"])
    def artifact(self, request, pk=None):
        """The weights as a safetensors file; refused (409) if the file no longer matches its hash."""
        version = self.get_object()
        if not version.artifact_path:
            # Trained outside the ledger and reported without its file: its owner holds it.
            raise ServiceConflict(
                f"Model version {version.pk} was trained outside the ledger; its weights (SHA-256 "
                f"{version.artifact_sha256}) are held by its owner."
            )
        path = artifacts.absolute(version.artifact_path)
        if not path.exists() or artifacts.sha256_of(path) != version.artifact_sha256:
            raise ServiceConflict(
                f"The weights of model version {version.pk} are missing or do not match their SHA-256."
            )
        response = FileResponse(
            open(path, "rb"), as_attachment=True,  # noqa: SIM115 - FileResponse closes it
            filename=f"{version.name}-v{version.version}.safetensors", content_type="application/octet-stream",
        )
        response["X-Content-SHA256"] = version.artifact_sha256
        return response


def _report_payload(request) -> tuple[dict, object | None]:
    """The report's fields and the uploaded file: JSON, or multipart with a ``report`` part
    (JSON text) and an optional ``file`` part."""
    if request.content_type and request.content_type.startswith("multipart/"):
        raw = request.data.get("report")
        try:
            payload = json.loads(raw) if isinstance(raw, str) else None
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            raise ValidationError({"report": ["A JSON object (the report) in a part named report."]})
        return payload, request.FILES.get("file")
    if not isinstance(request.data, dict):
        raise ValidationError({"non_field_errors": ["The report is a JSON object."]})
    return request.data, None


class AuditPolicyViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Audit policies: ceilings a dataset's or processing activity's model versions must pass
    (LiRA's TPR at 1% FPR or AUC, the canary ε lower bound, attribute-inference gain) before
    they become active. Append-only: setting one writes a new policy; the latest per scope
    applies to versions registered from then on."""

    queryset = AuditPolicy.objects.select_related("set_by").order_by("-created_at", "-id")
    serializer_class = serializers.AuditPolicySerializer
    filterset_class = AuditPolicyFilterSet
    role_permissions = {"create": DPO_ONLY, "default": READ_ROLES}

    @extend_schema(
        request=serializers.AuditPolicySetSerializer,
        responses={201: serializers.AuditPolicySerializer, 400: OpenApiTypes.OBJECT},
        examples=[OpenApiExample(
            "TPR at 1% FPR ≤ 2% and ε bound within the claim",
            value={"dataset": 3, "max_tpr_at_1pct_fpr": 0.02, "epsilon_lower_bound_within_claim": True},
            request_only=True,
        )],
    )
    def create(self, request):
        """Set the audit policy of a dataset or processing activity (DPO only)."""
        body = serializers.AuditPolicySetSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        policy = services.audit_policy_set(actor=request.user, **body.validated_data)
        return Response(self.get_serializer(policy).data, status=status.HTTP_201_CREATED)


class RectificationPolicyViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Rectification policies (Art. 16): what is done with a processing activity's model
    versions trained on values a rectification corrected since (status ``stale``):
    ``retrain`` them on a fresh snapshot, or ``accept`` them with a justification.
    Append-only: setting one writes a new policy; the latest per activity applies, at once
    to the versions stale now and to every later rectification."""

    queryset = RectificationPolicy.objects.select_related("set_by").order_by("-created_at", "-id")
    serializer_class = serializers.RectificationPolicySerializer
    filterset_class = RectificationPolicyFilterSet
    role_permissions = {"create": DPO_ONLY, "default": READ_ROLES}

    @extend_schema(
        request=serializers.RectificationPolicySetSerializer,
        responses={201: serializers.RectificationPolicySerializer, 400: OpenApiTypes.OBJECT},
        examples=[OpenApiExample(
            "Retrain after a rectification",
            value={"processing_activity": 2, "action": "retrain",
                   "justification": "Corrected clinical values change the risk scores: serve none trained on the old."},
            request_only=True,
        )],
    )
    def create(self, request):
        """Set the rectification policy of a processing activity (DPO only)."""
        body = serializers.RectificationPolicySetSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        policy = services.rectification_policy_set(actor=request.user, **body.validated_data)
        return Response(self.get_serializer(policy).data, status=status.HTTP_201_CREATED)


class OutputPolicyViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Output policies (issue 19): what a model's decisions reveal against inversion and
    membership inference: full or rounded probabilities, the top label with a confidence
    band, or the label only; and whether per-decision attributions are withheld while the
    explanation-based membership attack exceeds the audit ceiling. Per model name, for all
    its versions. Append-only: setting one writes a new policy; the latest is in force.
    Without one, a model trained on Art. 9 data answers with the label and a band, any
    other with probabilities rounded to 2 digits (see a version's ``output_policy``)."""

    queryset = ModelOutputPolicy.objects.select_related("set_by").order_by("-created_at", "-id")
    serializer_class = serializers.OutputPolicySerializer
    filterset_class = OutputPolicyFilterSet
    role_permissions = {"create": DPO_ONLY, "default": READ_ROLES}

    @extend_schema(
        request=serializers.OutputPolicySetSerializer,
        responses={201: serializers.OutputPolicySerializer, 400: OpenApiTypes.OBJECT},
        examples=[OpenApiExample(
            "Label and band, attributions withheld above the ceiling",
            value={"name": "clinical-risk", "kind": "label_with_band", "withhold_attributions": True,
                   "reason": "Health data: probabilities would help invert the model."},
            request_only=True,
        )],
    )
    def create(self, request):
        """Set the output policy of a model (DPO only)."""
        body = serializers.OutputPolicySetSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        policy = services.output_policy_set(actor=request.user, **body.validated_data)
        return Response(self.get_serializer(policy).data, status=status.HTTP_201_CREATED)


class PrivacyBudgetView(APIView):
    """A dataset's privacy budget: the cap a DPO set, and the ε spent by every training run."""

    role_permissions = {"get": READ_ROLES, "options": READ_ROLES, "put": DPO_ONLY, "post": DPO_ONLY}

    @extend_schema(responses=serializers.PrivacyBudgetStatusSerializer)
    def get(self, request, dataset_id: int):
        dataset = get_object_or_404(Dataset, pk=dataset_id)
        return Response(serializers.PrivacyBudgetStatusSerializer(selectors.privacy_budget_status(dataset=dataset)).data)

    @extend_schema(
        request=serializers.PrivacyBudgetSetSerializer,
        responses=serializers.PrivacyBudgetStatusSerializer,
        examples=[OpenApiExample("ε ≤ 8 at δ = 1e-6", value={"epsilon_cap": 8.0, "delta": 1e-6}, request_only=True)],
    )
    def put(self, request, dataset_id: int):
        """Set the ε cap (at δ) for all training on the dataset (DPO only)."""
        dataset = get_object_or_404(Dataset, pk=dataset_id)
        body = serializers.PrivacyBudgetSetSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        services.privacy_budget_set(dataset=dataset, actor=request.user, **body.validated_data)
        return Response(serializers.PrivacyBudgetStatusSerializer(selectors.privacy_budget_status(dataset=dataset)).data)

    @extend_schema(
        request=serializers.PrivacyBudgetSetSerializer, responses=serializers.PrivacyBudgetStatusSerializer
    )
    def post(self, request, dataset_id: int):
        """Same as PUT."""
        return self.put(request, dataset_id)


class ModelProvView(APIView):
    """W3C PROV-JSON of everything upstream of a model version, down to datasets and
    processing activities."""

    role_permissions = {"default": READ_ROLES}

    @extend_schema(responses={(200, "application/json"): OpenApiTypes.OBJECT})
    def get(self, request, pk: int):
        model_version = ModelVersion.objects.select_related("training_run").filter(pk=pk).first()
        if model_version is None:
            raise NotFound(f"Model version {pk} does not exist.")
        doc = lineage_exports.model_prov_document(
            model_version=model_version, erasure_detail=sees_erasure_detail(request.user)
        )
        response = HttpResponse(lineage_exports.prov_json(doc), content_type="application/json")
        response["Content-Disposition"] = f'attachment; filename="model-version-{pk}.prov.json"'
        return response
