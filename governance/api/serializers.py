from django.utils.duration import duration_iso_string
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from governance.models import (
    AuditEvent,
    ConsentAction,
    ConsentEvent,
    DataCategory,
    DataSubjectCategory,
    LawfulBasis,
    ProcessingActivity,
    Purpose,
    PurposeCompatibility,
    SpecialCategory,
    SpecialCategoryCondition,
)


class AuditEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = AuditEvent
        fields = ["position", "occurred_at", "actor", "action", "object_type", "object_id", "subject_ref", "details", "prev_hash", "hash"]


class AuditVerificationSerializer(serializers.Serializer):
    ok = serializers.BooleanField()
    checked = serializers.IntegerField()
    broken_position = serializers.IntegerField(allow_null=True)
    reason = serializers.CharField()
    head_hash = serializers.CharField()
    checkpoints = serializers.IntegerField(help_text="Signed checkpoints in the checkpoint file.")
    last_checkpoint_position = serializers.IntegerField(allow_null=True)
    problems = serializers.ListField(child=serializers.CharField(), help_text="Every problem found, first bad position first.")


class WhoAmISerializer(serializers.Serializer):
    username = serializers.CharField()
    roles = serializers.ListField(child=serializers.CharField())


# --- Governance records --------------------------------------------------------------




class PurposeSerializer(serializers.ModelSerializer):
    parent = serializers.SlugRelatedField(slug_field="code", read_only=True, allow_null=True)
    code = serializers.CharField(max_length=200, help_text="Dotted code; the parent (code minus last segment) must exist.")

    class Meta:
        model = Purpose
        fields = ["code", "name", "description", "parent", "created_at"]
        read_only_fields = ["parent", "created_at"]


class PurposeCompatibilitySerializer(serializers.ModelSerializer):
    original_purpose = serializers.SlugRelatedField(slug_field="code", queryset=Purpose.objects.all())
    compatible_purpose = serializers.SlugRelatedField(slug_field="code", queryset=Purpose.objects.all())
    approved_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = PurposeCompatibility
        fields = [
            "id", "original_purpose", "compatible_purpose", "link_between_purposes", "context_of_collection",
            "nature_of_data", "possible_consequences", "safeguards", "approved_by", "approved_at",
        ]
        read_only_fields = ["id", "approved_by", "approved_at"]
        # A duplicate is a conflict with the existing assessment (409), decided by the service.
        validators: list = []


class DataCategorySerializer(serializers.ModelSerializer):
    code = serializers.SlugField(max_length=100)
    special_category = serializers.ChoiceField(choices=SpecialCategory.choices, required=False, allow_blank=True)

    class Meta:
        model = DataCategory
        fields = ["code", "name", "description", "special_category", "criminal_offence_data", "is_special"]
        read_only_fields = ["is_special"]


class DataSubjectCategorySerializer(serializers.ModelSerializer):
    code = serializers.SlugField(max_length=100)

    class Meta:
        model = DataSubjectCategory
        fields = ["code", "name", "description", "vulnerable"]


class IsoDurationField(serializers.DurationField):
    """A duration in ISO 8601 (e.g. ``P365D``); Django's other duration formats are accepted too."""

    def to_representation(self, value):
        return duration_iso_string(value)


class RetentionRuleSerializer(serializers.Serializer):
    data_category = serializers.SlugRelatedField(slug_field="code", queryset=DataCategory.objects.all())
    retention = IsoDurationField(help_text="ISO 8601 duration, e.g. P365D (Art. 30(1)(f)).")


class RecipientSerializer(serializers.Serializer):
    name = serializers.CharField()
    third_country = serializers.CharField(required=False, allow_blank=True)


class TransferSerializer(serializers.Serializer):
    country = serializers.CharField()
    safeguard = serializers.CharField(help_text="Art. 46 safeguard or Art. 45 adequacy decision.")


def _require_whole(items: list[dict], field: str, keys: tuple[str, ...]) -> list[dict]:
    # PATCH makes a nested serializer's fields optional as well, yet a list item replaces the
    # stored list whole, so each item must still carry every required key.
    for index, item in enumerate(items):
        for key in keys:
            if key not in item:
                raise serializers.ValidationError(f"{field}[{index}].{key}: this field is required.")
    return items


class ProcessingActivitySerializer(serializers.ModelSerializer):
    """One Art. 30(1) record. Article-specific rules are checked by the service."""

    purposes = serializers.SlugRelatedField(slug_field="code", many=True, queryset=Purpose.objects.all(), required=False)
    data_subject_categories = serializers.SlugRelatedField(
        slug_field="code", many=True, queryset=DataSubjectCategory.objects.all(), required=False
    )
    retention = RetentionRuleSerializer(many=True, required=False, source="retention_rules")
    recipients = RecipientSerializer(many=True, required=False)
    third_country_transfers = TransferSerializer(many=True, required=False)
    lawful_basis = serializers.ChoiceField(choices=LawfulBasis.choices, required=False)
    special_category_condition = serializers.ChoiceField(
        choices=SpecialCategoryCondition.choices, required=False, allow_blank=True
    )

    class Meta:
        model = ProcessingActivity
        fields = [
            "id", "name", "description", "controller_name", "controller_contact", "joint_controller",
            "representative", "dpo_contact", "purposes", "data_subject_categories", "retention", "recipients",
            "third_country_transfers", "security_measures", "lawful_basis", "special_category_condition",
            "legitimate_interests_assessment", "controller_is_public_authority", "erasure_on_consent_withdrawal",
            "created_at", "updated_at",
        ]
        read_only_fields = ["id", "created_at", "updated_at"]
        extra_kwargs = {
            f: {"required": False, "allow_blank": True}
            for f in ("name", "controller_name", "controller_contact", "dpo_contact", "security_measures")
        }
        # The name's uniqueness is checked by the service, inside its transaction.
        validators: list = []

    def get_fields(self):
        fields = super().get_fields()
        fields["name"].validators = [v for v in fields["name"].validators if "Unique" not in type(v).__name__]
        return fields

    def validate_retention(self, rules):
        seen = set()
        _require_whole(rules, "retention", ("data_category", "retention"))
        for index, rule in enumerate(rules):
            code = rule["data_category"].code
            if code in seen:
                raise serializers.ValidationError(f"retention[{index}]: {code!r} appears twice.")
            seen.add(code)
        return rules

    def validate_recipients(self, recipients):
        return _require_whole(recipients, "recipients", ("name",))

    def validate_third_country_transfers(self, transfers):
        return _require_whole(transfers, "third_country_transfers", ("country", "safeguard"))

    def to_service_kwargs(self) -> dict:
        data = dict(self.validated_data)
        if "retention_rules" in data:
            data["retention"] = {r["data_category"]: r["retention"] for r in data.pop("retention_rules")}
        for key in ("recipients", "third_country_transfers"):
            if key in data:
                data[key] = [dict(item) for item in data[key]]
        return data


class ConsentEventSerializer(serializers.ModelSerializer):
    """A ledger row as shown to DPOs and auditors: the subject by pseudonym only."""

    subject = serializers.CharField(source="subject.pseudonym", read_only=True)
    purpose = serializers.CharField(source="purpose.code", read_only=True)

    class Meta:
        model = ConsentEvent
        fields = [
            "event_id", "subject", "purpose", "action", "occurred_at", "recorded_at", "notice_version",
            "notice_sha256", "method", "evidence", "expires_at",
        ]
        read_only_fields = fields


class ConsentEvidenceSerializer(serializers.Serializer):
    """How consent was given; these keys only. Every value is decoded (percent-encoding, HTML
    entities, NFKC, invisible characters) before the scan for identifiers, which refuses it."""

    form_url = serializers.CharField(
        required=False, max_length=1000,
        help_text="http(s) URL of the form. Stored without its query string and fragment; refused if any part holds "
        "an e-mail address or the person's identifier, or names a user before the host.",
    )
    ip = serializers.CharField(
        required=False, max_length=100,
        help_text="IPv4 or IPv6 address; truncated on arrival: last IPv4 octet / last 80 IPv6 bits zeroed.",
    )
    user_agent = serializers.CharField(required=False, max_length=1000, help_text="No control characters.")
    source_system = serializers.CharField(
        required=False, max_length=100, help_text="Name of the system: letters, digits, spaces and . _ : / -.",
    )
    note = serializers.CharField(
        required=False, max_length=1000,
        help_text="Free text; refused if it holds an e-mail address, a phone number or the person's identifier.",
    )


class ConsentEventInputSerializer(serializers.Serializer):
    """One submitted consent event (documentation of the request body; validated by the service)."""

    event_id = serializers.CharField(required=False, help_text="Idempotency key; derived from the content if absent.")
    subject = serializers.CharField(help_text="The person's external identifier; pseudonymised on arrival, never stored.")
    purpose = serializers.CharField(help_text="Purpose code, e.g. ml.training.clinical_risk.")
    action = serializers.ChoiceField(choices=ConsentAction.choices)
    occurred_at = serializers.DateTimeField(help_text="When the person acted; not in the future; with a time zone.")
    notice_version = serializers.CharField()
    notice_text = serializers.CharField(required=False, help_text="The notice shown; only its SHA-256 is stored.")
    notice_sha256 = serializers.CharField(required=False, help_text="SHA-256 of the notice text, if the text is not sent.")
    method = serializers.CharField(help_text="Channel, e.g. web_form, paper, app.")
    evidence = ConsentEvidenceSerializer(required=False)
    expires_at = serializers.DateTimeField(required=False, allow_null=True)


class ConsentIngestResultSerializer(serializers.Serializer):
    created = serializers.IntegerField()
    already_present = serializers.IntegerField()
    withdrawals_under_erasure_on_withdrawal = serializers.IntegerField(
        required=False,
        help_text="New withdrawals under an activity that erases on withdrawal: an Art. 17(1)(b) erasure request "
        "is opened for each person once the batch is committed (see GET /api/v1/erasure-requests/).",
    )
    evidence_urls_trimmed = serializers.IntegerField(
        required=False,
        help_text="Events whose evidence.form_url was stored without its query string or fragment.",
    )


_POSITIONS = {"type": "array", "items": {"type": "integer"}}


@extend_schema_field({"oneOf": [
    {"type": "object", "additionalProperties": _POSITIONS, "description": "The DPO's answer: by reason."},
    {**_POSITIONS, "description": "Other roles' answer: one list, no reasons."},
]})
class ConsentStatusRefusedField(serializers.JSONField):
    """Positions by reason (the DPO) or one list (other roles)."""


class ConsentStatusRequestSerializer(serializers.Serializer):
    purpose = serializers.CharField()
    at = serializers.DateTimeField(
        required=False,
        help_text="Default: now. DPO only for any other moment: other roles may give now (within 5 minutes) "
        "and are answered as of the server's now; a moment further off is 400.",
    )
    known_at = serializers.DateTimeField(
        required=False,
        help_text="DPO only (400 for other roles). Count only consent events recorded at or before this moment "
        "(the ledger as it stood then). "
        "A snapshot's membership is the answer for its taken_for as `at` and the moment it read the ledger "
        "(its taken_for when taken for now; consent_known_at in its audit event) as `known_at`. Default: "
        "every event recorded so far.",
    )
    subjects = serializers.ListField(
        child=serializers.CharField(),
        help_text="External identifiers, up to 100,000 (more is 400 naming the limit); pseudonymised on arrival.",
    )


class ConsentStatusResponseSerializer(serializers.Serializer):
    purpose = serializers.CharField()
    at = serializers.DateTimeField()
    known_at = serializers.DateTimeField(required=False, help_text="Echoed when the request gave one.")
    consent_required = serializers.BooleanField()
    lawful_bases = serializers.DictField(child=serializers.ListField(child=serializers.CharField()))
    detail = serializers.CharField()
    counts = serializers.DictField(
        child=serializers.IntegerField(),
        help_text="The DPO: per state (valid, withdrawn, expired, no_consent); other roles: allowed and refused.",
    )
    allowed = serializers.ListField(child=serializers.IntegerField(), help_text="Positions in `subjects` that may be processed.")
    refused = ConsentStatusRefusedField(
        help_text="The DPO: positions in `subjects` by reason (no_consent, withdrawn, expired). Other roles: "
        "one ascending list of the positions that may not be processed, without reasons.",
    )
