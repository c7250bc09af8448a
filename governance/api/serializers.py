from rest_framework import serializers

from governance.models import AuditEvent


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


class WhoAmISerializer(serializers.Serializer):
    username = serializers.CharField()
    roles = serializers.ListField(child=serializers.CharField())
