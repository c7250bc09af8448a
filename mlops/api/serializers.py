"""Serializers of the MLOps API: training requests, runs, model versions, budgets."""

from __future__ import annotations

import math
from datetime import datetime

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from governance.api.fields import PositiveFloatField
from governance.models import ProcessingActivity
from governance.roles import sees_audit_records, sees_erasure_detail
from mlops import display as mlops_display
from mlops.engine.accounting import MAX_SIGMA, MAX_TARGET_DELTA, MAX_TARGET_EPSILON
from mlops.engine.spec import MAX_HIDDEN_LAYERS, MAX_HIDDEN_WIDTH
from mlops.models import (
    Accountant,
    AttributeInferenceAudit,
    AuditPolicy,
    CanaryAudit,
    Executor,
    MembershipInferenceAudit,
    ModelOutputPolicy,
    ModelStatus,
    ModelVersion,
    Optimizer,
    OutputPolicyKind,
    PrivacyAuditJob,
    RectificationAction,
    RectificationPolicy,
    TaskType,
    TrainingRun,
    UnlearningCheck,
)
from mlops.selectors import model_lineage_summary, model_status_reason_shown, model_version_reproducibility
from mlops.services.config import MAX_SISA_SHARDS, MAX_SISA_SLICES
from provenance.models import Dataset, SnapshotAmendment

# The largest values PostgreSQL's integer and bigint columns hold: a body field bounded by
# them is refused with its name instead of reaching the database ("integer out of range").
DB_INTEGER_MAX = 2**31 - 1
DB_BIGINT_MAX = 2**63 - 1


class FiniteFloatField(serializers.FloatField):
    """A float that is null when infinite (JSON has no ∞; ε = ∞ means non-private), or not
    yet known (a queued run has no ε): nullable in the schema too, so a generated client
    accepts the null it will receive."""

    def __init__(self, **kwargs):
        kwargs.setdefault("allow_null", True)
        super().__init__(**kwargs)

    def to_representation(self, value):
        value = super().to_representation(value)
        return value if value is not None and math.isfinite(value) else None


class ModelSpecSerializer(serializers.Serializer):
    hidden_sizes = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=MAX_HIDDEN_WIDTH), required=False,
        max_length=MAX_HIDDEN_LAYERS,
    )
    activation = serializers.ChoiceField(choices=["relu", "tanh", "gelu"], required=False)
    dropout = serializers.FloatField(required=False, min_value=0.0, max_value=0.999)


class SisaSerializer(serializers.Serializer):
    shards = serializers.IntegerField(min_value=1, max_value=MAX_SISA_SHARDS)
    slices = serializers.IntegerField(min_value=1, max_value=MAX_SISA_SLICES)


class TrainingRunRequestSerializer(serializers.Serializer):
    """A training request: a snapshot, or a dataset and a purpose to snapshot now."""

    snapshot = serializers.IntegerField(
        required=False, min_value=1, max_value=DB_BIGINT_MAX, help_text="Id of a consent-filtered snapshot."
    )
    dataset = serializers.IntegerField(
        required=False, min_value=1, max_value=DB_BIGINT_MAX, help_text="With purpose: take a snapshot at queue time."
    )
    purpose = serializers.CharField(required=False, help_text="Purpose code, e.g. ml.training.credit_risk.")
    name = serializers.CharField(required=False, allow_blank=True, max_length=200)
    task = serializers.ChoiceField(choices=TaskType.choices, default=TaskType.BINARY)
    model_spec = ModelSpecSerializer(required=False)
    optimizer = serializers.ChoiceField(choices=Optimizer.choices, default=Optimizer.SGD)
    learning_rate = serializers.FloatField(default=0.1)
    epochs = serializers.IntegerField(default=5, min_value=1, max_value=1000)
    batch_size = serializers.IntegerField(default=256, min_value=1, max_value=DB_INTEGER_MAX)
    seed = serializers.IntegerField(default=0, min_value=0, max_value=DB_INTEGER_MAX)
    validation_split = serializers.FloatField(default=0.1)
    holdout_fraction = serializers.FloatField(default=0.2)
    target_epsilon = PositiveFloatField(
        required=False, allow_null=True, max_value=MAX_TARGET_EPSILON,
        help_text=f"ε to reach, above 0 and at most {MAX_TARGET_EPSILON:g}.",
    )
    noise_multiplier = PositiveFloatField(
        required=False, allow_null=True, max_value=MAX_SIGMA,
        help_text=f"σ instead of a target ε, above 0 and at most {MAX_SIGMA:g}; the ε it gives must not exceed "
                  f"{MAX_TARGET_EPSILON:g}.",
    )
    target_delta = PositiveFloatField(
        required=False, allow_null=True, max_value=MAX_TARGET_DELTA,
        help_text=f"δ, above 0, at most {MAX_TARGET_DELTA:g} and below 1/N of the training set "
                  "(default min(1e-5, 0.1/N)).",
    )
    max_grad_norm = serializers.FloatField(default=1.0)
    accountant = serializers.ChoiceField(choices=Accountant.choices, default=Accountant.RDP)
    allow_non_private = serializers.BooleanField(default=False)
    release_training_metrics = serializers.BooleanField(
        default=True,
        help_text="false: release no figure computed on the training data (per-epoch loss and train accuracy are "
        "null in epoch_metrics, progress and the model's metrics), since those are outside ε; validation figures only.",
    )
    sisa = SisaSerializer(required=False, allow_null=True)
    executor = serializers.ChoiceField(
        choices=Executor.choices, default=Executor.INTERNAL,
        help_text="external: you train (Opacus, anywhere) on the exported snapshot and report the accountant "
        "history; the answer (201) carries the run token, shown once.",
    )
    description = serializers.CharField(
        required=False, allow_blank=True, max_length=2000, help_text="External runs: free text about the model."
    )
    remediates = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, max_value=DB_BIGINT_MAX,
        help_text="External runs: the id of the external model version this run retrains (e.g. after an erasure).",
    )

    def validate(self, attrs):
        initial = self.initial_data if isinstance(self.initial_data, dict) else {}
        if attrs.get("executor") == Executor.EXTERNAL:
            # What the ledger's own engine needs has no meaning for a model trained elsewhere:
            # refused rather than silently ignored, so a client learns it was not applied.
            for field in EXTERNAL_REFUSED_FIELDS:
                if field in initial:
                    raise serializers.ValidationError({field: ["Not taken by an external run (executor: external)."]})
        else:
            for field in ("description", "remediates"):
                if field in initial:
                    raise serializers.ValidationError({field: ["Only for an external run (executor: external)."]})
        if attrs.get("snapshot") is None and attrs.get("dataset") is None:
            raise serializers.ValidationError({"snapshot": ["Give a snapshot, or a dataset and a purpose."]})
        if attrs.get("snapshot") is not None and attrs.get("dataset") is not None:
            raise serializers.ValidationError({"dataset": ["Give either a snapshot or a dataset, not both."]})
        if not attrs.get("allow_non_private") and attrs.get("target_epsilon") is None and attrs.get("noise_multiplier") is None:
            raise serializers.ValidationError(
                {"target_epsilon": ["Give target_epsilon or noise_multiplier (or allow_non_private: true)."]}
            )
        return attrs


# Fields of the internal engine (model, optimiser, splits, SISA) an external run refuses.
EXTERNAL_REFUSED_FIELDS = (
    "task", "model_spec", "optimizer", "learning_rate", "seed", "validation_split", "holdout_fraction",
    "release_training_metrics", "sisa",
)


def _sees_erasure_detail(context: dict) -> bool:
    """The DPO and the auditor see why a model or run changed; ML engineers that it changed
    and when, not the erasure behind it (issue 14)."""
    request = context.get("request")
    return request is not None and sees_erasure_detail(request.user)


ERASURE_CANCELLED = "cancelled by erasure-worker"  # mlops.services.execution.training_run_cancel's text


def _training_data_changed_at(*, run: TrainingRun) -> datetime | None:
    # One indexed read per version (snapshot, sequence is unique): the latest amendment the
    # run had not seen when it read its data. Any reason counts: the role decides what is said.
    seen = run.trained_on_amendment or 0
    latest = (
        SnapshotAmendment.objects.filter(snapshot_id=run.snapshot_id, sequence__gt=seen)
        .order_by("-sequence").values_list("created_at", flat=True).first()
    )
    return latest


class TrainingRunSerializer(serializers.ModelSerializer):
    dataset = serializers.IntegerField(source="snapshot.dataset_id", read_only=True)
    planned_epsilon = FiniteFloatField(read_only=True)
    epsilon = FiniteFloatField(read_only=True)
    requested_by = serializers.CharField(source="requested_by.username", read_only=True, default=None, allow_null=True)
    non_private = serializers.BooleanField(source="allow_non_private", read_only=True)
    model_versions = serializers.PrimaryKeyRelatedField(many=True, read_only=True)

    class Meta:
        model = TrainingRun
        fields = [
            "id", "name", "snapshot", "dataset", "task", "model_spec", "optimizer", "learning_rate", "epochs",
            "batch_size", "seed", "validation_split", "holdout_fraction", "target_epsilon",
            "requested_noise_multiplier", "target_delta", "max_grad_norm", "accountant", "non_private",
            "release_training_metrics", "sisa",
            "status", "progress", "epoch_metrics", "error", "celery_task_id", "attempts", "requested_by",
            "created_at", "started_at", "finished_at", "n_train", "n_validation", "n_holdout", "max_records_per_person",
            "n_classes",
            "planned_epsilon", "noise_multiplier", "sample_rate", "steps", "accountant_history", "epsilon",
            "delta", "model_versions", "executor", "description", "reservation_expires_at", "reported_at",
            "mlflow_run_id", "overspend_epsilon_limit",
        ]
        read_only_fields = fields

    def to_representation(self, instance):
        data = super().to_representation(instance)
        if data.get("error") == ERASURE_CANCELLED and not _sees_erasure_detail(self.context):
            data["error"] = "cancelled: its training data changed while it trained"
        return data


class ExternalRunCreatedSerializer(TrainingRunSerializer):
    """The answer to starting an external run: the run, its plan, and its token (shown only here)."""

    run_token = serializers.SerializerMethodField(
        help_text="Shown once, here only (stored hashed): send it with the report or the failure."
    )
    export_url = serializers.SerializerMethodField(help_text="Where the snapshot's records are exported from.")

    class Meta(TrainingRunSerializer.Meta):
        fields = [*TrainingRunSerializer.Meta.fields, "run_token", "export_url"]
        read_only_fields = fields

    def get_run_token(self, obj: TrainingRun) -> str:
        return self.context["run_token"]

    def get_export_url(self, obj: TrainingRun) -> str:
        return f"/api/v1/snapshots/{obj.snapshot_id}/export/"


class ExternalReportSerializer(serializers.Serializer):
    """What an external trainer reports; ε is recomputed from ``history``, never read from the body."""

    run_token = serializers.CharField(max_length=200)
    accountant = serializers.ChoiceField(choices=Accountant.choices)
    history = serializers.JSONField(
        help_text="Opacus's accountant.history: [[noise_multiplier, sample_rate, steps], ...]."
    )
    metrics = serializers.JSONField(required=False, default=dict, help_text='{"<name>": number, ...}')
    artifact_sha256 = serializers.CharField(help_text="SHA-256 of the model file, 64 hexadecimal characters.")
    description = serializers.CharField(required=False, allow_blank=True, max_length=2000, default="")
    mlflow_run_id = serializers.CharField(required=False, allow_blank=True, max_length=100, default="")
    encoding = serializers.JSONField(required=False, allow_null=True, default=None)


class ExternalFailSerializer(serializers.Serializer):
    run_token = serializers.CharField(max_length=200)
    reason = serializers.CharField(max_length=2000)


class OverspendApproveSerializer(serializers.Serializer):
    epsilon_limit = PositiveFloatField(
        max_value=MAX_TARGET_EPSILON, help_text="The most ε (at the run's δ) its report may spend."
    )
    reason = serializers.CharField(max_length=2000)


class ReportedVersionSerializer(serializers.ModelSerializer):
    epsilon = FiniteFloatField(read_only=True)

    class Meta:
        model = ModelVersion
        fields = ["id", "name", "version", "status", "epsilon", "delta", "artifact_sha256"]
        read_only_fields = fields


class ExternalReportResultSerializer(serializers.Serializer):
    run = TrainingRunSerializer()
    model_version = ReportedVersionSerializer()


class ModelStatusSerializer(serializers.ModelSerializer):
    """What a serving system checks before it serves a version."""

    servable = serializers.SerializerMethodField(help_text="True only for an active version.")
    reason = serializers.SerializerMethodField()

    class Meta:
        model = ModelVersion
        fields = ["id", "name", "version", "status", "servable", "reason", "status_changed_at"]
        read_only_fields = fields

    def get_servable(self, obj: ModelVersion) -> bool:
        return obj.status == ModelStatus.ACTIVE

    def get_reason(self, obj: ModelVersion) -> str:
        return model_status_reason_shown(
            status=obj.status, status_reason=obj.status_reason,
            supersedes_version=obj.supersedes.version if obj.supersedes_id else None,
            erasure_detail=_sees_erasure_detail(self.context),
        )


class MembershipInferenceAuditSerializer(serializers.ModelSerializer):
    """Full-precision figures for machines, each with its 95% bootstrap interval (``*_low``/``*_high``,
    null for audits computed before intervals were recorded)."""

    notes = serializers.ListField(
        child=serializers.CharField(), read_only=True,
        help_text="Why a figure is null (e.g. too few non-members for a TPR at 0.1% FPR) and caveats.",
    )

    class Meta:
        model = MembershipInferenceAudit
        fields = ["id", "attack", "n_references", "auc", "auc_low", "auc_high", "advantage", "advantage_low",
                  "advantage_high",
                  "tpr_at_1pct_fpr", "tpr_at_1pct_fpr_low", "tpr_at_1pct_fpr_high",
                  "tpr_at_01pct_fpr", "tpr_at_01pct_fpr_low", "tpr_at_01pct_fpr_high",
                  "n_members", "n_nonmembers", "members_available", "nonmembers_available", "sampling_seed",
                  "sampling_rule", "bootstrap_resamples", "notes", "roc", "roc_band", "created_at"]
        read_only_fields = fields


class PrivacyAuditJobSerializer(serializers.ModelSerializer):
    """An audit as work: queued, running (with progress), completed, not applicable (why) or failed."""

    class Meta:
        model = PrivacyAuditJob
        fields = ["kind", "status", "progress", "notes", "attempts", "created_at", "started_at", "finished_at"]
        read_only_fields = fields


class CanaryAuditSerializer(serializers.ModelSerializer):
    """The empirical ε lower bound of the version's configuration; ``flagged``: above the claimed ε,
    a privacy bug (the implementation or the accounting is wrong)."""

    notes = serializers.ListField(child=serializers.CharField(), read_only=True)

    class Meta:
        model = CanaryAudit
        fields = ["epsilon_lower_bound", "confidence", "claimed_epsilon", "delta", "flagged", "n_canaries",
                  "n_guesses", "n_correct", "seed", "notes", "created_at"]
        read_only_fields = fields


class AttributeInferenceAuditSerializer(serializers.ModelSerializer):
    """Attribute inference of one sensitive feature: ``gain`` over imputation (the risk) with its 95% interval."""

    notes = serializers.ListField(child=serializers.CharField(), read_only=True)

    class Meta:
        model = AttributeInferenceAudit
        fields = ["feature", "special_category", "gain", "gain_low", "gain_high", "attack_accuracy",
                  "imputation_accuracy", "inversion_accuracy", "majority_accuracy", "n_population", "n_members",
                  "notes", "created_at"]
        read_only_fields = fields


class UnlearningCheckSerializer(serializers.ModelSerializer):
    """Whether the version remembers people it was made to forget (scores 0–1; 0.5 = like people never seen).
    The erasure request is shown to the DPO and the auditor only."""

    notes = serializers.ListField(child=serializers.CharField(), read_only=True)

    class Meta:
        model = UnlearningCheck
        fields = ["erasure_request_id", "previous_version", "n_records", "reference", "new_score", "reference_score",
                  "previous_score", "threshold", "passed", "notes", "created_at"]
        read_only_fields = fields

    def to_representation(self, instance):
        data = super().to_representation(instance)
        if not _sees_erasure_detail(self.context):
            data["erasure_request_id"] = None
        return data


class AuditPolicySerializer(serializers.ModelSerializer):
    class Meta:
        model = AuditPolicy
        fields = ["id", "dataset", "processing_activity", "max_tpr_at_1pct_fpr", "max_auc",
                  "epsilon_lower_bound_within_claim", "max_attribute_gain", "reason", "set_by", "created_at"]
        read_only_fields = fields


class AuditPolicySetSerializer(serializers.Serializer):
    """Either ``dataset`` or ``processing_activity``; every ceiling optional (all empty lifts the policy)."""

    dataset = serializers.PrimaryKeyRelatedField(queryset=Dataset.objects.all(), required=False, allow_null=True)
    processing_activity = serializers.PrimaryKeyRelatedField(
        queryset=ProcessingActivity.objects.all(), required=False, allow_null=True
    )
    max_tpr_at_1pct_fpr = serializers.FloatField(
        required=False, allow_null=True, min_value=0.0, max_value=1.0,
        help_text="LiRA's TPR at 1% FPR must not exceed this (e.g. 0.02 for 2%).",
    )
    max_auc = serializers.FloatField(required=False, allow_null=True, min_value=0.5, max_value=1.0)
    epsilon_lower_bound_within_claim = serializers.BooleanField(
        required=False, default=False, help_text="The canary audit's ε lower bound must not exceed the claimed ε."
    )
    max_attribute_gain = serializers.FloatField(
        required=False, allow_null=True, min_value=0.0, max_value=1.0,
        help_text="No sensitive feature's attribute-inference gain over imputation may exceed this.",
    )
    reason = serializers.CharField(required=False, allow_blank=True, max_length=2000, default="")

    def validate(self, attrs):
        if (attrs.get("dataset") is None) == (attrs.get("processing_activity") is None):
            raise serializers.ValidationError({"dataset": "give either a dataset or a processing activity"})
        return attrs


class RectificationPolicySerializer(serializers.ModelSerializer):
    class Meta:
        model = RectificationPolicy
        fields = ["id", "processing_activity", "action", "justification", "set_by", "created_at"]
        read_only_fields = fields


class RectificationPolicySetSerializer(serializers.Serializer):
    processing_activity = serializers.PrimaryKeyRelatedField(queryset=ProcessingActivity.objects.all())
    action = serializers.ChoiceField(
        choices=RectificationAction.choices,
        help_text="retrain: stale versions are retrained on a fresh snapshot; accept: they stay in service.",
    )
    justification = serializers.CharField(max_length=4000, help_text="Why this remediation is proportionate.")


class OutputPolicySerializer(serializers.ModelSerializer):
    set_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = ModelOutputPolicy
        fields = ["id", "name", "kind", "digits", "withhold_attributions", "reason", "set_by", "created_at"]
        read_only_fields = fields


class OutputPolicySetSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200, help_text="The model name: the policy applies to all its versions.")
    kind = serializers.ChoiceField(
        choices=OutputPolicyKind.choices,
        help_text="What a decision shows: full or rounded probabilities, the label with a confidence band, or the "
        "label only.",
    )
    digits = serializers.IntegerField(
        required=False, default=2, min_value=0, max_value=6, help_text="Digits kept by rounded probabilities."
    )
    withhold_attributions = serializers.BooleanField(
        required=False, default=False,
        help_text="Withhold per-decision attributions when the explanation attack exceeds the audit ceiling.",
    )
    reason = serializers.CharField(required=False, allow_blank=True, max_length=4000, default="")


class OutputPolicyInForceSerializer(serializers.Serializer):
    kind = serializers.CharField()
    digits = serializers.IntegerField()
    attributions_withheld = serializers.BooleanField()
    withheld_because = serializers.CharField()
    source = serializers.CharField()
    withhold_attributions = serializers.BooleanField()
    policy_id = serializers.IntegerField(allow_null=True)
    ceiling = serializers.FloatField(
        allow_null=True, help_text="The audit policies' lowest AUC ceiling in force (max_auc), if any."
    )
    text = serializers.CharField()


class TopFeatureSerializer(serializers.Serializer):
    feature = serializers.CharField()
    mean_abs = serializers.FloatField()
    direction = serializers.CharField()


class LogicSummarySerializer(serializers.Serializer):
    purpose = serializers.CharField()
    features_used = serializers.ListField(child=serializers.CharField())
    top_features = TopFeatureSerializer(many=True)
    method = serializers.CharField()
    baseline_rule = serializers.CharField()
    output_policy = serializers.CharField()
    computed_at = serializers.DateTimeField()


class PersonGuaranteeSerializer(serializers.Serializer):
    unit = serializers.CharField(help_text="What `epsilon` and `delta` of the version bound: `record` (DP-SGD samples "
                                 "and clips records).")
    max_records_per_person = serializers.IntegerField(
        allow_null=True, help_text="The most records one person has in the training set; null for runs before it "
        "was recorded.")
    epsilon = serializers.FloatField(allow_null=True, help_text="ε for a person by group privacy: k·ε.")
    delta = serializers.FloatField(
        allow_null=True, help_text="δ for a person by group privacy: δ·(e^{kε} − 1)/(e^ε − 1); null when not finite.")
    holds = serializers.BooleanField(help_text="False when the person's δ reaches 1: no guarantee for a person.")


class ModelVersionSerializer(serializers.ModelSerializer):
    epsilon = FiniteFloatField(read_only=True)
    person_guarantee = serializers.SerializerMethodField(
        help_text="What the record-level ε means for one person with several records (group privacy); null for a "
        "non-private version."
    )
    membership_inference_audits = MembershipInferenceAuditSerializer(many=True, read_only=True)
    audit_jobs = PrivacyAuditJobSerializer(many=True, read_only=True)
    canary_audit = serializers.SerializerMethodField()
    attribute_inference_audits = AttributeInferenceAuditSerializer(many=True, read_only=True)
    unlearning_checks = UnlearningCheckSerializer(many=True, read_only=True)
    privacy_bug = serializers.SerializerMethodField(
        help_text="True when the canary audit's ε lower bound exceeds the claimed ε: the guarantee is false."
    )
    lineage = serializers.SerializerMethodField()
    accountant = serializers.CharField(source="training_run.accountant", read_only=True)
    status_reason = serializers.SerializerMethodField(
        help_text="Why the status changed. For ML engineers a neutral text: that the training data changed, "
        "not which request or why (the DPO and the auditor see the reason)."
    )
    training_data_changed_at = serializers.SerializerMethodField(
        help_text="When members were last removed from the training snapshot after this version's run read it; "
        "null if its data is unchanged."
    )

    class Meta:
        model = ModelVersion
        fields = [
            "id", "name", "version", "training_run", "status", "status_reason", "training_data_changed_at",
            "epsilon", "delta", "non_private", "accountant", "is_sisa_ensemble", "metrics", "artifact_sha256",
            "supersedes", "created_at", "membership_inference_audits", "lineage", "audit_jobs", "canary_audit",
            "attribute_inference_audits", "unlearning_checks", "privacy_bug", "status_changed_at", "external",
            "description", "person_guarantee",
        ]
        read_only_fields = fields

    @extend_schema_field(PersonGuaranteeSerializer(allow_null=True))
    def get_person_guarantee(self, obj: ModelVersion) -> dict | None:
        if obj.non_private or obj.epsilon is None or obj.delta is None:
            return None
        k = obj.training_run.max_records_per_person
        pair = mlops_display.person_guarantee(epsilon=obj.epsilon, delta=obj.delta, max_records_per_person=k)
        epsilon, delta = pair if pair else (None, None)
        return {"unit": "record", "max_records_per_person": k, "epsilon": epsilon,
                "delta": delta if delta is not None and math.isfinite(delta) else None,
                "holds": delta is not None and delta < 1}

    @extend_schema_field(CanaryAuditSerializer(allow_null=True))
    def get_canary_audit(self, obj: ModelVersion) -> dict | None:
        audit = _canary_of(obj)
        return None if audit is None else CanaryAuditSerializer(audit).data

    def get_privacy_bug(self, obj: ModelVersion) -> bool:
        audit = _canary_of(obj)
        return bool(audit is not None and audit.flagged)

    def get_lineage(self, obj: ModelVersion) -> dict:
        return model_lineage_summary(model_version=obj)

    def get_status_reason(self, obj: ModelVersion) -> str:
        return model_status_reason_shown(
            status=obj.status, status_reason=obj.status_reason,
            supersedes_version=obj.supersedes.version if obj.supersedes_id else None,
            erasure_detail=_sees_erasure_detail(self.context),
        )

    def get_training_data_changed_at(self, obj: ModelVersion) -> datetime | None:
        return _training_data_changed_at(run=obj.training_run)


class EncodedFeatureSerializer(serializers.Serializer):
    name = serializers.CharField()
    type = serializers.ChoiceField(choices=["float", "int", "bool", "category"])
    min = serializers.FloatField(required=False, help_text="Numeric: the lower scaling bound (values below count as it).")
    max = serializers.FloatField(required=False, help_text="Numeric: the upper scaling bound (values above count as it).")
    categories = serializers.ListField(
        child=serializers.CharField(), required=False, help_text="Category: one input column per entry, in this order."
    )


class PersonSplitSerializer(serializers.Serializer):
    rule = serializers.CharField(help_text="How a person's draw u in [0, 1) is computed.")
    version = serializers.IntegerField()
    holdout_below = serializers.FloatField(help_text="u below this: held out (the audit's non-members).")
    validation_below = serializers.FloatField(help_text="u below this (and not held out): validation; else training.")
    seed = serializers.IntegerField()
    key = serializers.CharField(help_text="Never disclosed: the controller holds it.")


class AuditRecordsSerializer(serializers.Serializer):
    members = serializers.ListField(child=serializers.IntegerField(), help_text="DataRecord ids attacked as members.")
    nonmembers = serializers.ListField(
        child=serializers.IntegerField(), help_text="DataRecord ids attacked as non-members (held-out people)."
    )
    members_available = serializers.IntegerField()
    nonmembers_available = serializers.IntegerField()
    limit_per_side = serializers.IntegerField()
    sampling_seed = serializers.IntegerField()
    sampling_rule = serializers.CharField()
    audit = serializers.IntegerField(allow_null=True, help_text="The loss-threshold audit this sample is of.")
    matches_audit = serializers.BooleanField(
        allow_null=True,
        help_text="False: the snapshot lost people since the audit (erasure), so these are its records now; "
        "null: no audit recorded yet.",
    )


class SnapshotRefSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    merkle_root = serializers.CharField()


class LabelRefSerializer(serializers.Serializer):
    name = serializers.CharField(allow_null=True)
    type = serializers.CharField(allow_null=True)


class ReproducibilitySerializer(serializers.Serializer):
    """How to rebuild the model's inputs from the raw records and re-run its audit; the same
    record (without audit ids) is in the weights file's safetensors metadata."""

    executor = serializers.ChoiceField(
        choices=Executor.choices, help_text="external: trained outside the ledger; encoding, split and seed were the owner's."
    )
    feature_order = serializers.ListField(child=serializers.CharField())
    features = EncodedFeatureSerializer(many=True)
    encoding_rule = serializers.CharField()
    n_inputs = serializers.IntegerField(allow_null=True, help_text="Width of the encoded input (null: external).")
    label = LabelRefSerializer()
    classes = serializers.ListField(
        child=serializers.JSONField(), help_text="Class order: output unit i is classes[i] (empty: external)."
    )
    person_split = PersonSplitSerializer(allow_null=True, help_text="null: the owner split the export themselves.")
    seed = serializers.IntegerField(allow_null=True)
    snapshot = SnapshotRefSerializer()
    release_training_metrics = serializers.BooleanField()
    membership_inference_audit = AuditRecordsSerializer(
        required=False, help_text="The DPO and the auditor only: which records the audit attacked."
    )


def _canary_of(version: ModelVersion) -> CanaryAudit | None:
    try:
        return version.canary_audit
    except CanaryAudit.DoesNotExist:
        return None


class AuditPolicyVerdictSerializer(serializers.Serializer):
    state = serializers.ChoiceField(
        choices=["none", "waiting", "passed", "failed"],
        help_text="none: no policy applies; waiting: an audit it needs has not finished.",
    )
    reasons = serializers.ListField(child=serializers.CharField())


class ModelVersionDetailSerializer(ModelVersionSerializer):
    reproducibility = serializers.SerializerMethodField()
    audit_policy = serializers.SerializerMethodField(
        help_text="The version against the audit policies of its dataset and processing activity, now."
    )

    output_policy = serializers.SerializerMethodField(
        help_text="What the version's decisions show, and whether per-decision attributions are withheld now."
    )
    logic_summary = serializers.SerializerMethodField(
        help_text="The logic involved (Art. 15(1)(h)): features used, the most influential, method and baseline; "
        "null until the worker has computed it."
    )

    class Meta(ModelVersionSerializer.Meta):
        fields = [*ModelVersionSerializer.Meta.fields, "reproducibility", "audit_policy", "output_policy",
                  "logic_summary"]
        read_only_fields = fields

    @extend_schema_field(OutputPolicyInForceSerializer)
    def get_output_policy(self, obj: ModelVersion) -> dict:
        from dataclasses import asdict

        from mlops.selectors import output_policy_for

        policy = output_policy_for(model_version=obj)
        return {**asdict(policy), "text": policy.text()}

    @extend_schema_field(LogicSummarySerializer(allow_null=True))
    def get_logic_summary(self, obj: ModelVersion) -> dict | None:
        from mlops.selectors import model_logic_summary

        summary = model_logic_summary(model_version=obj)
        return None if summary is None else LogicSummarySerializer(summary).data

    @extend_schema_field(AuditPolicyVerdictSerializer)
    def get_audit_policy(self, obj: ModelVersion) -> dict:
        from mlops.services.audit_jobs import audit_policy_verdict

        return audit_policy_verdict(model_version=obj)

    @extend_schema_field(ReproducibilitySerializer)
    def get_reproducibility(self, obj: ModelVersion) -> dict:
        request = self.context.get("request")
        return model_version_reproducibility(
            model_version=obj, include_audit_records=request is not None and sees_audit_records(request.user)
        )


class PrivacyBudgetRunSerializer(serializers.Serializer):
    training_run = serializers.IntegerField()
    name = serializers.CharField()
    state = serializers.CharField()
    status = serializers.CharField()
    non_private = serializers.BooleanField()
    planned_epsilon = serializers.FloatField(allow_null=True)
    epsilon = serializers.FloatField(allow_null=True)
    delta = serializers.FloatField(allow_null=True)


class PrivacyBudgetStatusSerializer(serializers.Serializer):
    dataset = serializers.IntegerField()
    epsilon_cap = serializers.FloatField(allow_null=True)
    delta = serializers.FloatField()
    set_by = serializers.CharField(allow_null=True)
    set_at = serializers.DateTimeField(allow_null=True)
    spent_epsilon = serializers.FloatField(allow_null=True, help_text="Null means ∞ (a non-private model).")
    committed_epsilon = serializers.FloatField(allow_null=True, help_text="Spent plus runs queued or running.")
    remaining_epsilon = serializers.FloatField(allow_null=True)
    non_private_training = serializers.BooleanField()
    runs = PrivacyBudgetRunSerializer(many=True)


class PrivacyBudgetSetSerializer(serializers.Serializer):
    epsilon_cap = PositiveFloatField()
    delta = PositiveFloatField(max_value=MAX_TARGET_DELTA, help_text=f"Above 0 and at most {MAX_TARGET_DELTA:g}.")


class ModelRetireSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=500, help_text="Why the version is retired; kept in the audit trail.")
