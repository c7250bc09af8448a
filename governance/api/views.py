from dataclasses import asdict
from datetime import timedelta

from django.utils import timezone
from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response
from rest_framework.views import APIView

from governance import filtersets, selectors, services
from governance.api import serializers
from governance.audit_anchor import audit_chain_anchored_verify
from governance.models import (
    AuditEvent,
    ConsentEvent,
    DataCategory,
    DataSubjectCategory,
    ProcessingActivity,
    Purpose,
    PurposeCompatibility,
)
from governance.moments import UTCIsoDateTimeFilter
from governance.permissions import DPO_AND_AUDITOR, DPO_ONLY, READ_ROLES
from governance.pseudonymisation import pseudonymise_many
from governance.roles import DPO, has_role, roles_of


class AuditEventFilterSet(filtersets.ApiFilterSet):
    occurred_after = UTCIsoDateTimeFilter(field_name="occurred_at", lookup_expr="gte")
    occurred_before = UTCIsoDateTimeFilter(field_name="occurred_at", lookup_expr="lt")

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
        """Recompute the hash chain, check it against the signed checkpoints, and report the first bad position."""
        result = audit_chain_anchored_verify()
        return Response(serializers.AuditVerificationSerializer(asdict(result)).data)


class WhoAmIView(APIView):
    """Who the credentials belong to and which roles they carry."""

    role_permissions = {"default": READ_ROLES}

    @extend_schema(responses=serializers.WhoAmISerializer)
    def get(self, request):
        return Response({"username": request.user.get_username(), "roles": sorted(roles_of(request.user))})


# --- Governance records --------------------------------------------------------------


GOVERNANCE_RECORD_ROLES = {"read": READ_ROLES, "write": DPO_ONLY}


class _ListCreateRetrieve(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Records that are created through a service and never deleted: consent events and
    activities refer to them, and the audit chain names them. Each subclass defines
    ``perform_service_create(serializer)``, which calls its service and returns the record."""

    role_permissions = GOVERNANCE_RECORD_ROLES
    lookup_field = "code"
    lookup_value_regex = "[^/]+"

    def create(self, request, *args, **kwargs):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        instance = self.perform_service_create(serializer)
        return Response(self.get_serializer(instance).data, status=status.HTTP_201_CREATED)


@extend_schema(
    examples=[
        OpenApiExample(
            "Create a purpose under ml.training",
            value={"code": "ml.training.readmission", "name": "Readmission model training", "description": ""},
            request_only=True,
        )
    ]
)
class PurposeViewSet(_ListCreateRetrieve):
    """Purposes (Art. 5(1)(b)); a purpose covers its dotted descendants."""

    queryset = Purpose.objects.select_related("parent").order_by("code")
    serializer_class = serializers.PurposeSerializer
    filterset_class = filtersets.PurposeFilterSet

    def perform_service_create(self, serializer):
        return services.purpose_create(actor=self.request.user, **serializer.validated_data)


@extend_schema(
    examples=[
        OpenApiExample(
            "Declare evaluation compatible with training (Art. 6(4))",
            value={
                "original_purpose": "ml.training", "compatible_purpose": "ml.evaluation",
                "link_between_purposes": "Evaluation measures the model trained for the original purpose.",
                "context_of_collection": "Collected from patients in care; they expect quality checks.",
                "nature_of_data": "Health data (Art. 9): pseudonymised, no new categories.",
                "possible_consequences": "No decision about a person is taken during evaluation.",
                "safeguards": "Pseudonymisation, access limited to the ML team, no export.",
            },
            request_only=True,
        )
    ]
)
class PurposeCompatibilityViewSet(_ListCreateRetrieve):
    """Art. 6(4) compatibility assessments; declared by a DPO with all five factors."""

    queryset = PurposeCompatibility.objects.select_related("original_purpose", "compatible_purpose", "approved_by")
    serializer_class = serializers.PurposeCompatibilitySerializer
    filterset_class = filtersets.PurposeCompatibilityFilterSet
    lookup_field = "pk"
    lookup_value_regex = "[0-9]+"

    def perform_service_create(self, serializer):
        return services.purpose_compatibility_declare(
            approved_by=self.request.user, actor=self.request.user, **serializer.validated_data
        )


class DataCategoryViewSet(_ListCreateRetrieve):
    """Categories of personal data; Art. 9(1) special categories and Art. 10 data flagged."""

    queryset = DataCategory.objects.order_by("code")
    serializer_class = serializers.DataCategorySerializer
    filterset_class = filtersets.DataCategoryFilterSet

    def perform_service_create(self, serializer):
        return services.data_category_create(actor=self.request.user, **serializer.validated_data)


class DataSubjectCategoryViewSet(_ListCreateRetrieve):
    """Categories of data subjects (Art. 30(1)(c))."""

    queryset = DataSubjectCategory.objects.order_by("code")
    serializer_class = serializers.DataSubjectCategorySerializer
    filterset_class = filtersets.DataSubjectCategoryFilterSet

    def perform_service_create(self, serializer):
        return services.data_subject_category_create(actor=self.request.user, **serializer.validated_data)


_ACTIVITY_EXAMPLE = {
    "name": "Clinical risk model training",
    "controller_name": "Example Hospital NHS Trust",
    "controller_contact": "privacy@hospital.example",
    "dpo_contact": "dpo@hospital.example",
    "purposes": ["ml.training.clinical_risk"],
    "data_subject_categories": ["patient"],
    "retention": [{"data_category": "health", "retention": "P1825D"}, {"data_category": "demographic", "retention": "P365D"}],
    "recipients": [{"name": "Cloud GPU provider", "third_country": ""}],
    "third_country_transfers": [],
    "security_measures": "Pseudonymisation on arrival, encryption at rest, role-based access, audit chain.",
    "lawful_basis": "consent",
    "special_category_condition": "9_2_a",
}


@extend_schema(
    examples=[OpenApiExample("Health data under explicit consent", value=_ACTIVITY_EXAMPLE, request_only=True)]
)
class ProcessingActivityViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, mixins.UpdateModelMixin,
    viewsets.GenericViewSet,
):
    """Art. 30(1) records of processing activities. PATCH changes are audited with a diff."""

    queryset = ProcessingActivity.objects.prefetch_related(
        "purposes", "data_subject_categories", "retention_rules__data_category"
    ).order_by("name")
    serializer_class = serializers.ProcessingActivitySerializer
    filterset_class = filtersets.ProcessingActivityFilterSet
    role_permissions = GOVERNANCE_RECORD_ROLES
    # PUT would replace the whole record; PATCH names what changes, which is what the audit diff records.
    http_method_names = ["get", "post", "patch", "head", "options"]

    def create(self, request, *args, **kwargs):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        kwargs = serializer.to_service_kwargs()
        activity = services.processing_activity_create(
            actor=request.user,
            purposes=kwargs.pop("purposes", []),
            data_subject_categories=kwargs.pop("data_subject_categories", []),
            retention=kwargs.pop("retention", {}),
            **kwargs,
        )
        return Response(self.get_serializer(self.get_queryset().get(pk=activity.pk)).data, status=status.HTTP_201_CREATED)

    def partial_update(self, request, *args, **kwargs):
        activity = self.get_object()
        serializer = self.get_serializer(activity, data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        activity = services.processing_activity_update(activity=activity, actor=request.user, **serializer.to_service_kwargs())
        return Response(self.get_serializer(self.get_queryset().get(pk=activity.pk)).data)


_CONSENT_EXAMPLE = {
    "event_id": "crm-7f3a9c21",
    "subject": "patient-0001@demo.example",
    "purpose": "ml.training.clinical_risk",
    "action": "given",
    "occurred_at": "2025-03-01T10:15:00Z",
    "notice_version": "clinical-ml-v3",
    "notice_text": "We would like to use your health records to train a model that predicts clinical risk...",
    "method": "web_form",
    "evidence": {
        "form_url": "https://portal.hospital.example/consent/ml",
        "ip": "203.0.113.57",
        "user_agent": "Mozilla/5.0",
        "source_system": "patient-portal",
    },
    "expires_at": "2027-03-01T00:00:00Z",
}


class ConsentEventViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """The append-only consent ledger (Art. 7): events are added, never changed or removed."""

    queryset = ConsentEvent.objects.select_related("subject", "purpose").order_by("occurred_at", "id")
    serializer_class = serializers.ConsentEventSerializer
    filterset_class = filtersets.ConsentEventFilterSet
    lookup_field = "event_id"
    lookup_value_regex = "[^/]+"
    # Evidence and pseudonyms are for the DPO and auditors; ML engineers ask consent-status instead.
    role_permissions = {"read": DPO_AND_AUDITOR, "write": DPO_ONLY}

    @extend_schema(
        request=serializers.ConsentEventInputSerializer(many=True),
        responses={201: serializers.ConsentIngestResultSerializer, 200: serializers.ConsentIngestResultSerializer},
        examples=[
            OpenApiExample("One event", value=_CONSENT_EXAMPLE, request_only=True),
            OpenApiExample(
                "A batch (up to 10,000)",
                value=[_CONSENT_EXAMPLE, {**_CONSENT_EXAMPLE, "event_id": "crm-7f3a9c22", "action": "withdrawn",
                                          "occurred_at": "2025-06-01T08:00:00Z", "expires_at": None}],
                request_only=True,
            ),
            OpenApiExample("Answer", value={"created": 1, "already_present": 1}, response_only=True),
        ],
    )
    def create(self, request, *args, **kwargs):
        """Append one event or a list of up to 10,000, all or nothing; resubmission is harmless."""
        result = services.consent_events_ingest(events=request.data, actor=request.user)
        return Response(result, status=status.HTTP_201_CREATED if result["created"] else status.HTTP_200_OK)


# A 1,000,000-identifier request peaked near 1 GiB in the web worker (issue 14): bounded,
# and the identifiers are pseudonymised and loaded in chunks (governance.selectors).
MAX_STATUS_SUBJECTS = 100_000
# Checked before the body is parsed: parsing 1,000,000 identifiers only to refuse them cost
# about 150 MB. 100,000 identifiers of up to ~160 characters fit.
MAX_STATUS_BODY_BYTES = 16 * 1024 * 1024
# How far from the server's now a non-DPO's ``at`` may lie (clock skew); it is answered as of now.
STATUS_CLOCK_SKEW = timedelta(minutes=5)


def _pseudonyms_in_chunks(identifiers: list[str]):
    from governance.selectors import CONSENT_STATUS_CHUNK

    for start in range(0, len(identifiers), CONSENT_STATUS_CHUNK):
        yield from pseudonymise_many(identifiers[start:start + CONSENT_STATUS_CHUNK])


class ConsentStatusView(APIView):
    """Which of these people may be processed for a purpose now (the DPO: at any time, and why not).

    The DPO's answer gives the reason per person and may ask about a past ``at`` or the
    ledger as known at ``known_at``. Other roles are told only who may be processed now:
    allowed positions and one refused list, no reasons, no other moment (bisecting ``at``
    would date a person's withdrawal).
    """

    role_permissions = {"default": READ_ROLES}

    @extend_schema(
        request=serializers.ConsentStatusRequestSerializer,
        responses=serializers.ConsentStatusResponseSerializer,
        examples=[
            OpenApiExample(
                "Ask about three people",
                value={"purpose": "ml.training.clinical_risk", "at": "2025-09-01T00:00:00Z",
                       "subjects": ["patient-0001@demo.example", "patient-0002@demo.example", "patient-0003@demo.example"]},
                request_only=True,
            ),
            OpenApiExample(
                "Answer",
                value={"purpose": "ml.training.clinical_risk", "at": "2025-09-01T00:00:00Z", "consent_required": True,
                       "lawful_bases": {"consent": ["Clinical risk model training"]},
                       "detail": "1 of 3 may be processed under consent.",
                       "counts": {"valid": 1, "withdrawn": 1, "expired": 0, "no_consent": 1},
                       "allowed": [0], "refused": {"withdrawn": [2], "expired": [], "no_consent": [1]}},
                response_only=True,
            ),
            OpenApiExample(
                "Answer to an ml_engineer or auditor (now only, no reasons)",
                value={"purpose": "ml.training.clinical_risk", "at": "2026-12-01T16:00:00Z", "consent_required": True,
                       "lawful_bases": {"consent": ["Clinical risk model training"]},
                       "detail": "1 of 3 may be processed under consent.",
                       "counts": {"allowed": 1, "refused": 2}, "allowed": [0], "refused": [1, 2]},
                response_only=True,
            ),
        ],
    )
    def post(self, request):
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > MAX_STATUS_BODY_BYTES:
            raise services.ServiceError(
                f"The request body is {length:,} bytes; at most {MAX_STATUS_BODY_BYTES:,} bytes "
                f"(and {MAX_STATUS_SUBJECTS:,} subjects) per request. Split the list into several requests.",
                field="subjects",
            )
        if not isinstance(request.data, dict):
            raise services.ServiceError("Expected a JSON object with purpose, at and subjects.", field="non_field_errors")
        data = request.data
        code = data.get("purpose")
        if not isinstance(code, str) or not code:
            raise services.ServiceError("A purpose code is required.", field="purpose")
        purpose = Purpose.objects.filter(code=code).first()
        if purpose is None:
            raise services.ServiceError(f"Unknown purpose code {code!r}.", field="purpose")
        at = None
        if data.get("at") not in (None, ""):
            if not isinstance(data["at"], str):
                raise services.ServiceError("Not an ISO 8601 date-time, e.g. 2025-09-01T00:00:00Z.", field="at")
            at = services.moment_for_field(data["at"], field="at", recorded=False)
        known_at = None
        if data.get("known_at") not in (None, ""):
            # The ledger as a snapshot that read it then saw it (its taken_for, or the
            # consent_known_at of its audit event): the answer its membership reproduces.
            if not isinstance(data["known_at"], str):
                raise services.ServiceError("Not an ISO 8601 date-time, e.g. 2025-09-01T00:00:00Z.", field="known_at")
            known_at = services.moment_for_field(data["known_at"], field="known_at", recorded=False)
        dpo = has_role(request.user, DPO)
        if not dpo:
            if known_at is not None:
                raise services.ServiceError(
                    "Only the DPO may ask about the ledger as it stood at an earlier moment; omit known_at.",
                    field="known_at",
                )
            if at is not None and abs(at - timezone.now()) > STATUS_CLOCK_SKEW:
                raise services.ServiceError(
                    "Only the DPO may ask about a moment other than now; omit at (the answer is as of now).",
                    field="at",
                )
            at = None  # answered as of the server's now, whatever the caller's clock says
        subjects = data.get("subjects")
        if not isinstance(subjects, list):
            raise services.ServiceError("A list of external identifiers is required.", field="subjects")
        if len(subjects) > MAX_STATUS_SUBJECTS:
            raise services.ServiceError(
                f"At most {MAX_STATUS_SUBJECTS:,} subjects per request; this one has {len(subjects):,}. "
                "Split the list into several requests.",
                field="subjects",
            )
        bad = next((i for i, s in enumerate(subjects) if not isinstance(s, str) or not s.strip()), None)
        if bad is not None:
            raise services.ServiceError("Expected a non-empty string identifier.", field=f"subjects[{bad}]")
        result = selectors.consent_status_bulk(
            purpose=purpose, pseudonyms=_pseudonyms_in_chunks(subjects), at=at, known_at=known_at
        )
        body = {
            "purpose": result.purpose,
            "at": result.at.isoformat(),
            "consent_required": result.consent_required,
            "lawful_bases": result.lawful_bases,
        }
        if known_at is not None:
            body["known_at"] = known_at.isoformat()
        if not result.consent_required:
            bases = ", ".join(sorted(result.lawful_bases))
            body["detail"] = (
                f"Consent is not the lawful basis for {purpose.code}: its processing activities rely on {bases} "
                "(Art. 6(1)); consent does not decide who may be processed."
            )
            return Response(body)
        states = result.indices_by_state
        body["detail"] = f"{len(states['valid'])} of {len(subjects)} may be processed under consent."
        if not result.lawful_bases:
            body["detail"] += f" No processing activity (Art. 30) records purpose {purpose.code} yet."
        body["allowed"] = states["valid"]
        if not dpo:
            refused = sorted(i for state in ("no_consent", "withdrawn", "expired") for i in states[state])
            body["counts"] = {"allowed": len(states["valid"]), "refused": len(refused)}
            body["refused"] = refused
            return Response(body)
        body["counts"] = {state: len(indices) for state, indices in states.items()}
        body["refused"] = {state: states[state] for state in ("no_consent", "withdrawn", "expired")}
        return Response(body)
