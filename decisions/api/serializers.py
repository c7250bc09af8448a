"""Serializers of the decisions API: the shapes of the answers (inputs are validated by the
services, which name the field at fault)."""

from __future__ import annotations

from rest_framework import serializers

from decisions.models import Decision, DecisionInputRetention, DecisionReview, ReviewChannel, ReviewOutcome


class PredictRequestSerializer(serializers.Serializer):
    rows = serializers.ListField(
        child=serializers.DictField(), min_length=1,
        help_text="1 to DECISION_MAX_ROWS (10,000) objects of feature values in the dataset's schema.",
    )
    subjects = serializers.ListField(
        child=serializers.CharField(allow_null=True), required=False,
        help_text="One identifier (or null) per row: the person decided about, pseudonymised on arrival, never stored.",
    )
    explain = serializers.BooleanField(
        required=False, help_text="Attributions and a counterfactual hint per row; default true for up to 100 rows.",
    )
    explain_method = serializers.ChoiceField(
        choices=["integrated_gradients", "shapley_value_sampling", "kernel_shap"], required=False,
        help_text="integrated_gradients (default, from the schema's baseline); the Shapley methods for small inputs "
                  "(at most 16 features and 100 rows).",
    )


class ContributionSerializer(serializers.Serializer):
    feature = serializers.CharField()
    contribution = serializers.FloatField()
    direction = serializers.ChoiceField(choices=["raises", "lowers"])


class CounterfactualSerializer(serializers.Serializer):
    feature = serializers.CharField()
    # "from" is a Python keyword: declared below, after the class.
    to = serializers.JSONField(help_text="The value that would flip the decision, in the dataset's units.")
    new_label_index = serializers.IntegerField()
    new_label = serializers.JSONField()


CounterfactualSerializer._declared_fields["from"] = serializers.JSONField(
    help_text="The row's value, in the dataset's units (a number or a category)."
)


class ExplanationSerializer(serializers.Serializer):
    method = serializers.CharField(required=False)
    target = serializers.JSONField(required=False, help_text="The class whose probability is explained.")
    output = serializers.FloatField(required=False, help_text="Its probability at the row (not shown to the person "
                                                              "when the output policy hides probabilities).")
    baseline_output = serializers.FloatField(required=False, help_text="Its probability at the baseline.")
    top_contributions = ContributionSerializer(many=True, required=False)
    convergence_delta = serializers.FloatField(required=False, allow_null=True)
    baseline_rule = serializers.CharField(required=False)
    counterfactual = CounterfactualSerializer(required=False, allow_null=True)
    withheld = serializers.BooleanField(required=False)
    reason = serializers.CharField(required=False)


class DecidedRowSerializer(serializers.Serializer):
    decision = serializers.IntegerField()
    output = serializers.JSONField(help_text="{label, probabilities?, confidence_band?} as the output policy allows.")
    explanation = ExplanationSerializer(allow_null=True)


class OutputPolicyShownSerializer(serializers.Serializer):
    kind = serializers.CharField()
    digits = serializers.IntegerField()
    source = serializers.CharField()
    attributions_withheld = serializers.BooleanField()
    withheld_because = serializers.CharField(allow_blank=True)


class PredictResponseSerializer(serializers.Serializer):
    model_version = serializers.IntegerField()
    batch = serializers.UUIDField()
    decided_at = serializers.DateTimeField()
    output_policy = OutputPolicyShownSerializer()
    inputs_kept_until = serializers.DateTimeField(allow_null=True)
    decisions = DecidedRowSerializer(many=True)


class DecisionSerializer(serializers.ModelSerializer):
    model_version = serializers.IntegerField(source="model_version_id")
    model = serializers.CharField(source="model_version.name")
    version = serializers.IntegerField(source="model_version.version")
    subject_given = serializers.SerializerMethodField(help_text="Whether a person was named (never who).")
    contested = serializers.BooleanField(read_only=True)

    class Meta:
        model = Decision
        fields = ["id", "model_version", "model", "version", "decided_at", "batch", "position", "outcome", "output",
                  "output_policy", "explanation", "attributions_withheld", "subject_given", "input_hash", "contested"]

    def get_subject_given(self, obj: Decision) -> bool:
        return bool(obj.subject_pseudonym)


class ContestSerializer(serializers.Serializer):
    reason = serializers.CharField(help_text="What the person contests and why.")
    channel = serializers.ChoiceField(choices=ReviewChannel.choices, required=False, default=ReviewChannel.API)
    received_at = serializers.DateTimeField(required=False, help_text="Defaults to now.")


class DecideSerializer(serializers.Serializer):
    outcome = serializers.ChoiceField(choices=ReviewOutcome.choices)
    reasons = serializers.CharField()
    new_output = serializers.DictField(required=False, help_text="{\"label\": …, \"note\"?: …} for 'changed'.")


class DecisionReviewSerializer(serializers.ModelSerializer):
    model_version = serializers.IntegerField(source="decision.model_version_id")
    decision_outcome = serializers.CharField(source="decision.outcome")
    reviewer = serializers.StringRelatedField(allow_null=True)
    requested_by = serializers.StringRelatedField(allow_null=True)

    class Meta:
        model = DecisionReview
        fields = ["id", "decision", "model_version", "decision_outcome", "status", "reason", "channel",
                  "requested_at", "requested_by", "due_at", "reviewer", "decided_at", "outcome", "reasons",
                  "new_output"]


class DecisionInputRetentionSerializer(serializers.ModelSerializer):
    set_by = serializers.StringRelatedField(allow_null=True)

    class Meta:
        model = DecisionInputRetention
        fields = ["id", "processing_activity", "days", "article", "reason", "set_by", "created_at"]


class DecisionInputRetentionSetSerializer(serializers.Serializer):
    processing_activity = serializers.IntegerField()
    days = serializers.IntegerField(min_value=0, max_value=3650, help_text="0: inputs not kept.")
    article = serializers.CharField(required=False, allow_blank=True, max_length=200)
    reason = serializers.CharField()


class DecisionLogRowSerializer(serializers.Serializer):
    model_version = serializers.IntegerField()
    day = serializers.DateField()
    outcome = serializers.CharField()
    decisions = serializers.IntegerField()


class DecisionLogSerializer(serializers.Serializer):
    retention_days = serializers.IntegerField()
    counts = DecisionLogRowSerializer(many=True)
