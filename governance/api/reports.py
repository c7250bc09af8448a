"""REST API for report jobs (/api/v1/reports/) and the RoPA as CSV.

The auditor and the DPO request and download every report; an ML engineer may request
and read model-lineage reports only.
"""

from __future__ import annotations

from pathlib import Path

from django.http import FileResponse, HttpResponse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, PermissionDenied
from rest_framework.response import Response
from rest_framework.views import APIView

from governance.filtersets import ApiFilterSet, IdFilter
from governance.models import ReportJob, ReportKind, ReportStatus
from governance.permissions import DPO_AND_AUDITOR, READ_ROLES
from governance.reports import jobs
from governance.reports.ropa import ropa_csv
from governance.roles import AUDITOR, DPO, roles_of


class ReportJobSerializer(serializers.ModelSerializer):
    requested_by = serializers.StringRelatedField(allow_null=True)
    download_url = serializers.SerializerMethodField()

    class Meta:
        model = ReportJob
        fields = [
            "id", "kind", "object_id", "status", "requested_by", "sha256", "size_bytes", "error", "created_at",
            "started_at", "finished_at", "download_url",
        ]

    def get_download_url(self, job: ReportJob) -> str | None:
        return f"/api/v1/reports/{job.pk}/download/" if job.status == ReportStatus.SUCCEEDED else None


class ReportRequestSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=ReportKind.choices)
    object_id = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=2**63 - 1)


def pdf_response(job: ReportJob, *, filename: str) -> FileResponse:
    path = jobs.report_file_path(job)
    if job.status != ReportStatus.SUCCEEDED or not path.is_file():
        raise NotFound(f"Report {job.pk} is {job.status}: no file to download." + (f" {job.error}" if job.error else ""))
    response = FileResponse(open(path, "rb"), content_type="application/pdf", as_attachment=True, filename=filename)  # noqa: SIM115
    response["X-Content-SHA256"] = job.sha256
    return response


class ReportJobFilterSet(ApiFilterSet):
    object_id = IdFilter(foreign_key=False, help_text="The id of the object the report describes.")

    class Meta:
        model = ReportJob
        fields = ["kind", "status", "object_id"]


class ReportJobViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet):
    """Report jobs: request a PDF (202), follow its status, download it."""

    serializer_class = ReportJobSerializer
    role_permissions = {"default": READ_ROLES}
    filterset_class = ReportJobFilterSet

    def get_queryset(self):
        qs = ReportJob.objects.select_related("requested_by").order_by("-created_at", "-id")
        if not roles_of(self.request.user) & {DPO, AUDITOR}:
            qs = qs.filter(kind=ReportKind.MODEL_LINEAGE)
        return qs

    @extend_schema(
        request=ReportRequestSerializer,
        responses={202: ReportJobSerializer},
        examples=[
            OpenApiExample("DPIA report", value={"kind": "dpia", "object_id": 1}, request_only=True),
            OpenApiExample("Record of processing", value={"kind": "ropa"}, request_only=True),
        ],
    )
    def create(self, request, *args, **kwargs):
        data = ReportRequestSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        kind = data.validated_data["kind"]
        if kind != ReportKind.MODEL_LINEAGE and not roles_of(request.user) & {DPO, AUDITOR}:
            raise PermissionDenied("Your role (ml_engineer) may not request this report: ML engineers may request model-lineage reports only.")
        job = jobs.report_job_request(kind=kind, object_id=data.validated_data.get("object_id"), actor=request.user)
        job.refresh_from_db()
        return Response(ReportJobSerializer(job).data, status=status.HTTP_202_ACCEPTED, headers={"Location": f"/api/v1/reports/{job.pk}/"})

    @extend_schema(responses={(200, "application/pdf"): OpenApiTypes.BINARY})
    @action(detail=True, methods=["get"])
    def download(self, request, pk=None):
        job = self.get_object()
        return pdf_response(job, filename=Path(job.file_path).name or f"report-{job.pk}.pdf")


class RopaCsvView(APIView):
    """The record of processing activities (Art. 30) as CSV, one row per activity."""

    role_permissions = {"default": DPO_AND_AUDITOR}

    @extend_schema(responses={(200, "text/csv"): OpenApiTypes.STR})
    def get(self, request):
        response = HttpResponse(ropa_csv(), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="ropa-{timezone.localdate().isoformat()}.csv"'
        return response

