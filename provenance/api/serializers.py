from __future__ import annotations

from rest_framework import serializers

from governance.models import ProcessingActivity, Purpose
from provenance.models import Dataset, Snapshot, SnapshotAmendment


class DatasetSerializer(serializers.ModelSerializer):
    processing_activity = serializers.PrimaryKeyRelatedField(queryset=ProcessingActivity.objects.all())
    parents = serializers.PrimaryKeyRelatedField(many=True, queryset=Dataset.objects.all(), required=False)
    schema = serializers.JSONField(
        help_text='{"features": [{"name": "age", "type": "int"}, ...], "label": {"name": "outcome", "type": "bool"}}; '
        "types: float, int, bool, category (with optional 'categories'). Direct identifiers are refused (Art. 5(1)(c))."
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


class SnapshotAmendmentSerializer(serializers.ModelSerializer):
    class Meta:
        model = SnapshotAmendment
        fields = [
            "id", "reason", "erasure_request_id", "records_removed", "subjects_removed", "previous_root", "new_root",
            "created_at",
        ]


class SnapshotSerializer(serializers.ModelSerializer):
    purpose = serializers.SlugRelatedField(slug_field="code", read_only=True)
    requested_by = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)
    current_merkle_root = serializers.SerializerMethodField(help_text="Root of the current membership, after amendments.")
    amendments = SnapshotAmendmentSerializer(many=True, read_only=True)

    class Meta:
        model = Snapshot
        fields = [
            "id", "dataset", "purpose", "taken_for", "consent_known_at", "requested_by", "created_at", "completed_at",
            "lawful_basis",
            "compatibility", "included_count", "included_subjects", "excluded_counts", "merkle_root",
            "current_merkle_root", "amendments", "openlineage_run_id",
        ]
        read_only_fields = fields

    def get_current_merkle_root(self, obj: Snapshot) -> str:
        amendments = list(obj.amendments.all())
        return amendments[-1].new_root if amendments else obj.merkle_root


class SnapshotCreateSerializer(serializers.Serializer):
    dataset = serializers.PrimaryKeyRelatedField(queryset=Dataset.objects.select_related("processing_activity"))
    purpose = serializers.SlugRelatedField(slug_field="code", queryset=Purpose.objects.all(), help_text="Purpose code.")
    at = serializers.DateTimeField(required=False, allow_null=True, help_text="The moment T; defaults to now.")


class SubjectImpactRequestSerializer(serializers.Serializer):
    subject = serializers.CharField(help_text="The person's external identifier; pseudonymised before the lookup.")


class RetentionPurgeResultSerializer(serializers.Serializer):
    at = serializers.DateTimeField()
    records_deleted = serializers.IntegerField()
    datasets = serializers.IntegerField()
    snapshots_amended = serializers.IntegerField()
    activities = serializers.ListField(child=serializers.DictField())
