"""Data protection impact assessments (Art. 35) and report jobs.

A DPIA is versioned: once signed, a version is immutable, and any change starts a new
version that copies the signed one. Only the review fields of a signed version may still
change, so the system can say "this assessment no longer matches the evidence" without
rewriting what the DPO signed.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from governance.models import ProcessingActivity

# governance/models.py re-exports this module with a star import: keep that to the models.


class DpiaImmutableError(Exception):
    """Raised on an attempt to change a signed DPIA version outside its review fields."""


class DpiaStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    SIGNED = "signed", "Signed"
    REVIEW_REQUIRED = "review_required", "Review required (evidence changed since signing)"


class Wp248Criterion(models.TextChoices):
    """The nine screening criteria of the Article 29 Working Party guidelines WP248 rev.01."""

    EVALUATION_SCORING = "evaluation_scoring", "Evaluation or scoring"
    AUTOMATED_DECISION = "automated_decision", "Automated decision-making with legal or similar significant effect"
    SYSTEMATIC_MONITORING = "systematic_monitoring", "Systematic monitoring"
    SENSITIVE_DATA = "sensitive_data", "Sensitive data or data of a highly personal nature"
    LARGE_SCALE = "large_scale", "Data processed on a large scale"
    MATCHING_COMBINING = "matching_combining", "Matching or combining datasets"
    VULNERABLE_SUBJECTS = "vulnerable_subjects", "Data concerning vulnerable data subjects"
    INNOVATIVE_TECHNOLOGY = "innovative_technology", "Innovative use or application of new technological solutions"
    PREVENTS_RIGHTS = "prevents_rights", "Processing that prevents data subjects from exercising a right or using a service"


class Likelihood(models.TextChoices):
    REMOTE = "remote", "Remote"
    POSSIBLE = "possible", "Possible"
    PROBABLE = "probable", "Probable"


class Severity(models.TextChoices):
    MINIMAL = "minimal", "Minimal"
    SIGNIFICANT = "significant", "Significant"
    SEVERE = "severe", "Severe"


class RiskLevel(models.TextChoices):
    LOW = "low", "Low"
    MEDIUM = "medium", "Medium"
    HIGH = "high", "High"


LIKELIHOOD_ORDER = [c.value for c in Likelihood]
SEVERITY_ORDER = [c.value for c in Severity]


def risk_level(likelihood: str, severity: str) -> str:
    """ICO-template scoring: likelihood × severity on 1..3 each; 1–2 low, 3–4 medium, 6–9 high."""
    score = (LIKELIHOOD_ORDER.index(likelihood) + 1) * (SEVERITY_ORDER.index(severity) + 1)
    if score <= 2:
        return RiskLevel.LOW
    if score <= 4:
        return RiskLevel.MEDIUM
    return RiskLevel.HIGH


# Fields of a signed version that may still change: the review markers only.
DPIA_REVIEW_FIELDS = frozenset({"status", "review_reason", "marked_for_review_at", "updated_at"})


class Dpia(models.Model):
    """One version of the DPIA of a processing activity."""

    processing_activity = models.ForeignKey(ProcessingActivity, on_delete=models.PROTECT, related_name="dpias")
    version = models.PositiveIntegerField(default=1)
    previous_version = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="next_version"
    )
    status = models.CharField(max_length=20, choices=DpiaStatus.choices, default=DpiaStatus.DRAFT, db_index=True)
    title = models.CharField(max_length=200)
    model_versions = models.ManyToManyField(
        "mlops.ModelVersion", blank=True, related_name="dpias", db_table="governance_dpia_model_versions")
    # WP248 "evaluation or scoring" and "automated decision": the model table is not ours,
    # so whether the covered models decide about people is an input of the assessment.
    models_used_for_decisions = models.BooleanField(
        default=False, help_text="The covered models are used to take decisions about people."
    )
    # Screening outcome
    dpia_required = models.BooleanField(default=False, help_text="Two or more WP248 criteria, or an Art. 35(3) case.")
    article_35_3_cases = models.JSONField(default=list, blank=True, help_text='e.g. ["a", "b"]')
    required_override = models.BooleanField(
        null=True, blank=True, help_text="The DPO's decision when it departs from the screening outcome."
    )
    required_override_justification = models.TextField(blank=True)
    # Art. 35(7)
    systematic_description = models.TextField(blank=True, help_text="Art. 35(7)(a)")
    necessity_and_proportionality = models.TextField(blank=True, help_text="Art. 35(7)(b)")
    measures = models.TextField(blank=True, help_text="Art. 35(7)(d): measures beyond those shown from the evidence.")
    dpo_advice = models.TextField(blank=True, help_text="Art. 35(2)")
    data_subject_views = models.TextField(blank=True, help_text="Art. 35(9): the views sought and received.")
    views_not_sought_reason = models.TextField(blank=True, help_text="Art. 35(9): why views were not sought.")
    review_date = models.DateField(null=True, blank=True)
    prior_consultation_required = models.BooleanField(
        default=False, help_text="Art. 36: high residual risk remains after the measures."
    )
    signed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    signed_at = models.DateTimeField(null=True, blank=True)
    review_reason = models.TextField(blank=True)
    marked_for_review_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "governance_dpia"  # named when DPIAs lived in governance
        ordering = ["processing_activity_id", "-version"]
        verbose_name = "DPIA"
        verbose_name_plural = "DPIAs"
        constraints = [
            models.UniqueConstraint(fields=["processing_activity", "version"], name="unique_dpia_activity_version")
        ]

    def __str__(self) -> str:
        # The default title already begins "DPIA:"; a second "DPIA" read "DPIA DPIA: …".
        title = self.title if self.title.lower().startswith("dpia") else f"DPIA: {self.title}"
        return f"{title}, version {self.version} ({self.get_status_display().lower()})"

    def save(self, *args, **kwargs):
        if not self._state.adding and self.is_signed_version:
            update_fields = kwargs.get("update_fields")
            if update_fields is None or not set(update_fields) <= DPIA_REVIEW_FIELDS:
                raise DpiaImmutableError("A signed DPIA version is immutable: start a new version to change it.")
        super().save(*args, **kwargs)
        self._stored_status = self.status

    @classmethod
    def from_db(cls, db, field_names, values):
        instance = super().from_db(db, field_names, values)
        instance._stored_status = instance.__dict__.get("status")
        return instance

    @property
    def is_signed_version(self) -> bool:
        return getattr(self, "_stored_status", None) in (DpiaStatus.SIGNED, DpiaStatus.REVIEW_REQUIRED)

    @property
    def effective_required(self) -> bool:
        return self.dpia_required if self.required_override is None else self.required_override


class DpiaScreeningAnswer(models.Model):
    """One WP248 criterion: what the records suggest and what the DPO confirmed."""

    dpia = models.ForeignKey(Dpia, on_delete=models.CASCADE, related_name="screening")
    criterion = models.CharField(max_length=30, choices=Wp248Criterion.choices)
    proposed = models.BooleanField(default=False)
    source = models.TextField(blank=True, help_text="The evidence the proposal was drawn from.")
    confirmed = models.BooleanField(null=True, blank=True, help_text="The DPO's answer; empty until confirmed.")
    override_reason = models.TextField(blank=True, help_text="Why the DPO's answer departs from the proposal.")
    confirmed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    confirmed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "governance_dpiascreeninganswer"  # named when DPIAs lived in governance
        ordering = ["dpia_id", "id"]
        constraints = [models.UniqueConstraint(fields=["dpia", "criterion"], name="unique_dpia_criterion")]

    def __str__(self) -> str:
        return f"{self.criterion}: {self.answer}"

    @property
    def answer(self) -> bool:
        return self.proposed if self.confirmed is None else self.confirmed


class DpiaRisk(models.Model):
    """One risk to the rights and freedoms of data subjects (Art. 35(7)(c))."""

    dpia = models.ForeignKey(Dpia, on_delete=models.CASCADE, related_name="risks")
    description = models.TextField()
    likelihood = models.CharField(max_length=10, choices=Likelihood.choices)
    severity = models.CharField(max_length=12, choices=Severity.choices)
    inherent_level = models.CharField(max_length=6, choices=RiskLevel.choices)
    mitigations = models.TextField(blank=True, help_text="The measures that reduce this risk.")
    residual_likelihood = models.CharField(max_length=10, choices=Likelihood.choices)
    residual_severity = models.CharField(max_length=12, choices=Severity.choices)
    residual_level = models.CharField(max_length=6, choices=RiskLevel.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "governance_dpiarisk"  # named when DPIAs lived in governance
        ordering = ["dpia_id", "id"]
        verbose_name = "DPIA risk"

    def __str__(self) -> str:
        return f"{self.description[:60]} ({self.inherent_level} → {self.residual_level})"


