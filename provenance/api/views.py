from __future__ import annotations

import json

from django.db.models import Count
from django.http import HttpResponse, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import MethodNotAllowed, ParseError
from rest_framework.parsers import BaseParser
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from governance.api.parsers import StorableJSONParser, unstorable_reason
from governance.permissions import DPO_AND_AUDITOR, DPO_AND_ENGINEER, DPO_ONLY, READ_ROLES
from governance.roles import sees_erasure_detail
from provenance import lineage_exports, selectors, services, snapshot_exports
from provenance.api import serializers
from provenance.filtersets import DatasetFilterSet, SnapshotFilterSet
from provenance.models import Dataset, Snapshot
from provenance.services.export import EXPORT_FORMATS, snapshot_export_open


class CSVTextParser(BaseParser):
    """A CSV body, handed to the service as text."""

    media_type = "text/csv"

    def parse(self, stream, media_type=None, parser_context=None) -> str:
        encoding = (parser_context or {}).get("encoding", "utf-8")
        try:
            text = stream.read().decode(encoding)
        except (UnicodeDecodeError, LookupError) as exc:
            raise ParseError(f"The CSV body is not valid {encoding} text: {exc}.") from None
        reason = unstorable_reason(text)
        if reason:
            raise ParseError(f"The CSV body {reason}.")
        return text


RECORDS_EXAMPLE = [
    {"subject": "patient-0001@example.org", "features": {"age": 54, "bmi": 27.1, "smoker": False}, "label": True}
]


class DatasetViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet):
    """Datasets under a processing activity, their records and lineage."""

    serializer_class = serializers.DatasetSerializer
    filterset_class = DatasetFilterSet
    ordering_fields = ["name", "created_at"]
    role_permissions = {
        "list": READ_ROLES,
        "retrieve": READ_ROLES,
        "lineage": READ_ROLES,
        "prov": READ_ROLES,
        "create": DPO_AND_ENGINEER,
        "records": DPO_AND_ENGINEER,
        "default": DPO_AND_ENGINEER,
    }

    def get_queryset(self):
        queryset = Dataset.objects.select_related("created_by", "processing_activity").order_by("name")
        if self.action in ("list", "retrieve"):
            # Counting a big dataset's records is only worth it when the answer shows it.
            queryset = queryset.prefetch_related("parents").annotate(record_count=Count("records"))
        return queryset

    def perform_create(self, serializer):
        data = serializer.validated_data
        serializer.instance = services.dataset_create(
            name=data["name"], owner=data["owner"], processing_activity=data["processing_activity"],
            schema=data["schema"], description=data.get("description", ""),
            source_system=data.get("source_system", ""), parents=data.get("parents", []),
            transformation=data.get("transformation", ""), actor=self.request.user,
        )
        serializer.instance.record_count = 0

    @extend_schema(
        request={"application/json": serializers.RecordRowSerializer(many=True), "text/csv": OpenApiTypes.STR},
        responses={201: serializers.RecordIngestResultSerializer},
        examples=[
            OpenApiExample("JSON records", value=RECORDS_EXAMPLE, request_only=True, media_type="application/json"),
            OpenApiExample(
                "CSV records", value="subject,age,bmi,smoker,outcome\npatient-0001@example.org,54,27.1,false,true\n",
                request_only=True, media_type="text/csv",
            ),
        ],
        description="Upload up to 100,000 records as a JSON list or a CSV body; every row is validated "
        "first and either all are stored or none (400 names the row and field).",
    )
    @action(detail=True, methods=["post"], parser_classes=[StorableJSONParser, CSVTextParser])
    def records(self, request, pk=None):
        dataset = self.get_object()
        if isinstance(request.data, str):
            result = services.dataset_records_ingest_csv(dataset=dataset, text=request.data, actor=request.user)
        else:
            result = services.dataset_records_ingest(dataset=dataset, rows=request.data, actor=request.user)
        return Response(result, status=status.HTTP_201_CREATED)

    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    @action(detail=True, methods=["get"])
    def lineage(self, request, pk=None):
        """Ancestors, derived datasets, processing activities, snapshots, training runs and model versions."""
        return Response(selectors.dataset_lineage(dataset=self.get_object()))

    @extend_schema(responses={(200, "application/json"): OpenApiTypes.OBJECT})
    @action(detail=True, methods=["get"])
    def prov(self, request, pk=None):
        """W3C PROV-JSON of the dataset's snapshots and everything trained on them."""
        dataset = self.get_object()
        doc = lineage_exports.dataset_prov_document(dataset=dataset, erasure_detail=sees_erasure_detail(request.user))
        return _download(lineage_exports.prov_json(doc), f"dataset-{dataset.pk}.prov.json")


def _download(body: str, filename: str) -> HttpResponse:
    response = HttpResponse(body, content_type="application/json")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


class SnapshotViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Immutable, consent-filtered snapshots with their Merkle-rooted manifests."""

    serializer_class = serializers.SnapshotSerializer
    filterset_class = SnapshotFilterSet
    ordering_fields = ["created_at", "taken_for"]
    role_permissions = {
        "list": READ_ROLES,
        "retrieve": READ_ROLES,
        "manifest": READ_ROLES,
        "prov": READ_ROLES,
        "openlineage": READ_ROLES,
        "create": DPO_AND_ENGINEER,
        # The rows themselves leave the ledger to be trained on: the roles that may start a
        # training run (POST /training-runs/), not the auditor.
        "export": DPO_AND_ENGINEER,
        # Everyone is told why, rather than some roles hearing only "forbidden".
        "update": READ_ROLES,
        "partial_update": READ_ROLES,
        "destroy": READ_ROLES,
        "default": DPO_AND_ENGINEER,
    }

    def get_queryset(self):
        return (
            Snapshot.objects.select_related("purpose", "requested_by", "dataset__processing_activity")
            .prefetch_related("amendments")
            .order_by("-created_at", "-id")
        )

    @extend_schema(
        request=serializers.SnapshotCreateSerializer,
        responses={201: serializers.SnapshotSerializer},
        examples=[
            OpenApiExample(
                "Snapshot for training", request_only=True,
                value={"dataset": 1, "purpose": "ml.training.clinical_risk", "at": "2026-11-29T10:00:00Z"},
            )
        ],
    )
    def create(self, request):
        incoming = serializers.SnapshotCreateSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        data = incoming.validated_data
        snapshot = services.snapshot_create(
            dataset=data["dataset"], purpose=data["purpose"], at=data.get("at"), requested_by=request.user
        )
        snapshot = self.get_queryset().get(pk=snapshot.pk)
        return Response(self.get_serializer(snapshot).data, status=status.HTTP_201_CREATED)

    # PUT, PATCH and DELETE stay routed (so every role hears why) but are not offered: Allow
    # and OPTIONS list only what a snapshot answers.
    http_method_names = ["get", "post", "head", "options"]

    def http_method_not_allowed(self, request, *args, **kwargs):
        self._immutable(request)

    def _immutable(self, request):
        raise MethodNotAllowed(
            request.method,
            detail="Snapshots are immutable: they record exactly what a training run was allowed to use. "
            "Take a new snapshot instead; members are removed only by a retention purge or an erasure, "
            "each recorded as an amendment.",
        )

    @extend_schema(exclude=True)
    def update(self, request, pk=None):
        self._immutable(request)

    @extend_schema(exclude=True)
    def partial_update(self, request, pk=None):
        self._immutable(request)

    @extend_schema(exclude=True)
    def destroy(self, request, pk=None):
        self._immutable(request)

    @extend_schema(
        responses={(200, "application/json"): OpenApiResponse(
            OpenApiTypes.OBJECT,
            description='{"snapshot": id, "merkle_root": current root, "leaf": definition, "records": '
            '[{"record_id": n, "content_hash": hex}, ...]} in ascending record id order.',
        )}
    )
    @action(detail=True, methods=["get"])
    def manifest(self, request, pk=None):
        """The current members (record ids and content hashes), streamed, with the Merkle root to check."""
        snapshot = self.get_object()
        root = selectors.snapshot_current_root(snapshot=snapshot)
        head = {
            "snapshot": snapshot.pk,
            "merkle_root": root,
            "original_merkle_root": snapshot.merkle_root,
            "leaf": "sha256(f'{record_id}:{content_hash}'), ascending record_id; parent = sha256(left_hex + right_hex); an odd last node is promoted",
        }

        def stream():
            yield json.dumps(head)[:-1] + ', "records": ['
            first = True
            for record_id, content_hash in selectors.snapshot_manifest_rows(snapshot=snapshot):
                yield ("" if first else ",") + f'\n{{"record_id": {record_id}, "content_hash": "{content_hash}"}}'
                first = False
            yield "\n]}\n"

        response = StreamingHttpResponse(stream(), content_type="application/json")
        response["Content-Disposition"] = f'inline; filename="snapshot-{snapshot.pk}-manifest.json"'
        return response

    def perform_content_negotiation(self, request, force=False):
        # DRF reads ?format= as a renderer override and would answer 404 for "parquet": for
        # the export it names the file format, and errors are still answered as JSON.
        if self.action == "export":
            renderer = JSONRenderer()
            return renderer, renderer.media_type
        return super().perform_content_negotiation(request, force=force)

    @extend_schema(
        parameters=[OpenApiParameter(
            "format", str, enum=list(EXPORT_FORMATS), default="parquet",
            description="parquet (pyarrow, the metadata in the file too), csv or jsonl (one object per line).",
        )],
        responses={
            (200, "application/vnd.apache.parquet"): OpenApiResponse(
                OpenApiTypes.BINARY,
                description="The current members: record_id, the features in schema order, the label; never the "
                "person. Headers X-Ledger-Snapshot, X-Ledger-Merkle-Root, X-Ledger-Amendment, X-Ledger-Records, "
                "X-Ledger-Schema (SHA-256 of the schema's canonical JSON).",
            ),
            (200, "text/csv"): OpenApiTypes.STR,
            (200, "application/x-ndjson"): OpenApiTypes.STR,
            400: OpenApiTypes.OBJECT, 404: OpenApiTypes.OBJECT, 409: OpenApiTypes.OBJECT,
        },
    )
    @action(detail=True, methods=["get"])
    def export(self, request, pk=None):
        """The snapshot's current rows, streamed, to train on elsewhere; audited (snapshot.exported)."""
        snapshot = self.get_object()
        export = snapshot_export_open(snapshot=snapshot, format=request.query_params.get("format"), actor=request.user)
        response = StreamingHttpResponse(
            snapshot_exports.export_stream(export), content_type=snapshot_exports.CONTENT_TYPES[export.format]
        )
        for name, value in snapshot_exports.export_headers(export).items():
            response[name] = value
        return response

    @extend_schema(responses={(200, "application/json"): OpenApiTypes.OBJECT})
    @action(detail=True, methods=["get"])
    def prov(self, request, pk=None):
        """W3C PROV-JSON: the snapshot's upstream lineage and what was trained on it."""
        snapshot = self.get_object()
        doc = lineage_exports.snapshot_prov_document(snapshot=snapshot, erasure_detail=sees_erasure_detail(request.user))
        return _download(lineage_exports.prov_json(doc), f"snapshot-{snapshot.pk}.prov.json")

    @extend_schema(responses={(200, "application/json"): {"type": "array", "items": {"type": "object"}}})
    @action(detail=True, methods=["get"])
    def openlineage(self, request, pk=None):
        """The OpenLineage START and COMPLETE run events of the snapshot's creation."""
        snapshot = self.get_object()
        events = lineage_exports.openlineage_events_json(lineage_exports.snapshot_openlineage_events(snapshot=snapshot))
        return _download(json.dumps(events, indent=2), f"snapshot-{snapshot.pk}.openlineage.json")


class SubjectImpactView(APIView):
    """Every dataset, record, snapshot, training run and model version holding one person.

    POST, so the identifier stays out of URLs and access logs. It is pseudonymised before
    the lookup and never stored. For the DPO and auditors; ML engineers do not look people up.
    """

    role_permissions = {"default": DPO_AND_AUDITOR}

    @extend_schema(
        request=serializers.SubjectImpactRequestSerializer,
        responses={200: OpenApiTypes.OBJECT},
        examples=[OpenApiExample("Look up a person", value={"subject": "patient-0001@example.org"}, request_only=True)],
    )
    def post(self, request):
        incoming = serializers.SubjectImpactRequestSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        subject = selectors.subject_find(external_id=incoming.validated_data["subject"])
        if subject is None:
            return Response({
                "found": False, "subject_ref": None, "datasets": [], "snapshots": [], "training_runs": [],
                "model_versions": [], "counts": {"datasets": 0, "records": 0, "snapshots": 0, "training_runs": 0, "model_versions": 0},
            })
        return Response({"found": True, **selectors.subject_impact(subject=subject)})


class RetentionPurgeView(APIView):
    """Run the retention purge now and answer its counts (it also runs daily under Celery beat)."""

    role_permissions = {"default": DPO_ONLY}

    @extend_schema(request=None, responses={200: serializers.RetentionPurgeResultSerializer})
    def post(self, request):
        return Response(services.retention_purge(actor=request.user))
