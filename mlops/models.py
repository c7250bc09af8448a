"""Training runs, the model registry, SISA shards, membership-inference audits and the
per-dataset privacy-budget ledger.

Lineage: provenance.Snapshot → TrainingRun (``snapshot``, related ``training_runs``) →
ModelVersion (``training_run``, related ``model_versions``).
"""

from __future__ import annotations

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from governance.models import DataSubject
from provenance.models import Dataset, Snapshot


class TaskType(models.TextChoices):
    BINARY = "binary", "Tabular binary classification"
    MULTICLASS = "multiclass", "Tabular multi-class classification"


class Optimizer(models.TextChoices):
    SGD = "sgd", "SGD"
    ADAM = "adam", "Adam"


class Accountant(models.TextChoices):
    RDP = "rdp", "Rényi DP (RDP)"
    PRV = "prv", "Privacy random variables (PRV)"


class RunStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


FINISHED_STATUSES = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)


class Executor(models.TextChoices):
    INTERNAL = "internal", "Trained by the ledger's engine"
    # Trained elsewhere (the team's own GPUs, any Opacus model) on an exported snapshot: the
    # ledger reserves the budget, then settles it from the accountant history reported back.
    EXTERNAL = "external", "Trained outside the ledger and reported back"


class TrainingRun(models.Model):
    """One request to train a model on a consent-filtered snapshot, and what the training did."""

    name = models.CharField(max_length=200, help_text="Model name; versions are numbered per name.")
    snapshot = models.ForeignKey(Snapshot, on_delete=models.PROTECT, related_name="training_runs")
    task = models.CharField(max_length=20, choices=TaskType.choices, default=TaskType.BINARY)
    # {"hidden_sizes": [64], "activation": "relu", "dropout": 0.0}
    model_spec = models.JSONField(default=dict)
    optimizer = models.CharField(max_length=10, choices=Optimizer.choices, default=Optimizer.SGD)
    learning_rate = models.FloatField(default=0.1)
    epochs = models.PositiveIntegerField(default=5)
    batch_size = models.PositiveIntegerField(default=256, help_text="Expected batch size (Poisson sampling).")
    seed = models.IntegerField(default=0)
    validation_split = models.FloatField(default=0.1, help_text="Share of subjects used for validation.")
    holdout_fraction = models.FloatField(
        default=0.2, help_text="Share of subjects kept out of training as non-members for the MIA audit."
    )
    # DP configuration: exactly one of target_epsilon / requested_noise_multiplier when private.
    target_epsilon = models.FloatField(null=True, blank=True)
    requested_noise_multiplier = models.FloatField(null=True, blank=True)
    target_delta = models.FloatField()
    max_grad_norm = models.FloatField(default=1.0)
    accountant = models.CharField(max_length=5, choices=Accountant.choices, default=Accountant.RDP)
    allow_non_private = models.BooleanField(default=False)
    # False: no figure computed on the training data is released (per-epoch loss and train
    # accuracy are null), since such figures fall outside ε; validation figures only.
    release_training_metrics = models.BooleanField(default=True)
    # {"shards": S, "slices": R} for SISA training; null for a single model.
    sisa = models.JSONField(null=True, blank=True)
    # An unlearning run keeps everyone else where the original run placed them: its
    # SisaAssignment rows are those of this run (erased people's rows go with them),
    # so unlearning one person does not copy every placement.
    sisa_placements_from = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="+",
        help_text="The SISA run whose subject-to-shard assignments this run uses.",
    )

    # What the run read: the number of amendments its snapshot had when the training data
    # were loaded (read before the rows, so a later amendment is never counted as seen).
    # A version whose run read fewer amendments than an erasure's was trained on the person.
    trained_on_amendment = models.PositiveIntegerField(null=True, blank=True)
    # The model version this run was started to replace (erasure remediation), if any.
    remediates = models.ForeignKey(
        "ModelVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="remediation_runs"
    )

    executor = models.CharField(max_length=10, choices=Executor.choices, default=Executor.INTERNAL, db_index=True)
    # External runs: the SHA-256 of the run token answered once at creation (the token itself
    # is never stored), the moment the unreported reservation is released, and the report.
    run_token_hash = models.CharField(max_length=64, blank=True)
    reservation_expires_at = models.DateTimeField(null=True, blank=True)
    reported_at = models.DateTimeField(null=True, blank=True)
    description = models.TextField(blank=True, help_text="Free text about the model (external runs).")
    mlflow_run_id = models.CharField(max_length=100, blank=True)
    # A DPO's approval for an external run to report more ε than it reserved (at the run's δ).
    overspend_epsilon_limit = models.FloatField(null=True, blank=True)
    overspend_reason = models.TextField(blank=True)
    overspend_approved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    overspend_approved_at = models.DateTimeField(null=True, blank=True)

    status = models.CharField(max_length=12, choices=RunStatus.choices, default=RunStatus.QUEUED, db_index=True)
    # {"epoch": e, "epochs": E, "step": s, "epsilon": ε so far, "shard": k}
    progress = models.JSONField(default=dict, blank=True)
    # [{"epoch", "steps", "loss", "train_accuracy", "val_accuracy", "epsilon", "shard"?}]
    epoch_metrics = models.JSONField(default=list, blank=True)
    error = models.TextField(blank=True)
    celery_task_id = models.CharField(max_length=64, blank=True)
    # The outbox (governance.dispatch): the queue the task goes to and when the broker
    # accepted it (empty: not sent yet, the redispatch sweeper sends it).
    dispatch_queue = models.CharField(max_length=100, blank=True)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    # The lease (governance.leases): refreshed by the worker training it; a lapsed one
    # means the worker died and the run is taken over.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    # Sizes of the subject-wise split, fixed at queue time.
    n_train = models.PositiveIntegerField(default=0)
    n_validation = models.PositiveIntegerField(default=0)
    n_holdout = models.PositiveIntegerField(default=0)
    # The most records any one person has among those the run trains on (an external run:
    # among the snapshot's members when it was exported). ε is a record-level guarantee
    # (DP-SGD samples and clips records); by group privacy a person with k records is
    # protected at (kε, δ(e^{kε}-1)/(e^ε-1)) only, so k is part of the evidence. Taken when the
    # run is queued: the snapshot can only lose members afterwards, so k never understates.
    max_records_per_person = models.PositiveIntegerField(null=True, blank=True)
    n_classes = models.PositiveIntegerField(default=0)

    # The privacy accounting.
    planned_epsilon = models.FloatField(null=True, blank=True, help_text="Null for non-private training (ε = ∞).")
    noise_multiplier = models.FloatField(null=True, blank=True, help_text="σ used (max over shards for SISA).")
    # SISA: σ of every shard, fixed at queue time (shards differ in size, so in σ for one target ε).
    shard_noise_multipliers = models.JSONField(null=True, blank=True)
    sample_rate = models.FloatField(null=True, blank=True)
    steps = models.PositiveIntegerField(null=True, blank=True)
    # [[noise_multiplier, sample_rate, steps], ...]; for SISA {"<shard>": [...]} per shard.
    accountant_history = models.JSONField(default=list, blank=True)
    epsilon = models.FloatField(null=True, blank=True, help_text="Final ε at δ; null means ∞ (non-private).")
    delta = models.FloatField(null=True, blank=True)
    rdp_curve = models.JSONField(null=True, blank=True, help_text="RDP over engine.accounting.RDP_ORDERS.")
    # How features were turned into tensors: feature order, category codes, label classes.
    encoding = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"run {self.pk} ({self.name}, {self.status})"

    @property
    def is_private(self) -> bool:
        return not self.allow_non_private


class ModelStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    # A version whose dataset or processing activity sets an audit policy waits here until
    # its privacy audits pass (then active) or one fails (then audit_failed). It is the
    # lineage's head meanwhile (it holds the people it was trained on, so erasure finds it),
    # but it is not to be served.
    PENDING_AUDIT = "pending_audit", "Awaiting its privacy audit"
    AUDIT_FAILED = "audit_failed", "Failed its audit policy"
    TAINTED = "tainted", "Tainted (a subject withdrew consent or asked for erasure)"
    # Trained on record versions a rectification has since corrected: the lineage's head (it
    # still holds the people it was trained on, so erasure finds it) but not to be served
    # until the processing activity's rectification policy retrains it or accepts it.
    STALE = "stale", "Stale: trained on values since rectified (Art. 16)"
    SUPERSEDED = "superseded", "Superseded"
    RETIRED = "retired", "Retired"


class ModelVersion(models.Model):
    training_run = models.ForeignKey(TrainingRun, on_delete=models.PROTECT, related_name="model_versions")
    name = models.CharField(max_length=200)
    version = models.PositiveIntegerField()
    artifact_path = models.CharField(max_length=500, help_text="Relative to settings.ARTIFACT_ROOT.")
    artifact_sha256 = models.CharField(max_length=64)
    metrics = models.JSONField(default=dict, blank=True)
    epsilon = models.FloatField(null=True, blank=True, help_text="Null means ∞: trained without DP.")
    delta = models.FloatField(null=True, blank=True)
    non_private = models.BooleanField(default=False)
    is_sisa_ensemble = models.BooleanField(default=False)
    status = models.CharField(max_length=20, choices=ModelStatus.choices, default=ModelStatus.ACTIVE, db_index=True)
    status_reason = models.TextField(blank=True)
    # When ``status`` last changed (serving systems poll ?changed_since=); set with it by
    # mlops.services.status.model_versions_status_set.
    status_changed_at = models.DateTimeField(default=timezone.now, db_index=True)
    # Trained outside the ledger (an external run): the ledger holds no weights and cannot
    # retrain or unlearn it; its owner is told when it is tainted.
    external = models.BooleanField(default=False)
    description = models.TextField(blank=True)
    supersedes = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="superseded_by"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["name", "version"], name="unique_model_name_version")]

    def __str__(self) -> str:
        return f"{self.name} v{self.version}"


class SisaAssignment(models.Model):
    """Which shard and slice a person's records fell in (Bourtoule et al. 2021)."""

    # Covered by unique_sisa_run_subject and the subject index below.
    training_run = models.ForeignKey(
        TrainingRun, on_delete=models.CASCADE, related_name="sisa_assignments", db_index=False
    )
    subject = models.ForeignKey(DataSubject, on_delete=models.CASCADE, related_name="+", db_index=False)
    shard = models.PositiveIntegerField()
    slice = models.PositiveIntegerField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["training_run", "subject"], name="unique_sisa_run_subject")]
        indexes = [models.Index(fields=["subject"])]


class SisaCheckpoint(models.Model):
    """The weights of one shard after training on slices 0..slice."""

    training_run = models.ForeignKey(TrainingRun, on_delete=models.CASCADE, related_name="sisa_checkpoints")
    shard = models.PositiveIntegerField()
    slice = models.PositiveIntegerField()
    artifact_path = models.CharField(max_length=500)
    artifact_sha256 = models.CharField(max_length=64)
    n_records = models.PositiveIntegerField(default=0)
    epsilon = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["training_run", "shard", "slice"]
        constraints = [
            models.UniqueConstraint(fields=["training_run", "shard", "slice"], name="unique_sisa_checkpoint")
        ]

    def __str__(self) -> str:
        return f"shard {self.shard}, slice {self.slice} of run {self.training_run_id}"


class MembershipAttack(models.TextChoices):
    LOSS = "loss", "Loss threshold (Yeom et al. 2018)"
    LIRA = "lira", "LiRA with reference models (Carlini et al. 2022)"
    # Score: minus the L1 norm of a record's Integrated Gradients attributions to its true
    # label (mlops.engine.explain.attribution_norms): what per-decision explanations leak.
    EXPLANATION = "explanation", "Explanation-based (Shokri et al. 2021)"


class MembershipInferenceAudit(models.Model):
    """A membership-inference attack against a model version: the cheap loss-threshold
    baseline (Yeom et al. 2018) or LiRA with reference models (Carlini et al. 2022).

    Every figure has a 95% percentile-bootstrap interval (``*_low``/``*_high``); audits
    recorded before intervals existed have none (``bootstrap_resamples`` null). A TPR at an
    FPR is null when the non-members were too few to measure it; ``notes`` says why.
    """

    model_version = models.ForeignKey(
        ModelVersion, on_delete=models.CASCADE, related_name="membership_inference_audits"
    )
    attack = models.CharField(max_length=20, choices=MembershipAttack.choices, default=MembershipAttack.LOSS)
    n_references = models.PositiveIntegerField(
        null=True, blank=True, help_text="Reference models trained for LiRA; null for the loss attack."
    )
    auc = models.FloatField()
    auc_low = models.FloatField(null=True, blank=True)
    auc_high = models.FloatField(null=True, blank=True)
    advantage = models.FloatField(help_text="max(TPR − FPR)")
    advantage_low = models.FloatField(null=True, blank=True)
    advantage_high = models.FloatField(null=True, blank=True)
    tpr_at_1pct_fpr = models.FloatField(null=True, blank=True, help_text="Null when there were fewer than 100 non-members.")
    tpr_at_1pct_fpr_low = models.FloatField(null=True, blank=True)
    tpr_at_1pct_fpr_high = models.FloatField(null=True, blank=True)
    tpr_at_01pct_fpr = models.FloatField(
        null=True, blank=True, help_text="Null when there were fewer than 1,000 non-members."
    )
    tpr_at_01pct_fpr_low = models.FloatField(null=True, blank=True)
    tpr_at_01pct_fpr_high = models.FloatField(null=True, blank=True)
    n_members = models.PositiveIntegerField(help_text="Members attacked (a sample of those available).")
    n_nonmembers = models.PositiveIntegerField(help_text="Non-members attacked (a sample of those available).")
    members_available = models.PositiveIntegerField(null=True, blank=True)
    nonmembers_available = models.PositiveIntegerField(null=True, blank=True)
    sampling_seed = models.BigIntegerField(null=True, blank=True, help_text="Seed of the sample and of the bootstrap.")
    sampling_rule = models.CharField(max_length=300, blank=True, default="")
    bootstrap_resamples = models.PositiveIntegerField(
        null=True, blank=True, help_text="Null: computed before intervals were recorded."
    )
    notes = models.JSONField(default=list, blank=True, help_text="Why a figure is not reported, and caveats.")
    roc = models.JSONField(default=list, help_text="[[fpr, tpr], ...]")
    roc_band = models.JSONField(
        default=list, blank=True, help_text="[[fpr, tpr_low, tpr_high], ...]: the ROC's pointwise 95% bootstrap band."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        # One audit per attack per version: a redelivered audit task finds it and stops.
        constraints = [
            models.UniqueConstraint(fields=["model_version", "attack"], name="unique_membership_audit_per_attack")
        ]

    def __str__(self) -> str:
        return f"{self.get_attack_display().split(' (')[0]} membership-inference audit of {self.model_version}"

    def figures_text(self) -> list[tuple[str, str]]:
        """(label, rounded figure with its interval) for people; the API keeps full floats."""
        from mlops.engine.mia import figure_text

        return [
            ("AUC", figure_text(self.auc, self.auc_low, self.auc_high)),
            ("Advantage (max TPR − FPR)", figure_text(self.advantage, self.advantage_low, self.advantage_high)),
            ("TPR at 1% FPR", figure_text(self.tpr_at_1pct_fpr, self.tpr_at_1pct_fpr_low, self.tpr_at_1pct_fpr_high)),
            ("TPR at 0.1% FPR", figure_text(self.tpr_at_01pct_fpr, self.tpr_at_01pct_fpr_low, self.tpr_at_01pct_fpr_high)),
        ]

    def auc_text(self) -> str:
        """``AUC 0.52 (95% CI 0.44–0.60, 65 non-members)``."""
        if self.auc_low is None or self.auc_high is None:
            return f"AUC {self.auc:.2f} (no interval: computed before intervals were recorded, {self.n_nonmembers:,} non-members)"
        return f"AUC {self.auc:.2f} (95% CI {self.auc_low:.2f}–{self.auc_high:.2f}, {self.n_nonmembers:,} non-members)"

    def sizes_text(self) -> str:
        if self.members_available is None or self.nonmembers_available is None:
            return f"{self.n_members:,} members / {self.n_nonmembers:,} non-members"
        return (
            f"{self.n_members:,} of {self.members_available:,} members / "
            f"{self.n_nonmembers:,} of {self.nonmembers_available:,} non-members"
        )



class AuditKind(models.TextChoices):
    # The loss attack's job also runs the explanation-based attack on the same sample.
    LOSS = "loss", "Membership inference: loss threshold and explanation-based"
    LIRA = "lira", "Membership inference: LiRA with reference models"
    CANARY = "canary", "Empirical ε lower bound (canaries in one audit run)"
    ATTRIBUTE = "attribute", "Attribute inference against imputation"


class AuditJobStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    COMPLETED = "completed", "Completed"
    SKIPPED = "skipped", "Not applicable"
    FAILED = "failed", "Failed"


class PrivacyAuditJob(models.Model):
    """One privacy audit of one model version, as work: its state, progress and outcome.

    Results live in the audit's own table (membership, canary, attribute inference); this
    row says whether the audit ran, how far it is and why it did not (``notes``). Unique per
    version and kind, so a redelivered task finds its job and a finished one is not redone.
    """

    model_version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="audit_jobs")
    kind = models.CharField(max_length=10, choices=AuditKind.choices)
    status = models.CharField(max_length=10, choices=AuditJobStatus.choices, default=AuditJobStatus.QUEUED)
    progress = models.JSONField(default=dict, blank=True, help_text="{'done': n, 'total': m, 'stage': text}")
    notes = models.TextField(blank=True, help_text="Why the audit was not applicable, or why it failed.")
    attempts = models.PositiveIntegerField(default=0)
    # Outbox and lease (governance.dispatch, governance.leases), as for training runs: a
    # lost message is re-sent by the sweeper, a dead worker's job taken over.
    dispatched_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["model_version", "kind"]
        constraints = [models.UniqueConstraint(fields=["model_version", "kind"], name="unique_audit_job_per_kind")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} of {self.model_version}"


class CanaryAudit(models.Model):
    """An empirical lower bound on ε from one audit run (Steinke, Nasr & Jagielski 2023).

    The audit run trains the version's configuration again with canaries, each included
    with probability ½, and counts how well their scores guess which were included. Its
    model is never published. ``flagged``: the lower bound exceeds the ε the accountant
    claims for that run, which can only happen when the implementation or the accounting
    is wrong — a privacy bug.
    """

    model_version = models.OneToOneField(ModelVersion, on_delete=models.CASCADE, related_name="canary_audit")
    claimed_epsilon = models.FloatField(null=True, blank=True, help_text="ε the accountant claims; null: ∞.")
    epsilon_lower_bound = models.FloatField()
    confidence = models.FloatField()
    delta = models.FloatField()
    n_canaries = models.PositiveIntegerField()
    n_guesses = models.PositiveIntegerField()
    n_correct = models.PositiveIntegerField()
    flagged = models.BooleanField(default=False)
    seed = models.BigIntegerField()
    notes = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"Canary audit of {self.model_version}"

    def bound_text(self) -> str:
        """``ε ≥ 0.31 (95% confidence; claimed ε = 1.00)`` for people."""
        claimed = "∞" if self.claimed_epsilon is None else f"{self.claimed_epsilon:.2f}"
        return f"ε ≥ {self.epsilon_lower_bound:.2f} ({self.confidence:.0%} confidence; claimed ε = {claimed})"


class AttributeInferenceAudit(models.Model):
    """How much more an attacker with the model infers about one sensitive feature of the
    people it was trained on than one imputing it from their other features (Jayaraman &
    Evans 2022). ``gain`` (attack accuracy − imputation accuracy) is the risk, not the raw
    accuracy: imputation needs no model at all."""

    model_version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="attribute_inference_audits")
    feature = models.CharField(max_length=200)
    special_category = models.BooleanField(default=False, help_text="Art. 9 special-category data.")
    attack_accuracy = models.FloatField()
    imputation_accuracy = models.FloatField()
    inversion_accuracy = models.FloatField(null=True, blank=True)
    majority_accuracy = models.FloatField(null=True, blank=True)
    gain = models.FloatField()
    gain_low = models.FloatField(null=True, blank=True)
    gain_high = models.FloatField(null=True, blank=True)
    n_population = models.PositiveIntegerField()
    n_members = models.PositiveIntegerField()
    notes = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["model_version", "feature"]
        constraints = [
            models.UniqueConstraint(fields=["model_version", "feature"], name="unique_attribute_audit_per_feature")
        ]

    def __str__(self) -> str:
        return f"Attribute inference of {self.feature} against {self.model_version}"

    def gain_text(self) -> str:
        from mlops.engine.mia import figure_text

        return figure_text(self.gain, self.gain_low, self.gain_high)


class UnlearningCheck(models.Model):
    """Whether a version made to forget people (SISA unlearning or a retrain, for an
    erasure) remembers them more than models that never saw them (U-LiRA style).

    Scored while the erasure still holds the people's records in memory; the records and
    their scores are never stored, only the summary figures below.
    """

    model_version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="unlearning_checks")
    previous_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Not a foreign key: rights stands above mlops and mlops never imports it.
    erasure_request_id = models.PositiveIntegerField(db_index=True)
    n_records = models.PositiveIntegerField()
    reference = models.CharField(max_length=300, help_text="What the version is compared with.")
    new_score = models.FloatField(help_text="Member-likeness of the erased records under the new version, 0–1.")
    reference_score = models.FloatField(help_text="The same under the reference, 0–1.")
    previous_score = models.FloatField(null=True, blank=True, help_text="The same under the version replaced.")
    threshold = models.FloatField(help_text="Largest new score that still passes (one-sided 95%).")
    passed = models.BooleanField()
    notes = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["model_version", "erasure_request_id"], name="unique_unlearning_check")
        ]

    def __str__(self) -> str:
        return f"Unlearning check of {self.model_version} for erasure request {self.erasure_request_id}"

    def summary_text(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        previous = "" if self.previous_score is None else f", {self.previous_score:.2f} under the version replaced"
        return (
            f"Unlearning check {verdict}: member-likeness of the {self.n_records:,} erased record(s) "
            f"{self.new_score:.2f} under the new version against {self.reference_score:.2f} under "
            f"{self.reference}{previous} (0.50 = like people never seen; fails above {self.threshold:.2f})."
        )


class AuditPolicy(models.Model):
    """Ceilings a dataset's or processing activity's model versions must pass before they
    become active. Append-only: a change is a new row, the latest per scope applies, so the
    history of what was required when stays readable."""

    dataset = models.ForeignKey(Dataset, null=True, blank=True, on_delete=models.PROTECT, related_name="audit_policies")
    processing_activity = models.ForeignKey(
        "governance.ProcessingActivity", null=True, blank=True, on_delete=models.PROTECT, related_name="audit_policies"
    )
    # The validators give the admin form the service's ranges (the service checks them again).
    max_tpr_at_1pct_fpr = models.FloatField(
        null=True, blank=True, help_text="LiRA's TPR at 1% FPR must not exceed this (0–1).",
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
    )
    max_auc = models.FloatField(
        null=True, blank=True, help_text="LiRA's AUC must not exceed this (0.5–1).",
        validators=[MinValueValidator(0.5), MaxValueValidator(1.0)],
    )
    epsilon_lower_bound_within_claim = models.BooleanField(
        default=False, help_text="The canary audit's ε lower bound must not exceed the claimed ε."
    )
    max_attribute_gain = models.FloatField(
        null=True, blank=True, help_text="No sensitive feature's attribute-inference gain may exceed this (0–1).",
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
    )
    set_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "audit policies"
        constraints = [
            models.CheckConstraint(
                condition=models.Q(dataset__isnull=False, processing_activity__isnull=True)
                | models.Q(dataset__isnull=True, processing_activity__isnull=False),
                name="audit_policy_one_scope",
            )
        ]

    def __str__(self) -> str:
        scope = f"dataset {self.dataset_id}" if self.dataset_id else f"processing activity {self.processing_activity_id}"
        return f"Audit policy of {scope}"

    @property
    def is_empty(self) -> bool:
        return (self.max_tpr_at_1pct_fpr is None and self.max_auc is None and not self.epsilon_lower_bound_within_claim
                and self.max_attribute_gain is None)


class PrivacyBudget(models.Model):
    """The ε cap (at δ) a DPO set for all training on a dataset; changes are audit events."""

    dataset = models.OneToOneField(Dataset, on_delete=models.CASCADE, related_name="privacy_budget")
    epsilon_cap = models.FloatField()
    delta = models.FloatField()
    set_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    set_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"ε ≤ {self.epsilon_cap} at δ={self.delta} for {self.dataset}"


class LedgerState(models.TextChoices):
    RESERVED = "reserved", "Reserved (queued or running: planned curve counts)"
    SPENT = "spent", "Spent (succeeded: actual curve counts)"
    RELEASED = "released", "Released (failed or cancelled before a model was released)"


class PrivacyLedgerEntry(models.Model):
    """One training run's privacy cost against one dataset, as an RDP curve over fixed orders."""

    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="privacy_ledger_entries")
    training_run = models.OneToOneField(TrainingRun, on_delete=models.PROTECT, related_name="ledger_entry")
    state = models.CharField(max_length=10, choices=LedgerState.choices, default=LedgerState.RESERVED)
    non_private = models.BooleanField(default=False)
    planned_epsilon = models.FloatField(null=True, blank=True)
    planned_rdp = models.JSONField(null=True, blank=True)
    epsilon = models.FloatField(null=True, blank=True)
    delta = models.FloatField(null=True, blank=True)
    rdp_curve = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["dataset", "id"]
        verbose_name_plural = "privacy ledger entries"
        indexes = [models.Index(fields=["dataset", "state"])]

    def __str__(self) -> str:
        return f"Ledger entry of run {self.training_run_id}"


class PrivacyLedgerTotal(models.Model):
    """The composed RDP of a dataset's ledger, kept so reading the spent budget is one row.

    Recomputed from the entries whenever an entry changes, under a row lock that also
    serialises budget checks, so two concurrent requests cannot both pass the cap.
    """

    dataset = models.OneToOneField(Dataset, on_delete=models.CASCADE, related_name="privacy_ledger_total")
    spent_rdp = models.JSONField(null=True, blank=True)
    reserved_rdp = models.JSONField(null=True, blank=True)
    spent_runs = models.PositiveIntegerField(default=0)
    reserved_runs = models.PositiveIntegerField(default=0)
    non_private_runs = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)


class RectificationAction(models.TextChoices):
    RETRAIN = "retrain", "Retrain on a fresh snapshot"
    ACCEPT = "accept", "Accept: keep serving the version trained on the old values"


class RectificationPolicy(models.Model):
    """What a processing activity's DPO decided for model versions trained on values a
    rectification (Art. 16) corrected since: retrain them on a fresh snapshot, or accept
    them with a recorded justification. Append-only: a change is a new row, the latest per
    activity applies, so what was decided when stays readable."""

    processing_activity = models.ForeignKey(
        "governance.ProcessingActivity", on_delete=models.PROTECT, related_name="rectification_policies"
    )
    action = models.CharField(max_length=10, choices=RectificationAction.choices)
    justification = models.TextField(help_text="Why this remediation is proportionate for the activity.")
    set_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "rectification policies"
        indexes = [models.Index(fields=["processing_activity", "-id"])]

    def __str__(self) -> str:
        return f"Rectification policy {self.pk} of processing activity {self.processing_activity_id}: {self.action}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise ValueError("Rectification policies are append-only: record a new policy instead.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise ValueError("Rectification policies are append-only: record a new policy instead.")


class OutputPolicyKind(models.TextChoices):
    FULL = "full_probabilities", "Full probabilities"
    ROUNDED = "rounded_probabilities", "Rounded probabilities (k digits)"
    BAND = "label_with_band", "Top label with a confidence band"
    LABEL = "label_only", "Label only"


class ModelOutputPolicy(models.Model):
    """What a decision of a model reveals (against model inversion and membership
    inference): every version of the model ``name`` answers with full or rounded
    probabilities, the top label with a confidence band, or the label alone; and may
    withhold per-decision attributions while its explanation-based membership attack
    exceeds the audit ceiling. Append-only: a change is a new row, the latest is in force."""

    name = models.CharField(max_length=200, db_index=True, help_text="The model name (all its versions).")
    kind = models.CharField(max_length=30, choices=OutputPolicyKind.choices)
    digits = models.PositiveSmallIntegerField(
        default=2, validators=[MaxValueValidator(6)], help_text="Digits kept by rounded probabilities (0–6)."
    )
    withhold_attributions = models.BooleanField(
        default=False,
        help_text="Withhold per-decision attributions when the explanation attack exceeds the audit ceiling.",
    )
    reason = models.TextField(blank=True)
    set_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "model output policy"
        verbose_name_plural = "model output policies"
        indexes = [models.Index(fields=["name", "-id"])]

    def __str__(self) -> str:
        return f"Output policy {self.pk} of {self.name}: {self.get_kind_display()}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise ValueError("Output policies are append-only: record a new policy instead.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise ValueError("Output policies are append-only: record a new policy instead.")


class ModelExplanationSummary(models.Model):
    """The "logic involved" of a model version (Art. 15(1)(h), the DPIA): global
    attributions over its run's validation split, computed once after registration
    (``mlops.services.explanations.model_explanation_summary_compute``)."""

    model_version = models.OneToOneField(ModelVersion, on_delete=models.CASCADE, related_name="explanation_summary")
    method = models.CharField(max_length=40, help_text="Attribution method of the per-feature figures.")
    baseline_rule = models.TextField()
    features_used = models.JSONField(default=list, help_text="The dataset features the model reads, in order.")
    # [{"feature", "mean_abs", "mean_signed"}], most influential first.
    global_attributions = models.JSONField(default=list)
    n_rows = models.PositiveIntegerField(help_text="Validation records the figures are averaged over.")
    notes = models.JSONField(default=list, blank=True)
    # Set when the figures could not be computed (the weights were missing, ...): the row
    # records the outcome so the task is not sent again for ever; the summary is not shown.
    error = models.TextField(blank=True)
    computed_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "model explanation summaries"

    def __str__(self) -> str:
        return f"Logic summary of {self.model_version}"
