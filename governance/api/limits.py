"""API of the processing limits: restrictions (Art. 18) and objections (Art. 21).

The DPO records them; auditors read them; no other role sees them (a restriction says
something about a person's dispute with the controller). A person arrives as an external
identifier, pseudonymised by the service; answers name them by pseudonym and audit
reference only. Every refusal is the service's: 400 naming the field or 409 naming the
article, with nothing written.
"""

from __future__ import annotations

import django_filters
from django.db.models import Exists, OuterRef
from drf_spectacular.utils import OpenApiExample, extend_schema, extend_schema_field
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from governance import services
from governance.filtersets import ApiFilterSet, StrictBooleanFilter
from governance.models import (
    CompellingGrounds,
    ProcessingObjection,
    ProcessingRestriction,
    RestrictionGround,
    RestrictionLifting,
)
from governance.moments import UTCIsoDateTimeFilter
from governance.permissions import DPO_AND_AUDITOR, DPO_ONLY

LIMIT_ROLES = {"read": DPO_AND_AUDITOR, "write": DPO_ONLY}
_GROUNDS = "; ".join(f"`{value}` {label}" for value, label in RestrictionGround.choices)


# --- Serializers ---------------------------------------------------------------------


class RestrictionLiftingSerializer(serializers.ModelSerializer):
    class Meta:
        model = RestrictionLifting
        fields = ["reason", "informed_at", "lifted_at", "lifted_by"]
        read_only_fields = fields


class RestrictionSerializer(serializers.ModelSerializer):
    """A restriction as the DPO and auditors see it: the person by pseudonym and audit reference."""

    subject = serializers.CharField(source="subject.pseudonym", read_only=True, help_text="The person's pseudonym.")
    subject_ref = serializers.UUIDField(source="subject.reference", read_only=True)
    # Text, not an enum, in the schema: "ground" already names the erasure grounds' enum there.
    ground = serializers.CharField(read_only=True, help_text=f"Art. 18(1) ground: {_GROUNDS}.")
    ground_label = serializers.CharField(source="get_ground_display", read_only=True)
    in_force = serializers.SerializerMethodField(help_text="True until the restriction is lifted.")
    lifting = serializers.SerializerMethodField()

    class Meta:
        model = ProcessingRestriction
        fields = ["id", "subject", "subject_ref", "ground", "ground_label", "justification", "restricted_at",
                  "restricted_by", "in_force", "lifting"]
        read_only_fields = fields

    def _lifting(self, obj):
        try:
            return obj.lifting
        except RestrictionLifting.DoesNotExist:
            return None

    def get_in_force(self, obj) -> bool:
        return self._lifting(obj) is None

    @extend_schema_field(RestrictionLiftingSerializer(allow_null=True))
    def get_lifting(self, obj) -> dict | None:
        lifting = self._lifting(obj)
        return RestrictionLiftingSerializer(lifting).data if lifting is not None else None


class RestrictionInputSerializer(serializers.Serializer):
    """Documents the request body; the service validates it (and names the field it refuses)."""

    subject = serializers.CharField(help_text="The person's external identifier; pseudonymised on arrival, never stored.")
    ground = serializers.CharField(help_text=f"Art. 18(1)(a)-(d): {_GROUNDS}.")
    justification = serializers.CharField(help_text="Why, in the DPO's words; no identifier.")


class RestrictionLiftInputSerializer(serializers.Serializer):
    reason = serializers.CharField(help_text="Why the restriction ends.")
    informed_at = serializers.DateTimeField(
        help_text="When the person was told the restriction would be lifted (Art. 18(3)); not in the future.",
    )


class CompellingGroundsSerializer(serializers.ModelSerializer):
    class Meta:
        model = CompellingGrounds
        fields = ["justification", "recorded_at", "recorded_by"]
        read_only_fields = fields


class ObjectionSerializer(serializers.ModelSerializer):
    subject = serializers.CharField(source="subject.pseudonym", read_only=True, help_text="The person's pseudonym.")
    subject_ref = serializers.UUIDField(source="subject.reference", read_only=True)
    purpose = serializers.CharField(source="purpose.code", read_only=True)
    in_force = serializers.SerializerMethodField(
        help_text="True while the objection excludes the person: until compelling grounds are recorded, for ever "
        "for direct marketing.",
    )
    compelling_grounds = serializers.SerializerMethodField()

    class Meta:
        model = ProcessingObjection
        fields = ["id", "subject", "subject_ref", "purpose", "direct_marketing", "grounds", "objected_at",
                  "recorded_by", "in_force", "compelling_grounds"]
        read_only_fields = fields

    def _grounds(self, obj):
        try:
            return obj.compelling_grounds
        except CompellingGrounds.DoesNotExist:
            return None

    def get_in_force(self, obj) -> bool:
        return obj.direct_marketing or self._grounds(obj) is None

    @extend_schema_field(CompellingGroundsSerializer(allow_null=True))
    def get_compelling_grounds(self, obj) -> dict | None:
        grounds = self._grounds(obj)
        return CompellingGroundsSerializer(grounds).data if grounds is not None else None


class ObjectionInputSerializer(serializers.Serializer):
    subject = serializers.CharField(help_text="The person's external identifier; pseudonymised on arrival, never stored.")
    purpose = serializers.CharField(
        help_text="Purpose code objected to (covers its descendants). Its activities must rest on Art. 6(1)(e) or "
        "(f), or it is direct marketing (a code under `marketing`) on a basis other than consent.",
    )
    grounds = serializers.CharField(
        required=False, help_text="The person's grounds relating to their situation (Art. 21(1)); not needed against "
        "direct marketing.",
    )


class CompellingGroundsInputSerializer(serializers.Serializer):
    justification = serializers.CharField(
        help_text="The compelling legitimate grounds that override the person's interests (Art. 21(1)).",
    )


# --- Filters -------------------------------------------------------------------------


class RestrictionFilterSet(ApiFilterSet):
    subject = django_filters.CharFilter(field_name="subject__pseudonym", help_text="The person's pseudonym.")
    in_force = StrictBooleanFilter(method="filter_in_force", help_text="true: not lifted; false: lifted.")
    restricted_after = UTCIsoDateTimeFilter(field_name="restricted_at", lookup_expr="gte")
    restricted_before = UTCIsoDateTimeFilter(field_name="restricted_at", lookup_expr="lt")

    class Meta:
        model = ProcessingRestriction
        fields = ["ground"]

    def filter_in_force(self, queryset, name, value):
        lifted = Exists(RestrictionLifting.objects.filter(restriction=OuterRef("pk")))
        return queryset.filter(~lifted if value else lifted)


class ObjectionFilterSet(ApiFilterSet):
    subject = django_filters.CharFilter(field_name="subject__pseudonym", help_text="The person's pseudonym.")
    purpose = django_filters.CharFilter(field_name="purpose__code", help_text="Exact purpose code.")
    in_force = StrictBooleanFilter(method="filter_in_force", help_text="true: still excluding the person.")

    class Meta:
        model = ProcessingObjection
        fields = ["direct_marketing"]

    def filter_in_force(self, queryset, name, value):
        overridden = Exists(CompellingGrounds.objects.filter(objection=OuterRef("pk"))) & ~Exists(
            ProcessingObjection.objects.filter(pk=OuterRef("pk"), direct_marketing=True)
        )
        return queryset.filter(~overridden if value else overridden)


# --- Views ---------------------------------------------------------------------------


class RestrictionViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Restrictions of processing (Art. 18): while one holds, the person is left out of new
    snapshots and no run trains on a snapshot holding them; nothing is deleted."""

    queryset = ProcessingRestriction.objects.select_related("subject", "lifting").order_by("-restricted_at", "-id")
    serializer_class = RestrictionSerializer
    filterset_class = RestrictionFilterSet
    role_permissions = LIMIT_ROLES

    @extend_schema(
        request=RestrictionInputSerializer, responses={201: RestrictionSerializer},
        examples=[OpenApiExample("Accuracy contested", request_only=True, value={
            "subject": "patient-0001@demo.example", "ground": "18_1_a",
            "justification": "The person contests their recorded diagnosis; restricted while the ward verifies it.",
        })],
    )
    def create(self, request, *args, **kwargs):
        """Restrict a person (409 naming Art. 18 when already restricted)."""
        data = request.data if isinstance(request.data, dict) else {}
        restriction = services.processing_restriction_create(
            subject=data.get("subject"), ground=data.get("ground"), justification=data.get("justification"),
            actor=request.user,
        )
        return Response(self.get_serializer(self.get_queryset().get(pk=restriction.pk)).data,
                        status=status.HTTP_201_CREATED)

    @extend_schema(
        request=RestrictionLiftInputSerializer, responses={200: RestrictionSerializer},
        examples=[OpenApiExample("Verified and lifted", request_only=True, value={
            "reason": "The diagnosis was verified against the ward's records.", "informed_at": "2026-01-05T09:00:00Z",
        })],
    )
    @action(detail=True, methods=["post"])
    def lift(self, request, pk=None):
        """Lift the restriction; the person must have been informed before (Art. 18(3))."""
        restriction = self.get_object()
        data = request.data if isinstance(request.data, dict) else {}
        services.processing_restriction_lift(
            restriction=restriction, reason=data.get("reason"), informed_at=data.get("informed_at"),
            actor=request.user,
        )
        return Response(self.get_serializer(self.get_queryset().get(pk=restriction.pk)).data)


class ObjectionViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Objections to processing for a purpose (Art. 21): the person is left out of snapshots
    for the purpose from the moment of objection, unless the DPO records compelling grounds
    (never for direct marketing)."""

    queryset = ProcessingObjection.objects.select_related("subject", "purpose", "compelling_grounds").order_by(
        "-objected_at", "-id"
    )
    serializer_class = ObjectionSerializer
    filterset_class = ObjectionFilterSet
    role_permissions = LIMIT_ROLES

    @extend_schema(
        request=ObjectionInputSerializer, responses={201: ObjectionSerializer},
        examples=[OpenApiExample("Objection to product analytics", request_only=True, value={
            "subject": "patient-0001@demo.example", "purpose": "analytics.product",
            "grounds": "The person is a public figure and does not want their usage profiled.",
        })],
    )
    def create(self, request, *args, **kwargs):
        """Record an objection (400 naming `purpose` on a consent-based purpose: withdraw consent instead)."""
        data = request.data if isinstance(request.data, dict) else {}
        objection = services.processing_objection_create(
            subject=data.get("subject"), purpose=data.get("purpose"), grounds=data.get("grounds", ""),
            actor=request.user,
        )
        return Response(self.get_serializer(self.get_queryset().get(pk=objection.pk)).data,
                        status=status.HTTP_201_CREATED)

    @extend_schema(
        request=CompellingGroundsInputSerializer, responses={200: ObjectionSerializer},
        examples=[OpenApiExample("Fraud prevention", request_only=True, value={
            "justification": "Processing is needed to detect fraud against other customers; the DPIA of 2026-01 "
            "weighs it against the person's situation.",
        })],
    )
    @action(detail=True, methods=["post"], url_path="compelling-grounds")
    def compelling_grounds(self, request, pk=None):
        """Record compelling legitimate grounds (Art. 21(1)); 409 for direct marketing (Art. 21(3))."""
        objection = self.get_object()
        data = request.data if isinstance(request.data, dict) else {}
        services.processing_objection_compelling_grounds_record(
            objection=objection, justification=data.get("justification"), actor=request.user,
        )
        return Response(self.get_serializer(self.get_queryset().get(pk=objection.pk)).data)

