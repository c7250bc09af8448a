"""Governance records: GDPR Art. 30 records, consent ledger, audit chain, API keys.

Append-only records (consent events, audit events) refuse update and delete through the
ORM; erasure (Art. 17) removes a person's rows through its own service, which is the one
sanctioned exception.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models

from governance.pseudonymisation import NORMALISATION_VERSION

PURPOSE_CODE_VALIDATOR = RegexValidator(
    r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$",
    "A purpose code is lower-case dotted segments, e.g. 'ml.training.clinical_risk'.",
)


class AppendOnlyError(Exception):
    """Raised when code tries to change or delete a row of an append-only ledger."""


class AppendOnlyQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise AppendOnlyError(f"{self.model.__name__} rows are append-only: update refused.")

    def delete(self):
        raise AppendOnlyError(f"{self.model.__name__} rows are append-only: delete refused.")

    def _erasure_delete(self) -> int:
        """Delete rows for an Art. 17 erasure; only the erasure service may call this."""
        return self._raw_delete(self.db)


class AppendOnlyModel(models.Model):
    objects = AppendOnlyQuerySet.as_manager()

    class Meta:
        abstract = True

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise AppendOnlyError(f"{type(self).__name__} rows are append-only: update refused.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnlyError(f"{type(self).__name__} rows are append-only: delete refused.")


# --- Audit log -------------------------------------------------------------------


class AuditEvent(AppendOnlyModel):
    """One link of the tamper-evident hash chain.

    hash = SHA-256(prev_hash || canonical JSON of the event's own fields). A person is
    referred to only by ``subject_ref`` (a random UUID), never by pseudonym, so deleting
    the subject row on erasure unlinks the chain from the person without breaking it.
    """

    position = models.BigIntegerField(unique=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)
    occurred_at = models.DateTimeField()
    actor = models.CharField(max_length=150)
    action = models.CharField(max_length=100, db_index=True)
    object_type = models.CharField(max_length=100, blank=True)
    object_id = models.CharField(max_length=100, blank=True)
    subject_ref = models.UUIDField(null=True, blank=True, db_index=True)
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["position"]
        indexes = [models.Index(fields=["object_type", "object_id"])]

    def __str__(self) -> str:
        return f"#{self.position} {self.action} {self.object_type}:{self.object_id}"


class AuditChainHead(models.Model):
    """Single row locked by every writer so that concurrent writers cannot fork the chain."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    position = models.BigIntegerField(default=0)
    hash = models.CharField(max_length=64, default="0" * 64)


# --- API keys ----------------------------------------------------------------------


class ApiKey(models.Model):
    """An API key, stored only as its SHA-256; the key itself is shown once at creation."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=12, help_text="First characters of the key, to recognise it.")
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"


# --- Purposes and categories -------------------------------------------------------


class Purpose(models.Model):
    """A purpose of processing (Art. 5(1)(b)); a purpose covers its dotted descendants."""

    code = models.CharField(max_length=200, unique=True, validators=[PURPOSE_CODE_VALIDATOR])
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="children")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return self.code

    def ancestor_codes(self) -> list[str]:
        """This code and every ancestor code, most specific first."""
        parts = self.code.split(".")
        return [".".join(parts[:i]) for i in range(len(parts), 0, -1)]

    def covers(self, code: str) -> bool:
        return code == self.code or code.startswith(self.code + ".")


class PurposeCompatibility(models.Model):
    """An Art. 6(4) compatibility assessment allowing further processing for another purpose."""

    original_purpose = models.ForeignKey(Purpose, on_delete=models.PROTECT, related_name="compatible_further")
    compatible_purpose = models.ForeignKey(Purpose, on_delete=models.PROTECT, related_name="compatible_from")
    link_between_purposes = models.TextField(help_text="Art. 6(4)(a)")
    context_of_collection = models.TextField(help_text="Art. 6(4)(b)")
    nature_of_data = models.TextField(help_text="Art. 6(4)(c)")
    possible_consequences = models.TextField(help_text="Art. 6(4)(d)")
    safeguards = models.TextField(help_text="Art. 6(4)(e)")
    approved_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    approved_at = models.DateTimeField()

    class Meta:
        verbose_name_plural = "purpose compatibility assessments"
        constraints = [
            models.UniqueConstraint(
                fields=["original_purpose", "compatible_purpose"], name="unique_purpose_compatibility"
            )
        ]

    def __str__(self) -> str:
        return f"{self.original_purpose} → {self.compatible_purpose}"


class SpecialCategory(models.TextChoices):
    """Art. 9(1) special categories of personal data."""

    RACIAL_ETHNIC_ORIGIN = "racial_ethnic_origin", "Racial or ethnic origin"
    POLITICAL_OPINIONS = "political_opinions", "Political opinions"
    RELIGIOUS_BELIEFS = "religious_beliefs", "Religious or philosophical beliefs"
    TRADE_UNION = "trade_union", "Trade-union membership"
    GENETIC = "genetic", "Genetic data"
    BIOMETRIC = "biometric", "Biometric data for identification"
    HEALTH = "health", "Health data"
    SEX_LIFE_ORIENTATION = "sex_life_orientation", "Sex life or sexual orientation"


class DataCategory(models.Model):
    code = models.SlugField(max_length=100, unique=True)
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    special_category = models.CharField(
        max_length=40, choices=SpecialCategory.choices, blank=True, help_text="Art. 9(1) category, if any."
    )
    criminal_offence_data = models.BooleanField(default=False, help_text="Art. 10 data.")

    class Meta:
        ordering = ["code"]
        verbose_name_plural = "data categories"

    def __str__(self) -> str:
        return self.code

    @property
    def is_special(self) -> bool:
        return bool(self.special_category)


class DataSubjectCategory(models.Model):
    code = models.SlugField(max_length=100, unique=True)
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    vulnerable = models.BooleanField(default=False, help_text="e.g. children, patients, employees (WP248).")

    class Meta:
        ordering = ["code"]
        verbose_name_plural = "data subject categories"

    def __str__(self) -> str:
        return self.code


# --- Processing activities (Art. 30(1)) --------------------------------------------


class LawfulBasis(models.TextChoices):
    CONSENT = "consent", "Art. 6(1)(a) consent"
    CONTRACT = "contract", "Art. 6(1)(b) contract"
    LEGAL_OBLIGATION = "legal_obligation", "Art. 6(1)(c) legal obligation"
    VITAL_INTERESTS = "vital_interests", "Art. 6(1)(d) vital interests"
    PUBLIC_TASK = "public_task", "Art. 6(1)(e) public task"
    LEGITIMATE_INTERESTS = "legitimate_interests", "Art. 6(1)(f) legitimate interests"


class SpecialCategoryCondition(models.TextChoices):
    EXPLICIT_CONSENT = "9_2_a", "Art. 9(2)(a) explicit consent"
    EMPLOYMENT = "9_2_b", "Art. 9(2)(b) employment and social security law"
    VITAL_INTERESTS = "9_2_c", "Art. 9(2)(c) vital interests"
    NOT_FOR_PROFIT = "9_2_d", "Art. 9(2)(d) not-for-profit body"
    MADE_PUBLIC = "9_2_e", "Art. 9(2)(e) manifestly made public"
    LEGAL_CLAIMS = "9_2_f", "Art. 9(2)(f) legal claims"
    PUBLIC_INTEREST = "9_2_g", "Art. 9(2)(g) substantial public interest"
    HEALTH_CARE = "9_2_h", "Art. 9(2)(h) medicine, diagnosis, care"
    PUBLIC_HEALTH = "9_2_i", "Art. 9(2)(i) public health"
    RESEARCH = "9_2_j", "Art. 9(2)(j) archiving, research, statistics"


class ProcessingActivity(models.Model):
    """One Art. 30(1) record of processing activities."""

    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True)
    # 30(1)(a)
    controller_name = models.CharField(max_length=200)
    controller_contact = models.CharField(max_length=300)
    joint_controller = models.CharField(max_length=300, blank=True)
    representative = models.CharField(max_length=300, blank=True)
    dpo_contact = models.CharField(max_length=300)
    # 30(1)(b)
    purposes = models.ManyToManyField(Purpose, related_name="processing_activities")
    # 30(1)(c)
    data_subject_categories = models.ManyToManyField(DataSubjectCategory, related_name="processing_activities")
    data_categories = models.ManyToManyField(
        DataCategory, through="ProcessingActivityDataCategory", related_name="processing_activities"
    )
    # 30(1)(d): [{"name": str, "third_country": str | ""}]
    recipients = models.JSONField(default=list, blank=True)
    # 30(1)(e): [{"country": str, "safeguard": str}]
    third_country_transfers = models.JSONField(default=list, blank=True)
    # 30(1)(g)
    security_measures = models.TextField()
    lawful_basis = models.CharField(max_length=30, choices=LawfulBasis.choices)
    special_category_condition = models.CharField(max_length=10, choices=SpecialCategoryCondition.choices, blank=True)
    legitimate_interests_assessment = models.TextField(blank=True)
    controller_is_public_authority = models.BooleanField(default=False)
    erasure_on_consent_withdrawal = models.BooleanField(
        default=False, help_text="Open an Art. 17(1)(b) erasure request automatically when consent is withdrawn."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "processing activities"

    def __str__(self) -> str:
        return self.name


class ProcessingActivityDataCategory(models.Model):
    """A data category processed by an activity, with its retention period (Art. 30(1)(f))."""

    processing_activity = models.ForeignKey(ProcessingActivity, on_delete=models.CASCADE, related_name="retention_rules")
    data_category = models.ForeignKey(DataCategory, on_delete=models.PROTECT, related_name="+")
    retention = models.DurationField(help_text="How long records of this category are kept after ingestion.")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["processing_activity", "data_category"], name="unique_activity_category")
        ]


# --- Data subjects and consent -----------------------------------------------------


class DataSubject(models.Model):
    """A person, known only by a keyed pseudonym of their external identifier.

    ``reference`` is a random UUID used in audit events; deleting this row on erasure
    removes the only link between the audit chain and the person.
    """

    # Unique through a constraint, not unique=True: on PostgreSQL that would add a second
    # (LIKE) index that no lookup uses and every bulk insert pays for.
    pseudonym = models.CharField(max_length=64)
    # Not indexed: nothing looks a subject up by its reference, and an index on random
    # UUIDs makes every new subject dirty a random page of a large B-tree (with a full-page
    # WAL image after each checkpoint): that was half the cost of consent ingest on a table
    # of 1.8 million subjects. 122 random bits make a collision negligible.
    reference = models.UUIDField(default=uuid.uuid4, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    # The identifier normalisation the pseudonym was first computed with (see
    # governance.pseudonymisation). A database default as well, so set-based inserts that do
    # not name the column still record the version they were written under.
    normalisation_version = models.PositiveSmallIntegerField(
        default=NORMALISATION_VERSION, db_default=NORMALISATION_VERSION, editable=False,
        help_text="Version of governance.pseudonymisation.normalise_identifier this pseudonym was first computed "
        "with; rows from before versions were recorded are 1.",
    )

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["pseudonym"], name="unique_subject_pseudonym")]

    def __str__(self) -> str:
        return f"subject {self.pseudonym[:12]}…"


class ConsentAction(models.TextChoices):
    GIVEN = "given", "Given"
    WITHDRAWN = "withdrawn", "Withdrawn"


class ConsentEvent(AppendOnlyModel):
    """One act of giving or withdrawing consent (Art. 7). Never updated, never deleted."""

    # Indexes are what bulk ingest pays for, so only those a lookup uses: event_id is unique
    # by constraint (no LIKE index), and the foreign keys are covered by the composite
    # indexes that start with them.
    event_id = models.CharField(max_length=100)
    subject = models.ForeignKey(DataSubject, on_delete=models.PROTECT, related_name="consent_events", db_index=False)
    purpose = models.ForeignKey(Purpose, on_delete=models.PROTECT, related_name="consent_events", db_index=False)
    action = models.CharField(max_length=10, choices=ConsentAction.choices)
    occurred_at = models.DateTimeField()
    recorded_at = models.DateTimeField(auto_now_add=True)
    notice_version = models.CharField(max_length=100)
    notice_sha256 = models.CharField(max_length=64)
    method = models.CharField(max_length=100)
    evidence = models.JSONField(default=dict, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["occurred_at", "id"]
        indexes = [
            models.Index(fields=["subject", "purpose", "occurred_at"]),
            models.Index(fields=["purpose", "occurred_at"]),
        ]
        constraints = [models.UniqueConstraint(fields=["event_id"], name="unique_consent_event_id")]

    def __str__(self) -> str:
        return f"{self.action} {self.purpose_id} at {self.occurred_at:%Y-%m-%d %H:%M}"


class ReportKind(models.TextChoices):
    DPIA = "dpia", "DPIA report (Art. 35)"
    ROPA = "ropa", "Record of processing activities (Art. 30)"
    MODEL_LINEAGE = "model-lineage", "Model lineage report"
    ERASURE_CERTIFICATE = "erasure-certificate", "Erasure certificate (Art. 17)"


class ReportStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


class ReportJob(models.Model):
    """A request for a PDF report and, once produced, its file and SHA-256."""

    kind = models.CharField(max_length=30, choices=ReportKind.choices)
    object_id = models.BigIntegerField(null=True, blank=True, help_text="Empty for the record of processing.")
    status = models.CharField(max_length=10, choices=ReportStatus.choices, default=ReportStatus.QUEUED, db_index=True)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    file_path = models.CharField(max_length=500, blank=True, help_text="Relative to settings.REPORT_ROOT.")
    sha256 = models.CharField(max_length=64, blank=True)
    size_bytes = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Outbox and lease, as for training runs (governance.dispatch, governance.leases).
    dispatched_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["kind", "object_id"])]

    def __str__(self) -> str:
        return f"{self.get_kind_display()}, job {self.pk} ({self.get_status_display().lower()})"


# --- Processing limits: restriction (Art. 18) and objection (Art. 21) ---------------
#
# Append-only like the consent ledger: a restriction is lifted, and an objection answered
# by compelling grounds, by a new row pointing at it, never by changing it. Every moment
# here is stamped by the server inside the consent ledger's critical section
# (governance.consent_clock), so a snapshot that read the ledger at K saw every limit
# stamped at or before K and none stamped after. The rows go with the person's subject
# row on erasure (Art. 17): they are data about the person.

# Purposes under this code are direct marketing (Art. 21(2)-(3)): purposes carry no other
# marketing notion, so the code decides, and an objection to them is absolute.
DIRECT_MARKETING_PURPOSE_CODE = "marketing"


def purpose_code_is_direct_marketing(code: str) -> bool:
    return code == DIRECT_MARKETING_PURPOSE_CODE or code.startswith(DIRECT_MARKETING_PURPOSE_CODE + ".")


class RestrictionGround(models.TextChoices):
    ACCURACY_CONTESTED = "18_1_a", "Art. 18(1)(a) accuracy contested, while the controller verifies it"
    UNLAWFUL_ERASURE_OPPOSED = "18_1_b", "Art. 18(1)(b) processing unlawful, the person opposes erasure"
    LEGAL_CLAIMS = "18_1_c", "Art. 18(1)(c) no longer needed, but required by the person for legal claims"
    OBJECTION_PENDING = "18_1_d", "Art. 18(1)(d) objection under Art. 21(1) pending verification of grounds"


class ProcessingRestriction(AppendOnlyModel):
    """An Art. 18(1) restriction: while it holds, the person's data are only stored (no new
    snapshot, no training). Lifted by a ``RestrictionLifting``, never changed."""

    subject = models.ForeignKey(DataSubject, on_delete=models.CASCADE, related_name="restrictions")
    ground = models.CharField(max_length=10, choices=RestrictionGround.choices)
    justification = models.TextField(help_text="Why, in the DPO's words (no identifier).")
    restricted_at = models.DateTimeField(help_text="When the restriction took effect (the server's clock).")
    restricted_by = models.CharField(max_length=150)

    class Meta:
        ordering = ["-restricted_at", "-id"]
        indexes = [models.Index(fields=["subject", "restricted_at"])]

    def __str__(self) -> str:
        return f"Restriction {self.pk} ({self.get_ground_display()})"


class RestrictionLifting(AppendOnlyModel):
    """The end of a restriction: who, why, when, and when the person was told (Art. 18(3))."""

    restriction = models.OneToOneField(ProcessingRestriction, on_delete=models.CASCADE, related_name="lifting")
    reason = models.TextField()
    informed_at = models.DateTimeField(help_text="When the person was informed, before the lifting (Art. 18(3)).")
    lifted_at = models.DateTimeField(help_text="When the restriction ended (the server's clock).")
    lifted_by = models.CharField(max_length=150)

    class Meta:
        ordering = ["-lifted_at", "-id"]

    def __str__(self) -> str:
        return f"Lifting of restriction {self.restriction_id}"


class ProcessingObjection(AppendOnlyModel):
    """An Art. 21 objection to processing for a purpose (and the purposes it covers)."""

    subject = models.ForeignKey(DataSubject, on_delete=models.CASCADE, related_name="objections")
    purpose = models.ForeignKey(Purpose, on_delete=models.PROTECT, related_name="objections")
    grounds = models.TextField(
        blank=True, help_text="The person's grounds relating to their particular situation (Art. 21(1)); none "
        "are needed against direct marketing.",
    )
    direct_marketing = models.BooleanField(
        default=False, help_text="The purpose is direct marketing (Art. 21(2)-(3)): the objection is absolute.",
    )
    objected_at = models.DateTimeField(help_text="When the objection took effect (the server's clock).")
    recorded_by = models.CharField(max_length=150)

    class Meta:
        ordering = ["-objected_at", "-id"]
        indexes = [models.Index(fields=["purpose", "objected_at"]), models.Index(fields=["subject", "purpose"])]

    def __str__(self) -> str:
        return f"Objection {self.pk} to {self.purpose_id}"


class CompellingGrounds(AppendOnlyModel):
    """The DPO's record of compelling legitimate grounds overriding an objection (Art. 21(1));
    never for direct marketing (Art. 21(3))."""

    objection = models.OneToOneField(ProcessingObjection, on_delete=models.CASCADE, related_name="compelling_grounds")
    justification = models.TextField()
    recorded_at = models.DateTimeField(help_text="From this moment the objection no longer excludes the person.")
    recorded_by = models.CharField(max_length=150)

    class Meta:
        verbose_name_plural = "compelling legitimate grounds"
        ordering = ["-recorded_at", "-id"]

    def __str__(self) -> str:
        return f"Compelling grounds for objection {self.objection_id}"
