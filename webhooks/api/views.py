"""Webhooks API: register a webhook (its secret answered once), list and read them,
deactivate one, and read its deliveries.

An ML engineer sees the webhooks they registered; a DPO sees every one. Thin: the service
validates and names the field at fault.
"""

from __future__ import annotations

from django_filters.utils import translate_validation
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.generics import get_object_or_404
from rest_framework.response import Response

from governance.api.parsers import request_body_object
from governance.permissions import DPO_AND_ENGINEER
from governance.roles import DPO, has_role
from webhooks import services
from webhooks.api import serializers
from webhooks.filtersets import WebhookDeliveryFilterSet, WebhookSubscriptionFilterSet
from webhooks.models import DeliveryStatus, WebhookDelivery, WebhookSubscription

CONFLICT = OpenApiResponse(description="Refused in the current state (already deactivated, too many webhooks).")


@extend_schema_view(
    list=extend_schema(summary="Webhooks (yours; a DPO sees all) (filter: dataset, model_name, active)"),
    retrieve=extend_schema(summary="One webhook (its secret is never shown again)"),
)
class WebhookSubscriptionViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Webhooks told when a model version's status changes (tainted, stale, superseded, retired, ...)."""

    serializer_class = serializers.WebhookSubscriptionSerializer
    filterset_class = WebhookSubscriptionFilterSet
    ordering_fields = ["created_at", "id"]
    role_permissions = {"default": DPO_AND_ENGINEER}

    def get_queryset(self):
        qs = WebhookSubscription.objects.select_related("created_by").order_by("-created_at", "-id")
        if getattr(self, "swagger_fake_view", False):  # the schema generator has no user
            return qs.none()
        if has_role(self.request.user, DPO):
            return qs
        return qs.filter(created_by=self.request.user)

    @extend_schema(
        request=serializers.WebhookCreateSerializer,
        responses={201: serializers.WebhookCreatedSerializer, 409: CONFLICT},
        examples=[OpenApiExample("Taints of one model", value={
            "url": "https://serving.example.com/hooks/ledger", "dataset": None, "model_name": "readmission-risk",
            "events": ["tainted", "stale", "superseded", "retired"]}, request_only=True)],
        summary="Register a webhook: its signing secret is answered once",
    )
    def create(self, request):
        data = request_body_object(request)
        shape = serializers.WebhookCreateSerializer(data=data)
        shape.is_valid(raise_exception=True)
        subscription, secret = services.webhook_subscription_create(
            url=data.get("url"), dataset=data.get("dataset"), model_name=data.get("model_name"),
            events=data.get("events"), actor=request.user,
        )
        subscription.secret = secret
        return Response(serializers.WebhookCreatedSerializer(subscription).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={200: serializers.WebhookSubscriptionSerializer, 409: CONFLICT},
                   summary="Deactivate a webhook: nothing more is sent to it")
    @action(detail=True, methods=["post"])
    def deactivate(self, request, pk=None):
        subscription = services.webhook_subscription_deactivate(subscription=self.get_object(), actor=request.user)
        return Response(serializers.WebhookSubscriptionSerializer(subscription).data)

    @extend_schema(
        responses=serializers.WebhookDeliverySerializer(many=True),
        parameters=[
            OpenApiParameter("status", str, enum=DeliveryStatus.values, description="pending, delivered or failed."),
            OpenApiParameter("model_version", OpenApiTypes.INT64, description="Only deliveries about this version."),
        ],
        summary="A webhook's deliveries, newest first (filter: status, model_version)",
    )
    @action(detail=True, methods=["get"], filter_backends=[])
    def deliveries(self, request, pk=None):
        # The subscription through the viewset's own (role-limited) queryset; the deliveries
        # filtered here, as the viewset's filters are the subscriptions'.
        subscription = get_object_or_404(self.get_queryset(), pk=pk)
        qs = WebhookDelivery.objects.filter(subscription=subscription).order_by("-created_at", "-id")
        filterset = WebhookDeliveryFilterSet(request.query_params, queryset=qs, request=request)
        if not filterset.is_valid():
            raise translate_validation(filterset.errors)
        page = self.paginate_queryset(filterset.qs)
        return self.get_paginated_response(serializers.WebhookDeliverySerializer(page, many=True).data)
