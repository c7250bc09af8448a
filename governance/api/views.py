from dataclasses import asdict

import django_filters
from drf_spectacular.utils import extend_schema
from rest_framework import viewsets
from rest_framework.decorators import action
from rest_framework.response import Response
from rest_framework.views import APIView

from governance import selectors
from governance.api import serializers
from governance.models import AuditEvent
from governance.permissions import DPO_AND_AUDITOR, READ_ROLES
from governance.roles import roles_of


class AuditEventFilterSet(django_filters.FilterSet):
    occurred_after = django_filters.IsoDateTimeFilter(field_name="occurred_at", lookup_expr="gte")
    occurred_before = django_filters.IsoDateTimeFilter(field_name="occurred_at", lookup_expr="lt")

    class Meta:
        model = AuditEvent
        fields = ["action", "object_type", "object_id", "actor"]


class AuditEventViewSet(viewsets.ReadOnlyModelViewSet):
    """The tamper-evident audit log (read-only)."""

    queryset = AuditEvent.objects.order_by("position")
    serializer_class = serializers.AuditEventSerializer
    filterset_class = AuditEventFilterSet
    lookup_field = "position"
    role_permissions = {"default": DPO_AND_AUDITOR}

    @extend_schema(responses=serializers.AuditVerificationSerializer)
    @action(detail=False, methods=["get"])
    def verify(self, request):
        """Recompute the hash chain and report the first broken position, if any."""
        result = selectors.audit_chain_verify()
        return Response(serializers.AuditVerificationSerializer(asdict(result)).data)


class WhoAmIView(APIView):
    """Who the credentials belong to and which roles they carry."""

    role_permissions = {"default": READ_ROLES}

    @extend_schema(responses=serializers.WhoAmISerializer)
    def get(self, request):
        return Response({"username": request.user.get_username(), "roles": sorted(roles_of(request.user))})
