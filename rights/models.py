"""Data-subject requests: erasure (GDPR Art. 17) with its resumable execution log, Art. 19
notifications and the receipt that outlives the person's subject row.

Nothing here holds a raw identifier or a pseudonym. A request points at its subject
until execution deletes the subject row (the FK is then cleared by SET_NULL); what stays
is ``subject_ref`` (the random audit reference) and ``identifier_receipt_hash``, an HMAC
of the normalised identifier under ERASURE_RECEIPT_SALT, a key distinct from the
pseudonymisation key, so that a repeated request is recognised without re-identifying.

The other rights (access, portability, rectification, restriction, objection) are
``RightsRequest`` rows; both models share ``RightsRequestBase``, so deadlines, verification,
extension and refusal are one set of fields with one set of rules.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from governance.models import RestrictionGround


class ErasureRegime(models.TextChoices):
    EU = "eu", "EU GDPR (Reg. 1182/71 Art. 3 month counting)"
    UK = "uk", "UK GDPR (ICO counting)"
    CCPA = "ccpa", "CCPA/CPRA (45 calendar days)"


class ErasureGround(models.TextChoices):
    NO_LONGER_NECESSARY = "17_1_a", "Art. 17(1)(a) no longer necessary for the purposes"
    CONSENT_WITHDRAWN = "17_1_b", "Art. 17(1)(b) consent withdrawn and no other legal ground"
    OBJECTION = "17_1_c", "Art. 17(1)(c) objection under Art. 21"
    UNLAWFUL_PROCESSING = "17_1_d", "Art. 17(1)(d) unlawfully processed"
    LEGAL_OBLIGATION = "17_1_e", "Art. 17(1)(e) legal obligation to erase"
    CHILD_INFORMATION_SOCIETY = "17_1_f", "Art. 17(1)(f) child's data, information society services (Art. 8(1))"


class RefusalGround(models.TextChoices):
    FREEDOM_OF_EXPRESSION = "17_3_a", "Art. 17(3)(a) freedom of expression and information"
    LEGAL_OBLIGATION_OR_PUBLIC_TASK = "17_3_b", "Art. 17(3)(b) legal obligation or public task"
    PUBLIC_HEALTH = "17_3_c", "Art. 17(3)(c) public interest in public health (Art. 9(2)(h), (i))"
    ARCHIVING_RESEARCH = "17_3_d", "Art. 17(3)(d) archiving, research or statistics (Art. 89(1))"
    LEGAL_CLAIMS = "17_3_e", "Art. 17(3)(e) establishment, exercise or defence of legal claims"


class ErasureChannel(models.TextChoices):
    EMAIL = "email", "E-mail"
    WEB_FORM = "web_form", "Web form"
    LETTER = "letter", "Letter"
    PHONE = "phone", "Telephone"
    IN_PERSON = "in_person", "In person"
    API = "api", "API"
    CONSENT_WITHDRAWAL = "consent_withdrawal", "Opened on consent withdrawal (Art. 17(1)(b))"


class ErasureStatus(models.TextChoices):
    RECEIVED = "received", "Received"
    VERIFIED = "verified", "Identity verified"
    IN_PROGRESS = "in_progress", "In progress"
    COMPLETED = "completed", "Completed"
    REJECTED = "rejected", "Rejected"


OPEN_STATUSES = (ErasureStatus.RECEIVED, ErasureStatus.VERIFIED, ErasureStatus.IN_PROGRESS)


class RemediationAction(models.TextChoices):
    SISA_UNLEARN = "sisa_unlearn", "Unlearn: retrain the affected SISA shards from their last clean checkpoint"
    RETRAIN = "retrain", "Retrain from scratch on the amended snapshot"
    RELY_ON_DP = "rely_on_dp", "Rely on the DP guarantee (accepted risk, EDPB Opinion 28/2024)"
    RETIRE = "retire", "Retire the model"


class RightsRequestBase(models.Model):
    """What every data-subject request shares (GDPR Art. 12): who and how it arrived, the
    Art. 12(3) deadline and its one extension, identity verification (Art. 12(6)), the
    refusal with its Art. 12(4) notice, execution with its outbox and lease, and the answer.

    Erasure keeps its own table (``ErasureRequest``) and history; the other rights share
    ``RightsRequest``. The workflow rules on these fields live once, in
    rights.services.workflow, used by both.
    """

    subject = models.ForeignKey(
        "governance.DataSubject", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="Cleared when execution deletes the subject row.",
    )
    subject_ref = models.UUIDField(
        null=True, blank=True, db_index=True, help_text="The subject's random audit reference, copied at receipt."
    )
    identifier_receipt_hash = models.CharField(
        max_length=64, db_index=True,
        help_text="HMAC of the normalised identifier under ERASURE_RECEIPT_SALT (not the pseudonym).",
    )
    data_held_at_receipt = models.BooleanField(default=True)
    channel = models.CharField(max_length=30, choices=ErasureChannel.choices)
    received_at = models.DateTimeField()
    notes = models.TextField(
        blank=True, help_text="How the request arrived and was answered (e.g. a letter's reference); no identifier.",
    )
    regime = models.CharField(max_length=5, choices=ErasureRegime.choices, default=ErasureRegime.EU)
    status = models.CharField(max_length=12, choices=ErasureStatus.choices, default=ErasureStatus.RECEIVED, db_index=True)
    due_at = models.DateField(help_text="Art. 12(3) deadline (last day in time).")
    extended_due_at = models.DateField(null=True, blank=True)
    extension_reasons = models.TextField(blank=True)
    extended_at = models.DateTimeField(null=True, blank=True)
    subject_informed_of_extension_at = models.DateTimeField(null=True, blank=True)
    verified_at = models.DateTimeField(null=True, blank=True)
    verified_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    verification_method = models.CharField(max_length=300, blank=True)
    # Each concrete model gives the grounds it may be refused on (its own choices).
    refusal_ground = models.CharField(max_length=10, blank=True)
    refusal_justification = models.TextField(blank=True)
    refusal_notice = models.TextField(blank=True, help_text="The Art. 12(4) notice sent to the subject.")
    rejected_at = models.DateTimeField(null=True, blank=True)
    execution_started_at = models.DateTimeField(null=True, blank=True)
    # Outbox and lease of the execution task (governance.dispatch, governance.leases): when
    # the broker accepted it, and the executing worker's last sign of life.
    dispatched_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    outcome = models.TextField(blank=True, help_text="The answer given to the subject.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True
        ordering = ["due_at", "id"]

    @property
    def effective_due_at(self):
        return self.extended_due_at or self.due_at

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES


class ErasureRequest(RightsRequestBase):
    # The erasure table predates the shared base: its subject keeps its reverse name.
    subject = models.ForeignKey(
        "governance.DataSubject", null=True, blank=True, on_delete=models.SET_NULL, related_name="erasure_requests",
        help_text="Cleared when execution deletes the subject row.",
    )
    ground = models.CharField(max_length=10, choices=ErasureGround.choices)
    purpose = models.ForeignKey(
        "governance.Purpose", null=True, blank=True, on_delete=models.PROTECT, related_name="+",
        help_text="For Art. 17(1)(b): the purpose whose consent was withdrawn.",
    )
    refusal_ground = models.CharField(max_length=10, choices=RefusalGround.choices, blank=True)
    certificate_path = models.CharField(max_length=500, blank=True, help_text="Relative to settings.REPORT_ROOT.")
    certificate_sha256 = models.CharField(max_length=64, blank=True)

    class Meta(RightsRequestBase.Meta):
        # The tables keep the names they had when erasure lived in governance.
        db_table = "governance_erasurerequest"
        constraints = [
            # One open request per person: a second one while the first runs is refused (409).
            models.UniqueConstraint(
                fields=["identifier_receipt_hash"],
                condition=Q(status__in=["received", "verified", "in_progress"]),
                name="unique_open_erasure_request",
            )
        ]

    def __str__(self) -> str:
        return f"Erasure request {self.pk} ({self.get_status_display().lower()})"


class RightsRequestType(models.TextChoices):
    ACCESS = "access", "Access (Art. 15)"
    PORTABILITY = "portability", "Portability (Art. 20)"
    RECTIFICATION = "rectification", "Rectification (Art. 16)"
    RESTRICTION = "restriction", "Restriction of processing (Art. 18)"
    OBJECTION = "objection", "Objection (Art. 21)"


# The article each type answers under: named in every refusal of the workflow.
RIGHTS_REQUEST_ARTICLES = {
    RightsRequestType.ACCESS: "Art. 15",
    RightsRequestType.PORTABILITY: "Art. 20",
    RightsRequestType.RECTIFICATION: "Art. 16",
    RightsRequestType.RESTRICTION: "Art. 18",
    RightsRequestType.OBJECTION: "Art. 21",
}


class RightsRefusalGround(models.TextChoices):
    """Art. 12(5): a request manifestly unfounded or excessive may be refused (the controller
    bears the burden of showing it)."""

    MANIFESTLY_UNFOUNDED = "12_5_unf", "Art. 12(5) manifestly unfounded"
    MANIFESTLY_EXCESSIVE = "12_5_exc", "Art. 12(5) manifestly excessive, in particular because repetitive"


class RightsRequest(RightsRequestBase):
    """A request under Art. 15, 16, 18, 20 or 21, with the fields its type needs."""

    type = models.CharField(max_length=20, choices=RightsRequestType.choices, db_index=True)
    refusal_ground = models.CharField(max_length=10, choices=RightsRefusalGround.choices, blank=True)
    purpose = models.ForeignKey(
        "governance.Purpose", null=True, blank=True, on_delete=models.PROTECT, related_name="+",
        help_text="Objection (Art. 21): the purpose objected to.",
    )
    restriction_ground = models.CharField(
        max_length=10, choices=RestrictionGround.choices, blank=True, help_text="Restriction: the Art. 18(1) ground."
    )
    justification = models.TextField(
        blank=True,
        help_text="Restriction: why processing is restricted; objection: the person's grounds (Art. 21(1)); "
                  "rectification: the reason for the correction.",
    )
    corrections = models.JSONField(
        default=dict, blank=True, help_text="Rectification: {dataset, corrections: [{record, values}]} as given to provenance's record_rectify."
    )
    answer_path = models.CharField(
        max_length=500, blank=True, help_text="Access/portability: folder of the answer files, relative to REPORT_ROOT."
    )
    answer_sha256 = models.CharField(max_length=64, blank=True, help_text="SHA-256 of the JSON answer.")
    answer_expires_at = models.DateTimeField(null=True, blank=True)
    progress = models.JSONField(
        default=dict, blank=True, help_text="While an answer is built: {'done': n, 'total': m, 'stage': text}."
    )
    # A plain id: the governance ProcessingRestriction or ProcessingObjection row created.
    limit_id = models.BigIntegerField(null=True, blank=True)

    class Meta(RightsRequestBase.Meta):
        constraints = [
            models.UniqueConstraint(
                fields=["identifier_receipt_hash", "type"],
                condition=Q(status__in=["received", "verified", "in_progress"]) & ~Q(type="objection"),
                name="unique_open_rights_request_per_type",
            )
        ]

    def __str__(self) -> str:
        return f"{self.get_type_display()} request {self.pk} ({self.get_status_display().lower()})"

    @property
    def article(self) -> str:
        return RIGHTS_REQUEST_ARTICLES[self.type]


class ErasureRemediationOverride(models.Model):
    """A DPO's decision to remediate one model version otherwise than the policy proposes."""

    request = models.ForeignKey(ErasureRequest, on_delete=models.CASCADE, related_name="remediation_overrides")
    # A plain id: governance migrations must not depend on the mlops app.
    model_version_id = models.BigIntegerField()
    action = models.CharField(max_length=20, choices=RemediationAction.choices)
    justification = models.TextField()
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    decided_at = models.DateTimeField()

    class Meta:
        # The tables keep the names they had when erasure lived in governance.
        db_table = "governance_erasureremediationoverride"
        ordering = ["request", "model_version_id"]
        constraints = [
            models.UniqueConstraint(fields=["request", "model_version_id"], name="unique_erasure_override_per_model")
        ]


class ErasureStepStatus(models.TextChoices):
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"
    # A lineage trained outside the ledger (issue 20): only its owner can retrain it, so the
    # erasure waits for the owner's retrained version or a retirement, then resumes.
    WAITING = "waiting", "Waiting for the model's owner"


class ErasureStep(models.Model):
    """One step of an execution; a done step is skipped when the task runs again."""

    request = models.ForeignKey(ErasureRequest, on_delete=models.CASCADE, related_name="steps")
    name = models.CharField(max_length=100)
    status = models.CharField(max_length=10, choices=ErasureStepStatus.choices, default=ErasureStepStatus.RUNNING)
    attempts = models.PositiveIntegerField(default=0)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    details = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        # The tables keep the names they had when erasure lived in governance.
        db_table = "governance_erasurestep"
        ordering = ["request", "id"]
        constraints = [models.UniqueConstraint(fields=["request", "name"], name="unique_erasure_step")]

    def __str__(self) -> str:
        return f"{self.name} ({self.status})"


class RecipientNotification(models.Model):
    """An Art. 19 notification to a recipient of the data: of an erasure (recorded by its
    execution step), or of a rectification or restriction (a rights request: the execution
    lists who is to be told, and the DPO records when and how each was told)."""

    request = models.ForeignKey(
        ErasureRequest, null=True, blank=True, on_delete=models.CASCADE, related_name="recipient_notifications"
    )
    rights_request = models.ForeignKey(
        "RightsRequest", null=True, blank=True, on_delete=models.CASCADE, related_name="recipient_notifications"
    )
    recipient = models.CharField(max_length=300)
    third_country = models.CharField(max_length=100, blank=True)
    processing_activity_id = models.BigIntegerField(null=True, blank=True)
    notified_at = models.DateTimeField(null=True, blank=True, help_text="Empty: still to be told.")
    method = models.CharField(max_length=300, blank=True, help_text="How the recipient was told, as the DPO recorded it.")
    notified_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        # The tables keep the names they had when erasure lived in governance.
        db_table = "governance_recipientnotification"
        ordering = ["request_id", "rights_request_id", "recipient"]
        constraints = [
            models.UniqueConstraint(fields=["request", "recipient"], name="unique_erasure_recipient_notification"),
            models.UniqueConstraint(fields=["rights_request", "recipient"], name="unique_rights_recipient_notification"),
            models.CheckConstraint(
                condition=Q(request__isnull=False, rights_request__isnull=True)
                | Q(request__isnull=True, rights_request__isnull=False),
                name="recipient_notification_of_one_request",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.recipient} ({'told' if self.notified_at else 'to be told'})"


class ErasureReceipt(models.Model):
    """What stays of an executed erasure: counts, and the receipt hash to recognise a repeat."""

    request = models.OneToOneField(ErasureRequest, on_delete=models.PROTECT, related_name="receipt")
    identifier_receipt_hash = models.CharField(max_length=64, db_index=True)
    records_deleted = models.PositiveIntegerField(default=0)
    datasets = models.PositiveIntegerField(default=0)
    snapshots_amended = models.PositiveIntegerField(default=0)
    membership_rows_removed = models.PositiveIntegerField(default=0)
    models_remediated = models.PositiveIntegerField(default=0)
    consent_events_deleted = models.PositiveIntegerField(default=0)
    recipients_to_tell = models.PositiveIntegerField(default=0, help_text="Recipients listed to be told (Art. 19).")
    completed_at = models.DateTimeField()

    class Meta:
        # The tables keep the names they had when erasure lived in governance.
        db_table = "governance_erasurereceipt"
        ordering = ["-completed_at"]

    def __str__(self) -> str:
        return f"Receipt of erasure request {self.request_id}"
