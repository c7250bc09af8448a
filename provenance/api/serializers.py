from __future__ import annotations

from rest_framework import serializers

from governance.models import ProcessingActivity, Purpose
from governance.roles import sees_erasure_detail
from provenance.models import AmendmentReason, Dataset, Snapshot, SnapshotAmendment


class DatasetSerializer(serializers.ModelSerializer):
    processing_activity = serializers.PrimaryKeyRelatedField(queryset=ProcessingActivity.objects.all())
    parents = serializers.PrimaryKeyRelatedField(many=True, queryset=Dataset.objects.all(), required=False)
    schema = serializers.JSONField(
        help_text='{"features": [{"name": "age", "type": "int"}, ...], "label": {"name": "outcome", "type": "bool"}}; '
        "types: float, int, bool, category (with optional 'categories'); numeric features may publish 'min' and 'max' "
        "(both or neither, min < max: values are clipped to them and scaled to [0, 1] for training); any feature may "
        "carry 'special_category': true (Art. 9(1)) and 'sensitive': true. Direct identifiers are refused (Art. 5(1)(c))."
    )
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)
    record_count = serializers.IntegerField(read_only=True)

    class Meta:
        model = Dataset
        fields = [
            "id", "name", "description", "owner", "processing_activity", "source_system", "schema", "parents",
            "transformation", "created_by", "created_at", "updated_at", "record_count",
        ]
        read_only_fields = ["created_by", "created_at", "updated_at", "record_count"]
        # Uniqueness is checked by the service, which names the field in its answer.
        extra_kwargs = {"name": {"validators": []}}


class RecordRowSerializer(serializers.Serializer):
    subject = serializers.CharField(help_text="The person's external identifier; pseudonymised on arrival, never stored.")
    features = serializers.DictField(help_text="One value per feature of the dataset's schema.")
    label = serializers.JSONField()


class RecordIngestResultSerializer(serializers.Serializer):
    dataset = serializers.IntegerField()
    records_created = serializers.IntegerField()
    subjects = serializers.IntegerField()
    ingested_at = serializers.DateTimeField()


# What ML engineers see as an amendment's reason: that members were removed, and when, but
# not why or by which request (issue 14): an erasure request id leads to a person.
MEMBERS_REMOVED = "members_removed"


def _sees_erasure_detail(context: dict) -> bool:
    """The DPO and the auditor see why data changed; everyone else that it changed."""
    request = context.get("request")
    return request is not None and sees_erasure_detail(request.user)


class SnapshotAmendmentSerializer(serializers.ModelSerializer):
    reason = serializers.ChoiceField(
        choices=[*AmendmentReason.values, MEMBERS_REMOVED], read_only=True,
        help_text=f"retention or erasure for the DPO and the auditor; {MEMBERS_REMOVED} for other roles.",
    )
    erasure_request_id = serializers.IntegerField(
        read_only=True, allow_null=True, help_text="The DPO's and the auditor's only; null for other roles."
    )

    class Meta:
        model = SnapshotAmendment
        fields = [
            "id", "reason", "erasure_request_id", "records_removed", "subjects_removed", "previous_root", "new_root",
            "created_at",
        ]

    def to_representation(self, instance):
        data = super().to_representation(instance)
        if not _sees_erasure_detail(self.context):
            data["reason"], data["erasure_request_id"] = MEMBERS_REMOVED, None
        return data


class SnapshotSerializer(serializers.ModelSerializer):
    purpose = serializers.SlugRelatedField(slug_field="code", read_only=True)
    requested_by = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)
    current_merkle_root = serializers.SerializerMethodField(help_text="Root of the current membership, after amendments.")
    trainable = serializers.BooleanField(
        read_only=True,
        help_text="False for a reconstruction (taken for a past moment): never trained on. A current snapshot "
        "is also re-checked against the consent ledger, restrictions (Art. 18) and objections (Art. 21) when a run "
        "is queued.",
    )
    amendments = SnapshotAmendmentSerializer(many=True, read_only=True)

    class Meta:
        model = Snapshot
        fields = [
            "id", "dataset", "purpose", "taken_for", "kind", "trainable", "consent_known_at", "requested_by",
            "created_at", "completed_at",
            "lawful_basis",
            "compatibility", "included_count", "included_subjects", "excluded_counts", "merkle_root",
            "current_merkle_root", "amendments", "openlineage_run_id",
        ]
        read_only_fields = fields
        extra_kwargs = {
            "excluded_counts": {
                "help_text": "Records left out, by reason (each counted under the first that applies): no_consent, "
                "withdrawn, expired (consent, Art. 7), retention_passed (Art. 5(1)(e)), restricted (the person's "
                "processing is restricted, Art. 18) and objected (the person objects to the purpose, Art. 21)."
            }
        }

    def get_current_merkle_root(self, obj: Snapshot) -> str:
        amendments = list(obj.amendments.all())
        return amendments[-1].new_root if amendments else obj.merkle_root


class SnapshotCreateSerializer(serializers.Serializer):
    dataset = serializers.PrimaryKeyRelatedField(queryset=Dataset.objects.select_related("processing_activity"))
    purpose = serializers.SlugRelatedField(slug_field="code", queryset=Purpose.objects.all(), help_text="Purpose code.")
    at = serializers.DateTimeField(
        required=False, allow_null=True,
        help_text="The moment T; defaults to now. More than 5 minutes in the past makes a reconstruction "
        "(what was lawful then), which is never trained on.",
    )


class SubjectImpactRequestSerializer(serializers.Serializer):
    subject = serializers.CharField(help_text="The person's external identifier; pseudonymised before the lookup.")


class RetentionPurgeResultSerializer(serializers.Serializer):
    at = serializers.DateTimeField()
    records_deleted = serializers.IntegerField()
    datasets = serializers.IntegerField()
    snapshots_amended = serializers.IntegerField()
    activities = serializers.ListField(child=serializers.DictField())
