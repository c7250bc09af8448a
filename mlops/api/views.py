"""MLOps API: training runs, the model registry and dataset privacy budgets."""

from __future__ import annotations

from django.http import FileResponse, HttpResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
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
from mlops.models import AuditPolicy, ModelOutputPolicy, ModelVersion, RectificationPolicy
from provenance import lineage_exports
from provenance.models import Dataset

CONFLICT = OpenApiResponse(description="Refused in the current state (e.g. over the dataset's privacy budget).")


class TrainingRunViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """DP training runs: queue one, follow its progress, cancel it."""

    queryset = selectors.training_runs_visible()
    serializer_class = serializers.TrainingRunSerializer
    filterset_class = TrainingRunFilterSet
    ordering_fields = ["created_at", "finished_at", "epsilon"]
    role_permissions = {"create": DPO_AND_ENGINEER, "cancel": DPO_AND_ENGINEER, "default": READ_ROLES}

    @extend_schema(
        request=serializers.TrainingRunRequestSerializer,
        responses={202: serializers.TrainingRunSerializer, 400: OpenApiTypes.OBJECT, 409: CONFLICT},
        examples=[
            OpenApiExample(
                "DP model at ε = 1",
                value={"snapshot": 12, "name": "credit-risk", "model_spec": {"hidden_sizes": [64]}, "epochs": 5,
                       "batch_size": 256, "target_epsilon": 1.0, "max_grad_norm": 1.0},
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
        """Queue a training run (202); refused with 400 naming the field, or 409 over budget."""
        body = serializers.TrainingRunRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        run = services.training_run_queue(**body.validated_data, requested_by=request.user)
        run.refresh_from_db()
        return Response(self.get_serializer(run).data, status=status.HTTP_202_ACCEPTED)

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
    role_permissions = {"artifact": DPO_AND_ENGINEER, "default": READ_ROLES}

    def get_serializer_class(self):
        # The detail carries the reproducibility record (one more query for the audit's
        # records); the list stays one query per page.
        if self.action == "retrieve":
            return serializers.ModelVersionDetailSerializer
        return serializers.ModelVersionSerializer

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
