"""Admin pages: training runs with live progress, the model registry, privacy budgets."""

from __future__ import annotations

import math

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.utils.html import format_html

from governance.admin_mixins import ModelAdmin, ReadOnlyAdmin, StackedInline, TabularInline
from governance.services import ServiceError
from mlops import selectors, services
from mlops.models import (
    AttributeInferenceAudit,
    AuditPolicy,
    CanaryAudit,
    MembershipInferenceAudit,
    ModelVersion,
    PrivacyAuditJob,
    PrivacyBudget,
    PrivacyLedgerEntry,
    RunStatus,
    SisaCheckpoint,
    TrainingRun,
    UnlearningCheck,
)
from provenance import admin as provenance_admin
from provenance.models import Dataset


def _epsilon(value: float | None, non_private: bool = False) -> str:
    if non_private or value is None or not math.isfinite(value):
        return "∞ (non-private)" if non_private else "—"
    return f"{value:.3f}"


class SisaCheckpointInline(TabularInline):
    model = SisaCheckpoint
    fields = ["shard", "slice", "n_records", "epsilon", "artifact_sha256"]
    readonly_fields = fields
    extra = 0
    can_delete = False


@admin.register(TrainingRun)
class TrainingRunAdmin(ReadOnlyAdmin):
    list_display = ["id", "name", "status", "progress_bar", "target", "epsilon_display", "attempts", "created_at"]
    list_filter = ["status", "task", "allow_non_private", "accountant"]
    search_fields = ["name"]
    readonly_fields = ["progress_bar"]
    inlines = [SisaCheckpointInline]
    actions = ["cancel_runs"]
    change_list_template = "admin/mlops/trainingrun/change_list.html"
    change_form_template = "admin/mlops/trainingrun/change_form.html"

    @admin.display(description="progress")
    def progress_bar(self, obj: TrainingRun) -> str:
        progress = obj.progress or {}
        epochs = progress.get("epochs") or obj.epochs or 1
        done = progress.get("epoch", 0) or 0
        if obj.status == RunStatus.SUCCEEDED:
            done = epochs
        percent = max(0, min(100, round(100 * done / epochs)))
        label = f"epoch {done}/{epochs}"
        if progress.get("shards"):
            label += f", shard {progress.get('shard', 0) + 1}/{progress['shards']}"
        if progress.get("epsilon") is not None:
            label += f", ε {progress['epsilon']:.3f}"
        return format_html(
            '<progress max="100" value="{}" style="width:10em"></progress> <span>{}</span>', percent, label
        )

    @admin.display(description="target")
    def target(self, obj: TrainingRun) -> str:
        if obj.allow_non_private:
            return "non-private"
        if obj.target_epsilon is not None:
            return f"ε ≤ {obj.target_epsilon:g}"
        return f"σ = {obj.requested_noise_multiplier:g}"

    @admin.display(description="ε", ordering="epsilon")
    def epsilon_display(self, obj: TrainingRun) -> str:
        return _epsilon(obj.epsilon, obj.allow_non_private and obj.status == RunStatus.SUCCEEDED)

    def _auto_refresh(self, queryset) -> bool:
        return queryset.filter(status__in=[RunStatus.QUEUED, RunStatus.RUNNING]).exists()

    def changelist_view(self, request, extra_context=None):
        extra = {"auto_refresh": self._auto_refresh(TrainingRun.objects.all()), **(extra_context or {})}
        return super().changelist_view(request, extra_context=extra)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        # get_object turns an id that is not a number into "no such run" (Django's own 404 page
        # follows); filtering on the raw id would be a server error.
        run = self.get_object(request, unquote(object_id))
        refresh = run is not None and self._auto_refresh(TrainingRun.objects.filter(pk=run.pk))
        extra = {"auto_refresh": refresh, **(extra_context or {})}
        return super().change_view(request, object_id, form_url, extra_context=extra)

    @admin.action(description="Cancel the selected runs")
    def cancel_runs(self, request, queryset):
        cancelled = 0
        for run in queryset.filter(status__in=[RunStatus.QUEUED, RunStatus.RUNNING]):
            try:
                services.training_run_cancel(run=run, actor=request.user)
                cancelled += 1
            except ServiceError as exc:
                self.message_user(request, str(exc), messages.WARNING)
        self.message_user(request, f"{cancelled} run(s) cancelled.")


class MembershipInferenceAuditInline(StackedInline):
    """Rounded figures with their 95% intervals and why any figure is not reported."""

    model = MembershipInferenceAudit
    verbose_name = "membership-inference audit"
    fields = ["attack_shown", "auc_shown", "advantage_shown", "tpr_1pct_shown", "tpr_01pct_shown", "sizes", "notes_shown", "created_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    @admin.display(description="Attack")
    def attack_shown(self, obj: MembershipInferenceAudit) -> str:
        refs = f", {obj.n_references} reference models" if obj.n_references else ""
        return f"{obj.get_attack_display()}{refs}"

    @admin.display(description="AUC")
    def auc_shown(self, obj: MembershipInferenceAudit) -> str:
        return obj.auc_text()

    @admin.display(description="Advantage (max TPR − FPR)")
    def advantage_shown(self, obj: MembershipInferenceAudit) -> str:
        return obj.figures_text()[1][1]

    @admin.display(description="TPR at 1% FPR")
    def tpr_1pct_shown(self, obj: MembershipInferenceAudit) -> str:
        return obj.figures_text()[2][1]

    @admin.display(description="TPR at 0.1% FPR")
    def tpr_01pct_shown(self, obj: MembershipInferenceAudit) -> str:
        return obj.figures_text()[3][1]

    @admin.display(description="Attacked")
    def sizes(self, obj: MembershipInferenceAudit) -> str:
        seed = "" if obj.sampling_seed is None else f" (seed {obj.sampling_seed}, {obj.bootstrap_resamples or 0:,} bootstrap resamples)"
        return obj.sizes_text() + seed

    @admin.display(description="Notes")
    def notes_shown(self, obj: MembershipInferenceAudit) -> str:
        return " ".join(obj.notes or []) or "—"


class PrivacyAuditJobInline(TabularInline):
    model = PrivacyAuditJob
    verbose_name = "privacy audit"
    fields = ["kind", "status", "progress_shown", "notes", "finished_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    @admin.display(description="progress")
    def progress_shown(self, obj: PrivacyAuditJob) -> str:
        progress = obj.progress or {}
        if not progress.get("total"):
            return "—"
        return f"{progress.get('done', 0)} of {progress['total']} {progress.get('stage', '')}".strip()


class CanaryAuditInline(StackedInline):
    model = CanaryAudit
    verbose_name = "empirical ε lower bound (canary audit run)"
    fields = ["verdict", "bound", "counts", "notes_shown", "created_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    @admin.display(description="Verdict")
    def verdict(self, obj: CanaryAudit) -> str:
        if obj.flagged:
            return format_html('<strong style="color:#b00020">{}</strong>', "PRIVACY BUG: the lower bound exceeds the claimed ε")
        return "Consistent with the claimed ε (a lower bound below the claim proves no more than that)"

    @admin.display(description="Bound")
    def bound(self, obj: CanaryAudit) -> str:
        return obj.bound_text()

    @admin.display(description="Canaries")
    def counts(self, obj: CanaryAudit) -> str:
        return f"{obj.n_correct:,} of {obj.n_guesses:,} guesses right; {obj.n_canaries:,} canaries, δ = {obj.delta:g}"

    @admin.display(description="Notes")
    def notes_shown(self, obj: CanaryAudit) -> str:
        return " ".join(obj.notes or []) or "—"


class AttributeInferenceAuditInline(TabularInline):
    model = AttributeInferenceAudit
    verbose_name = "attribute-inference audit"
    fields = ["feature", "special_category", "gain_shown", "accuracies", "sizes"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    @admin.display(description="gain over imputation")
    def gain_shown(self, obj: AttributeInferenceAudit) -> str:
        return obj.gain_text()

    @admin.display(description="accuracy: with the model / imputation / most frequent value")
    def accuracies(self, obj: AttributeInferenceAudit) -> str:
        majority = "—" if obj.majority_accuracy is None else f"{obj.majority_accuracy:.0%}"
        return f"{obj.attack_accuracy:.0%} / {obj.imputation_accuracy:.0%} / {majority}"

    @admin.display(description="people")
    def sizes(self, obj: AttributeInferenceAudit) -> str:
        return f"trained on {obj.n_population:,} held out, tested on {obj.n_members:,} members"


class UnlearningCheckInline(TabularInline):
    model = UnlearningCheck
    fk_name = "model_version"
    verbose_name = "unlearning check"
    fields = ["erasure_request_id", "summary"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    @admin.display(description="result")
    def summary(self, obj: UnlearningCheck) -> str:
        return obj.summary_text()


@admin.register(ModelVersion)
class ModelVersionAdmin(ReadOnlyAdmin):
    list_display = ["name", "version", "status", "epsilon_display", "delta", "mia_auc", "privacy_bug",
                    "is_sisa_ensemble", "created_at"]
    list_filter = ["status", "non_private", "is_sisa_ensemble", "canary_audit__flagged"]
    search_fields = ["name"]
    inlines = [PrivacyAuditJobInline, MembershipInferenceAuditInline, CanaryAuditInline,
               AttributeInferenceAuditInline, UnlearningCheckInline]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("canary_audit").prefetch_related(
            "membership_inference_audits")

    @admin.display(description="ε audit", boolean=False)
    def privacy_bug(self, obj: ModelVersion) -> str:
        audit = getattr(obj, "canary_audit", None)
        if audit is None:
            return "—"
        if audit.flagged:
            return format_html('<strong style="color:#b00020">privacy bug: {}</strong>', audit.bound_text())
        return audit.bound_text()

    @admin.display(description="ε", ordering="epsilon")
    def epsilon_display(self, obj: ModelVersion) -> str:
        return _epsilon(obj.epsilon, obj.non_private)

    @admin.display(description="membership inference (strongest attack)")
    def mia_auc(self, obj: ModelVersion) -> str:
        audits = sorted(obj.membership_inference_audits.all(), key=lambda a: a.attack != "lira")
        return f"{audits[0].get_attack_display().split(' (')[0]}: {audits[0].auc_text()}" if audits else "—"


@admin.register(AuditPolicy)
class AuditPolicyAdmin(ModelAdmin):
    """Append-only: saving writes a new policy through the service (DPO only, audited)."""

    list_display = ["__str__", "ceilings", "set_by", "created_at"]
    fields = ["dataset", "processing_activity", "max_tpr_at_1pct_fpr", "max_auc",
              "epsilon_lower_bound_within_claim", "max_attribute_gain", "reason"]

    @admin.display(description="ceilings")
    def ceilings(self, obj: AuditPolicy) -> str:
        parts = []
        if obj.max_tpr_at_1pct_fpr is not None:
            parts.append(f"LiRA TPR at 1% FPR ≤ {obj.max_tpr_at_1pct_fpr:.1%}")
        if obj.max_auc is not None:
            parts.append(f"LiRA AUC ≤ {obj.max_auc:.2f}")
        if obj.epsilon_lower_bound_within_claim:
            parts.append("canary ε lower bound ≤ claimed ε")
        if obj.max_attribute_gain is not None:
            parts.append(f"attribute-inference gain ≤ {obj.max_attribute_gain:.1%}")
        return "; ".join(parts) or "none (policy lifted)"

    def has_change_permission(self, request, obj=None) -> bool:
        return obj is None and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def save_model(self, request, obj, form, change):
        obj.pk = services.audit_policy_set(
            actor=request.user, dataset=obj.dataset, processing_activity=obj.processing_activity,
            max_tpr_at_1pct_fpr=obj.max_tpr_at_1pct_fpr, max_auc=obj.max_auc,
            epsilon_lower_bound_within_claim=obj.epsilon_lower_bound_within_claim,
            max_attribute_gain=obj.max_attribute_gain, reason=obj.reason,
        ).pk


@admin.register(PrivacyBudget)
class PrivacyBudgetAdmin(ModelAdmin):
    list_display = ["dataset", "epsilon_cap", "delta", "spent", "set_by", "set_at"]
    fields = ["dataset", "epsilon_cap", "delta", "spent", "set_by", "set_at"]
    readonly_fields = ["spent", "set_by", "set_at"]

    @admin.display(description="spent ε (incl. runs in progress) / cap")
    def spent(self, obj: PrivacyBudget) -> str:
        if obj.pk is None:
            return "—"
        status = selectors.privacy_budget_status(dataset=obj.dataset)
        spent = "∞" if status["spent_epsilon"] is None else f"{status['spent_epsilon']:.3f}"
        committed = "∞" if status["committed_epsilon"] is None else f"{status['committed_epsilon']:.3f}"
        return f"{spent} ({committed}) / {obj.epsilon_cap:g}"

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def save_model(self, request, obj, form, change):
        # Through the service: DPO only, audited with the previous cap.
        services.privacy_budget_set(
            dataset=obj.dataset, epsilon_cap=obj.epsilon_cap, delta=obj.delta, actor=request.user
        )


@admin.register(PrivacyLedgerEntry)
class PrivacyLedgerEntryAdmin(ReadOnlyAdmin):
    list_display = ["dataset", "training_run", "state", "non_private", "planned_epsilon", "epsilon", "delta"]
    list_filter = ["state", "non_private"]


# The dataset page is provenance's; the privacy-budget ledger is mlops's. mlops stands above
# provenance, so it extends that page rather than provenance reaching up into mlops.
admin.site.unregister(Dataset)


@admin.register(Dataset)
class DatasetWithBudgetAdmin(provenance_admin.DatasetAdmin):
    readonly_fields = [*provenance_admin.DatasetAdmin.readonly_fields, "privacy_budget_spent"]
    fields = readonly_fields

    @admin.display(description="privacy budget (ε spent against the cap)")
    def privacy_budget_spent(self, obj) -> str:
        status = selectors.privacy_budget_status(dataset=obj)
        spent = status["spent_epsilon"]
        spent_text = "∞ (a non-private model was trained)" if spent is None else f"{spent:.3f}"
        runs = len(status["runs"])
        if status["epsilon_cap"] is None:
            return f"spent ε = {spent_text} at δ = {status['delta']:g} over {runs} run(s); no cap set"
        return (
            f"spent ε = {spent_text} of a cap of {status['epsilon_cap']:g} at δ = {status['delta']:g} "
            f"over {runs} run(s); committed incl. queued runs: {status['committed_epsilon']}"
        )

