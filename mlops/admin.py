"""Admin pages: training runs with live progress, the model registry with its privacy audits,
privacy budgets and the audit policies, written for people (rounded figures, labels,
tables and charts, never a JSON field as stored)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponseRedirect
from django.urls import path, reverse
from django.utils.html import format_html

from governance import display
from governance.admin_mixins import ModelAdmin, ReadOnlyAdmin, StackedInline, TabularInline
from governance.admin_panels import (
    Button,
    Chart,
    Panel,
    PanelsAdminMixin,
    Series,
    chain,
    facts,
    header,
    paragraphs,
    together,
)
from governance.models import ReportJob, ReportKind
from governance.reports import jobs as report_jobs
from governance.roles import DPO, has_role, sees_erasure_detail
from governance.services import ServiceError
from mlops import display as mlops_display
from mlops import selectors, services
from mlops.models import (
    AttributeInferenceAudit,
    AuditPolicy,
    CanaryAudit,
    LedgerState,
    MembershipInferenceAudit,
    ModelExplanationSummary,
    ModelOutputPolicy,
    ModelStatus,
    ModelVersion,
    PrivacyAuditJob,
    PrivacyBudget,
    PrivacyLedgerEntry,
    RectificationPolicy,
    RunStatus,
    SisaCheckpoint,
    TrainingRun,
    UnlearningCheck,
)
from provenance import admin as provenance_admin
from provenance.models import Dataset

EPSILON = header("ε")
DELTA = header("δ")

# Panels other apps add to a model version's page: assessments stands above mlops and lists
# the DPIAs covering a version; it registers here, so mlops never imports it.
ModelVersionPanel = Callable[[Any, ModelVersion], "Panel | None"]
MODEL_VERSION_PANELS: list[ModelVersionPanel] = []


def model_version_panel_register(panel: ModelVersionPanel) -> ModelVersionPanel:
    """Add a panel to every model version's page (a callable of request and version that
    returns a ``Panel`` or None); returns the callable, so it can decorate."""
    if panel not in MODEL_VERSION_PANELS:
        MODEL_VERSION_PANELS.append(panel)
    return panel


def _url(name: str, *args) -> str:
    return reverse(f"admin:{name}", args=args)


def _link(name: str, pk, text) -> str:
    return display.link(_url(name, pk), text)


# --- Figures in words -------------------------------------------------------------------

def metrics_table(metrics: dict) -> str:
    return display.table(["Figure", "Value"], mlops_display.metric_rows(metrics), empty="No metrics were recorded.")


def _sentences(*parts: str) -> str:
    """Parts joined as sentences: each ends with a full stop before the next begins."""
    kept = [p.strip() for p in parts if p and p.strip()]
    return " ".join(p if p.endswith((".", "!", "?")) or i == len(kept) - 1 else f"{p}." for i, p in enumerate(kept))


def _for_a_person(words: str) -> str:
    return f"For a person: {words[:1].lower()}{words[1:]}"


def guarantee_text(*, epsilon: float | None, delta: float | None, non_private: bool, accountant: str) -> str:
    """``ε = 2.72 at δ = 1e-5 (Rényi DP (RDP) accountant)``, or why there is no guarantee."""
    if non_private:
        return "No differential-privacy guarantee: trained without DP (ε = ∞)."
    if epsilon is None:
        return "Not known yet (the run has not finished)."
    return f"ε = {display.epsilon(epsilon)} at δ = {display.delta(delta)} ({accountant} accountant)"


def epoch_points(run: TrainingRun) -> list[dict]:
    """One row per epoch: SISA runs record epochs per shard; the worst shard stands for the epoch."""
    rows = [m for m in run.epoch_metrics or [] if isinstance(m, dict) and m.get("epoch") is not None]
    if not any("shard" in m for m in rows):
        return rows
    worst: dict[Any, dict] = {}
    for m in rows:
        best = worst.get(m["epoch"])
        if best is None or (m.get("epsilon") or 0) > (best.get("epsilon") or 0):
            worst[m["epoch"]] = m
    return [worst[e] for e in sorted(worst)]


def epsilon_curve_panel(run: TrainingRun) -> Panel:
    points = epoch_points(run)
    if not points:
        return Panel("ε per epoch", paragraphs("No epoch has finished yet."))
    series = [Series("ε spent so far", [p.get("epsilon") for p in points])]
    if any(p.get("val_accuracy") is not None for p in points):
        series.append(Series("validation accuracy", [p.get("val_accuracy") for p in points]))
    sisa = " (the worst shard of each epoch)" if any("shard" in m for m in run.epoch_metrics or []) else ""
    last = points[-1].get("epsilon")
    return Panel(
        "ε per epoch", chart=Chart("line", [p["epoch"] for p in points], series, x_title="epoch"),
        caption=f"ε grows with every epoch{sisa}; after epoch {points[-1]['epoch']} it is {display.epsilon(last)}.",
    )


def epoch_table(run: TrainingRun) -> str:
    rows = []
    for m in run.epoch_metrics or []:
        if not isinstance(m, dict):
            continue
        rows.append([
            m.get("shard", display.DASH) if "shard" in m else display.DASH, m.get("epoch"), display.number(m.get("steps")),
            display.number(m.get("loss")), display.percent(m.get("train_accuracy")),
            display.percent(m.get("val_accuracy")), display.epsilon(m.get("epsilon")),
        ])
    return display.table(["Shard", "Epoch", "Steps", "Loss", "Training accuracy", "Validation accuracy", EPSILON], rows,
                         empty="No epoch has finished yet.")


def budget_panel(dataset: Dataset) -> Panel:
    """The dataset's ε spent, held by runs in progress and left, against its cap, as a bar."""
    status = selectors.privacy_budget_status(dataset=dataset)
    spent, committed, cap = status["spent_epsilon"], status["committed_epsilon"], status["epsilon_cap"]
    runs = len(status["runs"])
    title = f"Privacy budget of {dataset.name}"
    if spent is None or committed is None:
        return Panel(title, paragraphs(
            "A model was trained on this dataset without differential privacy: the ε spent is unbounded (∞).",
            "No cap set." if cap is None else f"The cap of {display.number(cap)} is exceeded.",
        ))
    reserved = max(0.0, committed - spent)
    series = [Series("spent", [spent]), Series("held by runs in progress", [reserved])]
    if cap is None:
        caption = (f"ε spent {display.epsilon(spent)} at δ = {display.delta(status['delta'])} over {runs} run(s); "
                   "no cap set.")
        return Panel(title, chart=Chart("bar", ["ε"], series, horizontal=True, stacked=True, height_rem=8), caption=caption)
    series.append(Series("left", [max(0.0, cap - committed)]))
    share = display.percent(committed / cap if cap else 0)
    caption = (
        f"{display.epsilon(spent)} of the cap of {display.number(cap)} spent at δ = {display.delta(status['delta'])} "
        f"over {runs} run(s); {share} committed including runs in progress."
    )
    chart = Chart("bar", ["ε"], series, horizontal=True, stacked=True, x_max=max(cap, committed), height_rem=8)
    return Panel(title, chart=chart, caption=caption)


def report_jobs_table(*, kind: str, object_id: int) -> str:
    recent = ReportJob.objects.filter(kind=kind, object_id=object_id)[:5]
    rows = []
    for job in recent:
        download = (display.link(_url("governance_reportjob_download", job.pk), "download")
                    if job.status == "succeeded" else display.DASH)
        rows.append([_link("governance_reportjob_change", job.pk, f"#{job.pk}"), job.get_status_display(),
                     display.moment(job.created_at), download])
    return display.table(["Job", "Status", "Requested", "File"], rows, empty="No report requested yet.")


# --- Training runs ------------------------------------------------------------------------


class SisaCheckpointInline(TabularInline):
    model = SisaCheckpoint
    verbose_name = "SISA checkpoint"
    fields = ["shard", "slice", "n_records", "epsilon_shown", "artifact_shown", "created_shown"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    @admin.display(description=EPSILON)
    def epsilon_shown(self, obj: SisaCheckpoint) -> str:
        return display.epsilon(obj.epsilon)

    @admin.display(description="artifact SHA-256")
    def artifact_shown(self, obj: SisaCheckpoint) -> str:
        return f"{obj.artifact_sha256[:12]}…" if obj.artifact_sha256 else display.DASH

    @admin.display(description="saved")
    def created_shown(self, obj: SisaCheckpoint) -> str:
        return display.moment(obj.created_at)


def _progress_bar(obj: TrainingRun) -> str:
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
        label += f", ε {display.epsilon(progress['epsilon'])}"
    return format_html('<progress max="100" value="{}" style="width:10em"></progress> <span>{}</span>', percent, label)


@admin.register(TrainingRun)
class TrainingRunAdmin(PanelsAdminMixin, ReadOnlyAdmin):
    list_display = ["id", "name", "status", "progress_bar", "target", "epsilon_display", "attempts", "created_shown"]
    list_filter = ["status", "executor", "task", "allow_non_private", "accountant"]
    search_fields = ["name"]
    # The run token's hash is never shown: it is of no use to a reader and one less thing to leak.
    fields = ["name", "snapshot_link", "status", "error", "progress_bar", "target", "guarantee", "noise",
              "split", "configuration", "timeline", "requested_by", "executor", "description",
              "reservation_expires_at", "reported_at", "mlflow_run_id", "overspend_epsilon_limit", "overspend_reason",
              "overspend_approved_by", "overspend_approved_at"]
    readonly_fields = fields
    inlines = [SisaCheckpointInline]
    actions = ["cancel_runs"]
    change_list_template = "admin/mlops/trainingrun/change_list.html"
    change_form_template = "admin/mlops/trainingrun/change_form.html"

    @admin.display(description="progress")
    def progress_bar(self, obj: TrainingRun) -> str:
        return _progress_bar(obj)

    @admin.display(description="target")
    def target(self, obj: TrainingRun) -> str:
        if obj.allow_non_private:
            return "non-private"
        if obj.target_epsilon is not None:
            return f"ε ≤ {display.number(obj.target_epsilon)}"
        return f"σ = {display.number(obj.requested_noise_multiplier)}"

    @admin.display(description=EPSILON, ordering="epsilon")
    def epsilon_display(self, obj: TrainingRun) -> str:
        if obj.allow_non_private and obj.status == RunStatus.SUCCEEDED:
            return display.epsilon(None, non_private=True)
        return display.DASH if obj.epsilon is None else display.epsilon(obj.epsilon)

    @admin.display(description="created", ordering="created_at")
    def created_shown(self, obj: TrainingRun) -> str:
        return display.moment(obj.created_at)

    @admin.display(description="snapshot")
    def snapshot_link(self, obj: TrainingRun) -> str:
        snapshot = obj.snapshot
        return format_html("{} of {}", _link("provenance_snapshot_change", snapshot.pk, f"Snapshot {snapshot.pk}"),
                           _link("provenance_dataset_change", snapshot.dataset_id, snapshot.dataset.name))

    @admin.display(description="privacy guarantee")
    def guarantee(self, obj: TrainingRun) -> str:
        planned = "" if obj.planned_epsilon is None else f"Planned: ε = {display.epsilon(obj.planned_epsilon)}."
        text = _sentences(guarantee_text(epsilon=obj.epsilon, delta=obj.delta or obj.target_delta,
                                         non_private=obj.allow_non_private, accountant=obj.get_accountant_display()),
                          planned)
        if obj.allow_non_private or obj.epsilon is None:
            return text
        return _sentences(text, _for_a_person(mlops_display.person_guarantee_words(
            epsilon=obj.epsilon, delta=obj.delta or obj.target_delta, max_records_per_person=obj.max_records_per_person)))

    @admin.display(description="noise and sampling")
    def noise(self, obj: TrainingRun) -> str:
        if obj.allow_non_private:
            return "No noise (non-private training)."
        return (f"noise multiplier σ = {display.number(obj.noise_multiplier)}, sampling rate q = "
                f"{display.number(obj.sample_rate)}, {display.number(obj.steps)} steps, gradients clipped to "
                f"{display.number(obj.max_grad_norm)}")

    @admin.display(description="records")
    def split(self, obj: TrainingRun) -> str:
        return mlops_display.split_words(n_train=obj.n_train, n_validation=obj.n_validation, n_holdout=obj.n_holdout)

    @admin.display(description="training set-up")
    def configuration(self, obj: TrainingRun) -> str:
        sisa = f"; SISA with {obj.sisa.get('shards')} shards × {obj.sisa.get('slices')} slices" if obj.sisa else ""
        hidden = (obj.model_spec or {}).get("hidden_sizes")
        layers = f"; hidden layers {', '.join(str(h) for h in hidden)}" if hidden else ""
        return (f"{obj.get_task_display()}; {obj.get_optimizer_display()} at learning rate "
                f"{display.number(obj.learning_rate)}; {obj.epochs} epochs of expected batch {obj.batch_size:,}; "
                f"seed {obj.seed}{layers}{sisa}")

    @admin.display(description="times")
    def timeline(self, obj: TrainingRun) -> str:
        return (f"queued {display.moment(obj.created_at)}; started {display.moment(obj.started_at)}; "
                f"finished {display.moment(obj.finished_at)}; attempts {obj.attempts}")

    def get_panels(self, request, obj: TrainingRun) -> list[Panel]:
        snapshot = obj.snapshot
        dataset = snapshot.dataset
        parents = [_link("provenance_dataset_change", p.pk, p.name) for p in dataset.parents.order_by("pk")]
        steps = [*([together(parents)] if parents else []),
                 _link("provenance_dataset_change", dataset.pk, f"Dataset {dataset.name}"),
                 _link("provenance_snapshot_change", snapshot.pk, f"Snapshot {snapshot.pk}"),
                 f"Training run {obj.pk}"]
        versions = list(obj.model_versions.order_by("version"))
        steps += [_link("mlops_modelversion_change", v.pk, str(v)) for v in versions]
        panels = [
            Panel("Lineage", chain(steps), caption="Parent datasets, the dataset, the snapshot trained on, this run "
                  "and the model versions it registered."),
            epsilon_curve_panel(obj),
            Panel("Epoch metrics", epoch_table(obj), wide=True),
            Panel("Privacy accounting", self._accounting(obj)),
        ]
        if obj.rdp_curve and isinstance(obj.rdp_curve, list):
            panels.append(self._rdp_panel(obj))
        return panels

    @staticmethod
    def _accounting(obj: TrainingRun) -> str:
        """The accountant's history, compacted: runs of equal (σ, q) are summed into one row."""
        history = obj.accountant_history or []
        groups = history.items() if isinstance(history, dict) else [("", history)]
        rows = []
        for shard, entries in groups:
            compact: list[list] = []
            for entry in entries or []:
                if not isinstance(entry, list | tuple) or len(entry) != 3:
                    continue
                sigma, q, steps = entry
                if compact and compact[-1][0] == sigma and compact[-1][1] == q:
                    compact[-1][2] += steps
                else:
                    compact.append([sigma, q, steps])
            rows += [[shard or display.DASH, display.number(s), display.number(q), display.number(int(n))] for s, q, n in compact]
        table = display.table(["Shard", "Noise multiplier σ", "Sampling rate q", "Steps"], rows,
                              empty="No step has been accounted yet.")
        accountant = f"Accountant: {obj.get_accountant_display()}."
        return format_html("{}{}", paragraphs(accountant), table)

    @staticmethod
    def _rdp_panel(obj: TrainingRun) -> Panel:
        from mlops.engine.accounting import RDP_ORDERS

        curve = [c for c in obj.rdp_curve if isinstance(c, int | float)]
        pairs = [(a, c) for a, c in zip(RDP_ORDERS, curve, strict=False) if math.isfinite(c) and a <= 64]
        if not pairs:
            return Panel("Rényi DP curve", paragraphs("No finite point to show."))
        chart = Chart("line", [display.number(a) for a, _ in pairs], [Series("RDP ε(α)", [c for _, c in pairs])],
                      x_title="order α")
        return Panel("Rényi DP curve", chart=chart,
                     caption=f"The run's Rényi-DP ε at {len(pairs)} orders α up to 64 (of {len(curve)} accounted); "
                             "ε at δ is read from the best order.")

    def _auto_refresh(self, queryset) -> bool:
        return queryset.filter(status__in=[RunStatus.QUEUED, RunStatus.RUNNING]).exists()

    def changelist_view(self, request, extra_context=None):
        extra = {"auto_refresh": self._auto_refresh(TrainingRun.objects.all()), **(extra_context or {})}
        return super().changelist_view(request, extra_context=extra)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        # get_object turns an id that is not a number into "no such run" (a 404 follows);
        # filtering on the raw id would be a server error.
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


# --- Privacy audits -------------------------------------------------------------------------


def _attack_name(obj: MembershipInferenceAudit) -> str:
    refs = f", {obj.n_references} reference models" if obj.n_references else ""
    return f"{obj.get_attack_display()}{refs}"


def _notes(notes) -> str:
    if isinstance(notes, list):
        return " ".join(str(n) for n in notes) or display.DASH
    return str(notes or "") or display.DASH


class MembershipInferenceAuditInline(StackedInline):
    """Rounded figures with their 95% intervals and why any figure is not reported."""

    model = MembershipInferenceAudit
    verbose_name = "membership-inference audit"
    fields = ["attack_shown", "auc_shown", "advantage_shown", "tpr_1pct_shown", "tpr_01pct_shown", "sizes", "notes_shown",
              "created_shown"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    @admin.display(description="Attack")
    def attack_shown(self, obj: MembershipInferenceAudit) -> str:
        return _attack_name(obj)

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
        return _notes(obj.notes)

    @admin.display(description="Audited")
    def created_shown(self, obj: MembershipInferenceAudit) -> str:
        return display.moment(obj.created_at)


class PrivacyAuditJobInline(TabularInline):
    model = PrivacyAuditJob
    verbose_name = "privacy audit"
    fields = ["kind", "status", "progress_shown", "notes", "finished_shown"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    @admin.display(description="progress")
    def progress_shown(self, obj: PrivacyAuditJob) -> str:
        progress = obj.progress or {}
        if not progress.get("total"):
            return display.DASH
        return f"{progress.get('done', 0)} of {progress['total']} {progress.get('stage', '')}".strip()

    @admin.display(description="finished")
    def finished_shown(self, obj: PrivacyAuditJob) -> str:
        return display.moment(obj.finished_at)


class CanaryAuditInline(StackedInline):
    model = CanaryAudit
    verbose_name = "empirical ε lower bound (canary audit run)"
    fields = ["verdict", "bound", "counts", "notes_shown", "created_shown"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    @admin.display(description="Verdict")
    def verdict(self, obj: CanaryAudit) -> str:
        if obj.flagged:
            return format_html('<strong class="pl-bad">{}</strong>', "PRIVACY BUG: the lower bound exceeds the claimed ε")
        return "Consistent with the claimed ε (a lower bound below the claim proves no more than that)"

    @admin.display(description="Bound")
    def bound(self, obj: CanaryAudit) -> str:
        return obj.bound_text()

    @admin.display(description="Canaries")
    def counts(self, obj: CanaryAudit) -> str:
        return (f"{obj.n_correct:,} of {obj.n_guesses:,} guesses right; {obj.n_canaries:,} canaries, "
                f"δ = {display.delta(obj.delta)}")

    @admin.display(description="Notes")
    def notes_shown(self, obj: CanaryAudit) -> str:
        return _notes(obj.notes)

    @admin.display(description="Audited")
    def created_shown(self, obj: CanaryAudit) -> str:
        return display.moment(obj.created_at)


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
        majority = display.DASH if obj.majority_accuracy is None else display.percent(obj.majority_accuracy)
        return f"{display.percent(obj.attack_accuracy)} / {display.percent(obj.imputation_accuracy)} / {majority}"

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


@admin.register(MembershipInferenceAudit)
class MembershipInferenceAuditAdmin(PanelsAdminMixin, ReadOnlyAdmin):
    """Every membership-inference audit across model versions, figures rounded with their
    95% intervals, each linked to its version."""

    list_display = ["audit_name", "version_link", "attack_short", "auc_shown", "advantage_shown", "tpr_1pct_shown",
                    "sizes_shown", "created_shown"]
    list_display_links = ["audit_name"]
    list_filter = ["attack"]
    search_fields = ["model_version__name"]
    list_select_related = ["model_version"]
    fields = ["version_link", "attack_shown", "figures", "sizes_shown", "sampling", "notes_shown", "created_shown"]
    readonly_fields = fields

    @admin.display(description="audit")
    def audit_name(self, obj: MembershipInferenceAudit) -> str:
        return f"Audit {obj.pk}"

    @admin.display(description="model version", ordering="model_version__name")
    def version_link(self, obj: MembershipInferenceAudit) -> str:
        return _link("mlops_modelversion_change", obj.model_version_id, str(obj.model_version))

    @admin.display(description="attack", ordering="attack")
    def attack_short(self, obj: MembershipInferenceAudit) -> str:
        return obj.get_attack_display().split(" (")[0]

    @admin.display(description="attack")
    def attack_shown(self, obj: MembershipInferenceAudit) -> str:
        return _attack_name(obj)

    @admin.display(description="AUC (95% CI)", ordering="auc")
    def auc_shown(self, obj: MembershipInferenceAudit) -> str:
        return obj.figures_text()[0][1]

    @admin.display(description="advantage (95% CI)")
    def advantage_shown(self, obj: MembershipInferenceAudit) -> str:
        return obj.figures_text()[1][1]

    @admin.display(description="TPR at 1% FPR (95% CI)")
    def tpr_1pct_shown(self, obj: MembershipInferenceAudit) -> str:
        return obj.figures_text()[2][1]

    @admin.display(description="people attacked")
    def sizes_shown(self, obj: MembershipInferenceAudit) -> str:
        return obj.sizes_text()

    @admin.display(description="figures")
    def figures(self, obj: MembershipInferenceAudit) -> str:
        return display.table(["Figure", "Value (95% CI)"], obj.figures_text())

    @admin.display(description="sampling")
    def sampling(self, obj: MembershipInferenceAudit) -> str:
        if obj.sampling_seed is None:
            return obj.sampling_rule or display.DASH
        return (f"{obj.sampling_rule or 'sampled'}; seed {obj.sampling_seed}, "
                f"{obj.bootstrap_resamples or 0:,} bootstrap resamples")

    @admin.display(description="notes")
    def notes_shown(self, obj: MembershipInferenceAudit) -> str:
        return _notes(obj.notes)

    @admin.display(description="audited", ordering="created_at")
    def created_shown(self, obj: MembershipInferenceAudit) -> str:
        return display.moment(obj.created_at)

    def get_panels(self, request, obj: MembershipInferenceAudit) -> list[Panel]:
        roc = [p for p in obj.roc or [] if isinstance(p, list | tuple) and len(p) == 2]
        if len(roc) < 2:
            return []
        step = max(1, len(roc) // 40)  # a readable curve, not hundreds of points
        shown = roc[::step] + ([roc[-1]] if (len(roc) - 1) % step else [])
        chart = Chart("line", [display.percent(f) for f, _ in shown],
                      [Series("attack", [t for _, t in shown]), Series("guessing", [f for f, _ in shown])],
                      x_title="false-positive rate", y_title="true-positive rate")
        return [Panel("ROC curve of the attack", chart=chart,
                      caption="How often the attack spots a member (true positives) for each rate of false alarms; "
                              "the diagonal is guessing.")]


# --- The model registry -------------------------------------------------------------------


_ATTACK_ORDER = {"lira": 0, "loss": 1, "explanation": 2}


def output_policy_panel(version: ModelVersion) -> Panel:
    """The output policy in force beside the explanation attack it depends on (issue 19)."""
    policy = selectors.output_policy_for(model_version=version)
    attack = selectors.explanation_attack_of(model_version=version)
    ceiling = policy.ceiling
    if policy.attributions_withheld:
        attributions = format_html('<strong class="pl-bad">withheld</strong>: {}', policy.withheld_because)
    elif policy.withhold_attributions:
        attributions = "given; withheld whenever the explanation attack exceeds the audit ceiling"
    else:
        attributions = "given with every decision"
    rows = [
        ("Decisions show", policy.text().split(";")[0]),
        ("Per-decision attributions", attributions),
        ("Rule from", policy.source),
        ("Explanation-based membership attack", attack.auc_text() if attack is not None else "not run yet"),
        ("Audit ceiling (AUC)", display.number(ceiling) if ceiling is not None else "none set"),
    ]
    return Panel("Output policy and explanation leakage", facts(rows), caption=(
        "What a decision of this model reveals. The explanation attack guesses who was in the training data from "
        "the size of their explanations (Shokri et al. 2021): an AUC near 0.5 means explanations give little away."))


def logic_summary_panel(version: ModelVersion) -> Panel:
    """The logic involved (Art. 15(1)(h)): what the model reads and what moves it most."""
    summary = ModelExplanationSummary.objects.filter(model_version=version).first()
    if summary is None:
        return Panel("Logic involved (Art. 15(1)(h))", paragraphs("Not computed yet: the worker computes it after "
                                                                    "registration."))
    if summary.error:
        return Panel("Logic involved (Art. 15(1)(h))", paragraphs(f"Could not be computed: {summary.error}"))
    rows = [[r["feature"], display.number(r["mean_abs"]), "raises" if r["mean_signed"] >= 0 else "lowers"]
            for r in summary.global_attributions]
    body = format_html(
        "{}{}{}",
        facts([("Features used", ", ".join(summary.features_used)), ("Method", summary.method.replace("_", " ")),
               ("Baseline", summary.baseline_rule), ("Computed", display.moment(summary.computed_at))]),
        display.table(["Feature", "Mean |attribution|", "On average it"], rows, empty="No figure: no validation record."),
        paragraphs(*summary.notes),
    )
    return Panel("Logic involved (Art. 15(1)(h))", body, caption=(
        "How much each feature moves the model's decision on average, over people it was not trained on."))


@admin.register(ModelVersion)
class ModelVersionAdmin(PanelsAdminMixin, ReadOnlyAdmin):
    list_display = ["__str__", "status", "epsilon_display", "delta_display", "mia_auc", "privacy_bug",
                    "is_sisa_ensemble", "created_shown"]
    list_filter = ["status", "external", "non_private", "is_sisa_ensemble", "canary_audit__flagged"]
    search_fields = ["name"]
    fields = ["training_run_link", "supersedes_link", "artifact", "created_shown", "status_changed_at", "external",
              "description"]
    readonly_fields = fields
    inlines = [PrivacyAuditJobInline, MembershipInferenceAuditInline, CanaryAuditInline,
               AttributeInferenceAuditInline, UnlearningCheckInline]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("canary_audit", "training_run").prefetch_related(
            "membership_inference_audits")

    @admin.display(description=header("ε audit"))
    def privacy_bug(self, obj: ModelVersion) -> str:
        audit = getattr(obj, "canary_audit", None)
        if audit is None:
            return display.DASH
        if audit.flagged:
            return format_html('<strong class="pl-bad">privacy bug: {}</strong>', audit.bound_text())
        return audit.bound_text()

    @admin.display(description=EPSILON, ordering="epsilon")
    def epsilon_display(self, obj: ModelVersion) -> str:
        return display.epsilon(obj.epsilon, non_private=obj.non_private)

    @admin.display(description=DELTA, ordering="delta")
    def delta_display(self, obj: ModelVersion) -> str:
        return display.DASH if obj.non_private else display.delta(obj.delta)

    @admin.display(description="membership inference (strongest attack)")
    def mia_auc(self, obj: ModelVersion) -> str:
        audits = sorted(obj.membership_inference_audits.all(), key=lambda a: _ATTACK_ORDER.get(a.attack, 3))
        return f"{audits[0].get_attack_display().split(' (')[0]}: {audits[0].auc_text()}" if audits else display.DASH

    @admin.display(description="registered", ordering="created_at")
    def created_shown(self, obj: ModelVersion) -> str:
        return display.moment(obj.created_at)

    @admin.display(description="status")
    def status_shown(self, obj: ModelVersion) -> str:
        css = "pl-ok" if obj.status == ModelStatus.ACTIVE else "pl-bad" if obj.status in (
            ModelStatus.TAINTED, ModelStatus.AUDIT_FAILED, ModelStatus.STALE) else ""
        return format_html('<span class="{}">{}</span>', css, obj.get_status_display())

    @admin.display(description="privacy guarantee")
    def guarantee(self, obj: ModelVersion) -> str:
        text = guarantee_text(epsilon=obj.epsilon, delta=obj.delta, non_private=obj.non_private,
                              accountant=obj.training_run.get_accountant_display())
        if obj.external and not obj.non_private and obj.epsilon is not None:
            # The ledger checked the arithmetic of the owner's account, not the training itself.
            text += f" — {selectors.EXTERNAL_EPSILON_BASIS}"
        if obj.non_private or obj.epsilon is None:
            return text
        return _sentences(text, _for_a_person(mlops_display.person_guarantee_words(
            epsilon=obj.epsilon, delta=obj.delta, max_records_per_person=obj.training_run.max_records_per_person)))

    @admin.display(description="trained by")
    def training_run_link(self, obj: ModelVersion) -> str:
        return _link("mlops_trainingrun_change", obj.training_run_id, f"Training run {obj.training_run_id} ({obj.training_run.name})")

    @admin.display(description="replaces")
    def supersedes_link(self, obj: ModelVersion) -> str:
        if not obj.supersedes_id:
            return display.DASH
        return _link("mlops_modelversion_change", obj.supersedes_id, str(obj.supersedes))

    @admin.display(description="artifact")
    def artifact(self, obj: ModelVersion) -> str:
        kind = "SISA ensemble" if obj.is_sisa_ensemble else "single model"
        return f"{kind}; SHA-256 {obj.artifact_sha256[:16]}…"

    def get_panels(self, request, obj: ModelVersion) -> list[Panel]:
        run = obj.training_run
        snapshot = run.snapshot
        dataset = snapshot.dataset
        parents = [_link("provenance_dataset_change", p.pk, p.name) for p in dataset.parents.order_by("pk")]
        steps = [*([together(parents)] if parents else []),
                 _link("provenance_dataset_change", dataset.pk, f"Dataset {dataset.name}"),
                 _link("provenance_snapshot_change", snapshot.pk, f"Snapshot {snapshot.pk}"),
                 _link("mlops_trainingrun_change", run.pk, f"Training run {run.pk}"),
                 format_html("<strong>{}</strong>", str(obj))]
        reason = selectors.model_status_reason_shown(
            status=obj.status, status_reason=obj.status_reason,
            supersedes_version=obj.supersedes.version if obj.supersedes_id else None,
            erasure_detail=sees_erasure_detail(request.user),
        )
        status = facts([
            ("Status", self.status_shown(obj)),
            ("Why", reason or "No reason recorded (registered in this state)."),
            ("Privacy guarantee", self.guarantee(obj)),
            ("Trained", "outside the ledger (an external run: the ledger holds its SHA-256"
                        f"{'' if not obj.artifact_path else ' and the uploaded weights'})" if obj.external
             else "by the ledger's engine"),
        ])
        from mlops.services.registry import LIVE_STATUSES

        if obj.status in LIVE_STATUSES and has_role(request.user, DPO):
            status = format_html('{}<p class="mt-2"><a class="text-primary-600" href="{}">Retire this version…</a></p>',
                                 status, _url("mlops_modelversion_retire", obj.pk))
        panels = [
            Panel(f"{obj}: status and guarantee", status),
            Panel("Lineage", chain(steps), caption="Parent datasets → dataset → snapshot → training run → this version."),
            Panel("Metrics", metrics_table(obj.metrics)),
            epsilon_curve_panel(run),
            budget_panel(dataset),
            output_policy_panel(obj),
            logic_summary_panel(obj),
        ]
        for extra in MODEL_VERSION_PANELS:
            panel = extra(request, obj)
            if panel is not None:
                panels.append(panel)
        panels.append(Panel(
            "Model-lineage report (PDF)", report_jobs_table(kind=ReportKind.MODEL_LINEAGE, object_id=obj.pk),
            buttons=[Button(_url("mlops_modelversion_lineage_report", obj.pk), "Generate the model-lineage PDF",
                            "Queued in the background; the file appears in the report jobs.")],
        ))
        return panels

    def get_urls(self):
        return [
            path("<path:object_id>/lineage-report/", self.admin_site.admin_view(self.lineage_report_view),
                 name="mlops_modelversion_lineage_report"),
            path("<path:object_id>/retire/", self.admin_site.admin_view(self.retire_view),
                 name="mlops_modelversion_retire"),
            *super().get_urls(),
        ]

    def retire_view(self, request, object_id):
        """A DPO retires a live version, saying why (``model_version_retire_by``, audited)."""
        from django import forms
        from django.template.response import TemplateResponse

        from mlops.services.registry import model_version_retire_by

        version = self.get_object(request, unquote(object_id))
        if version is None:
            raise Http404("No model version with this id.")
        if not has_role(request.user, DPO):
            raise PermissionDenied
        back = _url("mlops_modelversion_change", version.pk)

        class RetireForm(forms.Form):
            reason = forms.CharField(max_length=500, widget=forms.Textarea(attrs={"rows": 3}),
                                     help_text="Kept in the audit trail and shown as the version's status reason.")

        form = RetireForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                model_version_retire_by(model_version=version, reason=form.cleaned_data["reason"], actor=request.user)
            except ServiceError as exc:
                form.add_error("reason" if getattr(exc, "field", "") == "reason" else None, str(exc))
            else:
                self.message_user(request, f"{version} is retired.", messages.SUCCESS)
                return HttpResponseRedirect(back)
        context = {**self.admin_site.each_context(request), "title": f"Retire {version}", "version": version,
                   "form": form, "back_url": back}
        return TemplateResponse(request, "admin/mlops/modelversion/retire.html", context,
                                status=400 if request.method == "POST" else 200)

    def lineage_report_view(self, request, object_id):
        version = self.get_object(request, unquote(object_id))
        if version is None:
            raise Http404("No model version with this id.")
        if not self.has_view_permission(request, version):
            raise PermissionDenied
        back = _url("mlops_modelversion_change", version.pk)
        if request.method != "POST":
            return HttpResponseRedirect(back)
        try:
            job = report_jobs.report_job_request(kind=ReportKind.MODEL_LINEAGE, object_id=version.pk, actor=request.user)
        except ServiceError as exc:
            self.message_user(request, f"No report started: {exc}", messages.ERROR)
            return HttpResponseRedirect(back)
        self.message_user(request, format_html('Model-lineage report <a href="{}">job {}</a> queued for {}.',
                                               _url("governance_reportjob_change", job.pk), job.pk, version), messages.SUCCESS)
        return HttpResponseRedirect(back)


class _AppendOnlyPolicyAdmin(ModelAdmin):
    """A policy the DPO sets by adding a row (the previous stays readable): the add form
    saves through the policy's service, nothing is changed or deleted here."""

    @admin.display(description="set", ordering="created_at")
    def created_shown(self, obj) -> str:
        return display.moment(obj.created_at)

    def has_change_permission(self, request, obj=None) -> bool:
        return obj is None and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(AuditPolicy)
class AuditPolicyAdmin(_AppendOnlyPolicyAdmin):
    """Append-only: saving writes a new policy through the service (DPO only, audited)."""

    list_display = ["__str__", "ceilings", "set_by", "created_shown"]
    fields = ["dataset", "processing_activity", "max_tpr_at_1pct_fpr", "max_auc",
              "epsilon_lower_bound_within_claim", "max_attribute_gain", "reason"]

    @admin.display(description="ceilings")
    def ceilings(self, obj: AuditPolicy) -> str:
        parts = []
        if obj.max_tpr_at_1pct_fpr is not None:
            parts.append(f"LiRA TPR at 1% FPR ≤ {display.percent(obj.max_tpr_at_1pct_fpr)}")
        if obj.max_auc is not None:
            parts.append(f"LiRA AUC ≤ {display.number(obj.max_auc)}")
        if obj.epsilon_lower_bound_within_claim:
            parts.append("canary ε lower bound ≤ claimed ε")
        if obj.max_attribute_gain is not None:
            parts.append(f"attribute-inference gain ≤ {display.percent(obj.max_attribute_gain)}")
        return "; ".join(parts) or "none (policy lifted)"

    def save_model(self, request, obj, form, change):
        obj.pk = services.audit_policy_set(
            actor=request.user, dataset=obj.dataset, processing_activity=obj.processing_activity,
            max_tpr_at_1pct_fpr=obj.max_tpr_at_1pct_fpr, max_auc=obj.max_auc,
            epsilon_lower_bound_within_claim=obj.epsilon_lower_bound_within_claim,
            max_attribute_gain=obj.max_attribute_gain, reason=obj.reason,
        ).pk


@admin.register(RectificationPolicy)
class RectificationPolicyAdmin(_AppendOnlyPolicyAdmin):
    """Append-only: saving writes a new policy through the service (DPO only, audited), which
    applies it to the processing activity's stale versions at once."""

    list_display = ["__str__", "action", "set_by", "created_shown"]
    list_filter = ["action"]
    fields = ["processing_activity", "action", "justification"]

    def save_model(self, request, obj, form, change):
        obj.pk = services.rectification_policy_set(
            actor=request.user, processing_activity=obj.processing_activity, action=obj.action,
            justification=obj.justification,
        ).pk


@admin.register(ModelOutputPolicy)
class ModelOutputPolicyAdmin(_AppendOnlyPolicyAdmin):
    """Append-only: saving writes a new policy through the service (DPO only, audited); the
    latest per model name is in force for all its versions."""

    list_display = ["name", "kind", "digits_shown", "withhold_attributions", "set_by", "created_shown"]
    list_filter = ["kind", "withhold_attributions"]
    search_fields = ["name"]
    fields = ["name", "kind", "digits", "withhold_attributions", "reason"]

    @admin.display(description="digits")
    def digits_shown(self, obj: ModelOutputPolicy) -> str:
        return str(obj.digits) if obj.kind == "rounded_probabilities" else display.DASH

    def save_model(self, request, obj, form, change):
        obj.pk = services.output_policy_set(
            actor=request.user, name=obj.name, kind=obj.kind, digits=obj.digits,
            withhold_attributions=obj.withhold_attributions, reason=obj.reason,
        ).pk


def _spent_words(dataset: Dataset, cap: float | None) -> str:
    status = selectors.privacy_budget_status(dataset=dataset)
    spent = "∞" if status["spent_epsilon"] is None else display.epsilon(status["spent_epsilon"])
    committed = "∞" if status["committed_epsilon"] is None else display.epsilon(status["committed_epsilon"])
    cap_text = "no cap" if cap is None else f"cap {display.number(cap)}"
    return f"{spent} spent, {committed} with runs in progress; {cap_text}"


@admin.register(PrivacyBudget)
class PrivacyBudgetAdmin(PanelsAdminMixin, ModelAdmin):
    list_display = ["dataset", "cap_display", "delta_display", "spent", "set_by", "set_shown"]
    fields = ["dataset", "epsilon_cap", "delta", "set_by", "set_shown"]
    readonly_fields = ["set_by", "set_shown"]

    @admin.display(description=header("ε cap"), ordering="epsilon_cap")
    def cap_display(self, obj: PrivacyBudget) -> str:
        return display.number(obj.epsilon_cap)

    @admin.display(description=DELTA, ordering="delta")
    def delta_display(self, obj: PrivacyBudget) -> str:
        return display.delta(obj.delta)

    @admin.display(description="spent")
    def spent(self, obj: PrivacyBudget) -> str:
        if obj.pk is None:
            return display.DASH
        status = selectors.privacy_budget_status(dataset=obj.dataset)
        committed = status["committed_epsilon"]
        words = _spent_words(obj.dataset, obj.epsilon_cap)
        if committed is None or not obj.epsilon_cap:
            return words
        share = min(100, round(100 * committed / obj.epsilon_cap))
        return format_html('<progress max="100" value="{}" style="width:6em"></progress> <span>{}</span>', share, words)

    @admin.display(description="set")
    def set_shown(self, obj: PrivacyBudget) -> str:
        return display.moment(obj.set_at) if obj.pk else display.DASH

    def get_panels(self, request, obj: PrivacyBudget) -> list[Panel]:
        return [budget_panel(obj.dataset)]

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def save_model(self, request, obj, form, change):
        # Through the service: DPO only, audited with the previous cap.
        services.privacy_budget_set(
            dataset=obj.dataset, epsilon_cap=obj.epsilon_cap, delta=obj.delta, actor=request.user
        )


@admin.register(PrivacyLedgerEntry)
class PrivacyLedgerEntryAdmin(ReadOnlyAdmin):
    list_display = ["__str__", "dataset", "run_link", "state", "non_private", "planned_display", "epsilon_display",
                    "delta_display"]
    list_filter = ["state", "non_private"]
    list_select_related = ["dataset", "training_run"]
    fields = ["dataset", "run_link", "state", "non_private", "planned_display", "epsilon_display", "delta_display",
              "created_shown", "updated_shown"]
    readonly_fields = fields

    @admin.display(description="training run")
    def run_link(self, obj: PrivacyLedgerEntry) -> str:
        return _link("mlops_trainingrun_change", obj.training_run_id, str(obj.training_run))

    @admin.display(description=header("planned ε"))
    def planned_display(self, obj: PrivacyLedgerEntry) -> str:
        return display.epsilon(obj.planned_epsilon, non_private=obj.non_private)

    @admin.display(description=EPSILON)
    def epsilon_display(self, obj: PrivacyLedgerEntry) -> str:
        if obj.state == LedgerState.RESERVED and obj.epsilon is None and not obj.non_private:
            return display.DASH
        return display.epsilon(obj.epsilon, non_private=obj.non_private)

    @admin.display(description=DELTA)
    def delta_display(self, obj: PrivacyLedgerEntry) -> str:
        return display.delta(obj.delta)

    @admin.display(description="reserved")
    def created_shown(self, obj: PrivacyLedgerEntry) -> str:
        return display.moment(obj.created_at)

    @admin.display(description="updated")
    def updated_shown(self, obj: PrivacyLedgerEntry) -> str:
        return display.moment(obj.updated_at)


# The dataset page is provenance's; the privacy-budget ledger and the registry are mlops's.
# mlops stands above provenance, so it extends that page rather than provenance reaching up.
admin.site.unregister(Dataset)


@admin.register(Dataset)
class DatasetWithBudgetAdmin(provenance_admin.DatasetAdmin):
    readonly_fields = [*provenance_admin.DatasetAdmin.readonly_fields, "privacy_budget_spent"]
    fields = readonly_fields

    @admin.display(description="privacy budget (ε spent against the cap)")
    def privacy_budget_spent(self, obj) -> str:
        status = selectors.privacy_budget_status(dataset=obj)
        spent = status["spent_epsilon"]
        spent_text = "∞ (a non-private model was trained)" if spent is None else display.epsilon(spent)
        runs = len(status["runs"])
        if status["epsilon_cap"] is None:
            return f"spent ε = {spent_text} at δ = {display.delta(status['delta'])} over {runs} run(s); no cap set"
        return (f"spent ε = {spent_text} of a cap of {display.number(status['epsilon_cap'])} at "
                f"δ = {display.delta(status['delta'])} over {runs} run(s) (chart above)")

    def get_panels(self, request, obj: Dataset) -> list[Panel]:
        panels = super().get_panels(request, obj)
        versions = list(selectors.model_versions_visible().filter(training_run__snapshot__dataset=obj).order_by("pk"))
        rows = [[_link("mlops_modelversion_change", v.pk, str(v)), v.get_status_display(),
                 display.epsilon(v.epsilon, non_private=v.non_private),
                 _link("mlops_trainingrun_change", v.training_run_id, f"run {v.training_run_id}"),
                 _link("provenance_snapshot_change", v.training_run.snapshot_id, f"snapshot {v.training_run.snapshot_id}")]
                for v in versions]
        models = display.table(["Model version", "Status", EPSILON, "Training run", "Snapshot"], rows,
                               empty="No model has been trained on this dataset.")
        return [*panels[:2], budget_panel(obj), Panel("Models trained on it", models), *panels[2:]]

