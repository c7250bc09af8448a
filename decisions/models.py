"""Automated decisions (GDPR Art. 22): each prediction a served model made, the human review
a person may ask for (Art. 22(3)), and the per-activity option to keep the inputs.

What a ``Decision`` holds is chosen so the decision log never becomes a copy of the
people's data: the model version, the time, the output as it was presented (after the
model's output policy), a summary of the explanation (feature names, directions and
contributions, never a value), the pseudonym of the person decided about when one was
given, and a keyed hash of the input row (``input_hash``), which recognises the same input
presented again without holding it. The input values themselves are stored only when the
processing activity has a ``DecisionInputRetention`` in force, in ``DecisionInput``, with
the date the purge deletes them.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from governance.models import AppendOnlyModel


class DecisionInputRetention(AppendOnlyModel):
    """Whether a processing activity's decisions keep their input rows, for how long and
    under which article. Append-only: a change is a new row and the latest is in force, so
    what was kept when stays readable; ``days = 0`` turns keeping off again."""

    processing_activity = models.ForeignKey(
        "governance.ProcessingActivity", on_delete=models.PROTECT, related_name="decision_input_retentions"
    )
    days = models.PositiveIntegerField(help_text="Days an input row is kept after its decision; 0: not kept.")
    article = models.CharField(
        max_length=200, blank=True,
        help_text="The provision that justifies keeping the inputs, e.g. 'Art. 22(3) GDPR: human review on request'.",
    )
    reason = models.TextField(help_text="Why keeping the inputs for this period is necessary (Art. 5(1)(c), (e)).")
    set_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["processing_activity", "-id"])]
        constraints = [
            models.CheckConstraint(condition=Q(days=0) | ~Q(article=""), name="decision_input_retention_article"),
        ]

    def __str__(self) -> str:
        if not self.days:
            return f"Inputs not kept for processing activity {self.processing_activity_id}"
        return f"Inputs kept {self.days} days for processing activity {self.processing_activity_id} ({self.article})"


class Decision(models.Model):
    """One prediction of a served model version about one row (one person, or none)."""

    model_version = models.ForeignKey("mlops.ModelVersion", on_delete=models.PROTECT, related_name="decisions")
    decided_at = models.DateTimeField(db_index=True)
    # One request's decisions share a batch; position is the row's index in the request.
    batch = models.UUIDField(db_index=True)
    position = models.PositiveIntegerField()
    outcome = models.CharField(max_length=200, help_text="The decided label, as text (counted by the decision log).")
    output = models.JSONField(help_text="The output as presented, after the model's output policy.")
    output_policy = models.CharField(max_length=30, help_text="The output policy kind applied.")
    explanation = models.JSONField(
        null=True, blank=True,
        help_text="Method, top features (name, direction, contribution), convergence delta, the feature a "
                  "counterfactual would change; never an input value. Null: not explained.",
    )
    attributions_withheld = models.BooleanField(default=False)
    subject_pseudonym = models.CharField(
        max_length=64, blank=True, db_index=True, help_text="Pseudonym of the person decided about, if given."
    )
    input_hash = models.CharField(max_length=64, db_index=True, help_text="HMAC-SHA-256 of the validated input row.")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-decided_at", "-id"]
        indexes = [models.Index(fields=["model_version", "decided_at"])]
        constraints = [models.UniqueConstraint(fields=["batch", "position"], name="unique_decision_batch_position")]

    def __str__(self) -> str:
        return f"Decision {self.pk}: {self.outcome}"


class DecisionInput(models.Model):
    """The input row of a decision, kept only under its activity's ``DecisionInputRetention``
    and deleted by the purge once ``expires_at`` has passed."""

    decision = models.OneToOneField(Decision, on_delete=models.CASCADE, related_name="kept_input")
    features = models.JSONField()
    retention = models.ForeignKey(DecisionInputRetention, on_delete=models.PROTECT, related_name="+")
    expires_at = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return f"Input of decision {self.decision_id}"


class ReviewChannel(models.TextChoices):
    EMAIL = "email", "E-mail"
    WEB_FORM = "web_form", "Web form"
    LETTER = "letter", "Letter"
    PHONE = "phone", "Telephone"
    IN_PERSON = "in_person", "In person"
    API = "api", "API"


class ReviewStatus(models.TextChoices):
    OPEN = "open", "Awaiting a reviewer"
    DECIDED = "decided", "Decided"


class ReviewOutcome(models.TextChoices):
    UPHELD = "upheld", "Upheld: the decision stands"
    OVERTURNED = "overturned", "Overturned: the decision is withdrawn"
    CHANGED = "changed", "Changed: a new decision replaces it"


class DecisionReview(models.Model):
    """A person's request for human intervention on a decision (Art. 22(3)) and the
    reviewer's answer, due within a month (Art. 12(3))."""

    decision = models.ForeignKey(Decision, on_delete=models.CASCADE, related_name="reviews")
    status = models.CharField(max_length=10, choices=ReviewStatus.choices, default=ReviewStatus.OPEN, db_index=True)
    reason = models.TextField(help_text="What the person contests and why, in their words.")
    channel = models.CharField(max_length=20, choices=ReviewChannel.choices, default=ReviewChannel.API)
    requested_at = models.DateTimeField()
    due_at = models.DateField(help_text="Art. 12(3): one month from receipt, moved to the next working day.")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=12, choices=ReviewOutcome.choices, blank=True)
    reasons = models.TextField(blank=True, help_text="The reviewer's reasons, told to the person.")
    new_output = models.JSONField(null=True, blank=True, help_text="The decision that replaces it (outcome 'changed').")

    class Meta:
        ordering = ["due_at", "id"]
        constraints = [
            # One open review per decision: a second contest waits for the first answer.
            models.UniqueConstraint(fields=["decision"], condition=Q(status="open"), name="one_open_review_per_decision"),
            models.CheckConstraint(
                condition=Q(status="open", outcome="", decided_at__isnull=True)
                | (Q(status="decided", decided_at__isnull=False) & ~Q(outcome="") & ~Q(reasons="")),
                name="decision_review_decided_fields",
            ),
        ]

    def __str__(self) -> str:
        return f"Review {self.pk} of decision {self.decision_id}"
