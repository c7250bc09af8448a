"""Datasets, their records, immutable consent-filtered snapshots and snapshot membership.

Lineage runs dataset → snapshot → training run (mlops.TrainingRun.snapshot, related
name ``training_runs``) → model version (mlops.ModelVersion.training_run, related name
``model_versions``).
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from governance.models import DataSubject, ProcessingActivity, Purpose, PurposeCompatibility


class ImmutableError(Exception):
    """Raised on an attempt to change or delete an immutable provenance row."""


class ImmutableQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise ImmutableError(f"{self.model.__name__} rows are immutable: update refused.")

    def delete(self):
        raise ImmutableError(f"{self.model.__name__} rows are immutable: delete refused.")

    def _amendment_delete(self) -> int:
        """Delete rows for a recorded amendment (retention purge, Art. 17 erasure) only.

        The caller must record a SnapshotAmendment in the same transaction.
        """
        return self._raw_delete(self.db)

    def _finalise(self, **kwargs) -> int:
        """Fill in the computed fields of a snapshot created in the same transaction."""
        return super().update(**kwargs)


class ImmutableModel(models.Model):
    objects = ImmutableQuerySet.as_manager()

    class Meta:
        abstract = True

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise ImmutableError(f"{type(self).__name__} rows are immutable: update refused.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise ImmutableError(f"{type(self).__name__} rows are immutable: delete refused.")


class Dataset(models.Model):
    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True)
    owner = models.CharField(max_length=200, help_text="Team or person accountable for the dataset.")
    processing_activity = models.ForeignKey(ProcessingActivity, on_delete=models.PROTECT, related_name="datasets")
    source_system = models.CharField(max_length=200, blank=True)
    # {"features": [{"name": str, "type": "float"|"int"|"bool"|"category"}], "label": {"name": str, "type": ...}}
    schema = models.JSONField()
    parents = models.ManyToManyField("self", symmetrical=False, blank=True, related_name="derived")
    transformation = models.TextField(blank=True, help_text="How this dataset was derived from its parents.")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class DataRecord(models.Model):
    """One training example of one person; never holds a raw identifier."""

    # No single-column FK indexes: the composite indexes below lead with these columns,
    # and a duplicate index only slows every ingest and erasure down.
    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="records", db_index=False)
    subject = models.ForeignKey(DataSubject, on_delete=models.PROTECT, related_name="records", db_index=False)
    features = models.JSONField()
    label = models.JSONField(null=True)
    content_hash = models.CharField(max_length=64)
    # A rectified record keeps the ingestion moment of the version it corrects: retention
    # counts from when the data were collected, and a correction does not extend it.
    ingested_at = models.DateTimeField(db_index=True)
    # Rectification (Art. 16) writes a new row and leaves this one as it was: snapshots taken
    # before still hold it, and their Merkle leaves hash its id and content. A superseded
    # row is never a candidate for a new snapshot; it goes with its person's erasure or with
    # the retention purge (same ingestion moment as its successor), and no sooner, since the
    # snapshots that trained models hold it.
    supersedes = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="superseded_by",
        help_text="The earlier version of this record that a rectification (Art. 16) corrected.",
    )
    superseded_at = models.DateTimeField(
        null=True, blank=True, help_text="When a rectification replaced this version (never in new snapshots since)."
    )

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["subject"]),
            models.Index(fields=["dataset", "id"]),
            # Few rows: "this dataset's superseded versions" (registration of a model whose
            # snapshot holds one) is an index probe, not a walk over the records.
            models.Index(
                fields=["dataset", "id"], condition=models.Q(superseded_at__isnull=False), name="datarecord_superseded"
            ),
        ]

    @property
    def is_current(self) -> bool:
        return self.superseded_at is None


class SnapshotKind(models.TextChoices):
    # taken for (about) the moment it was taken: what a run may train on.
    CURRENT = "current", "Current (may be trained on)"
    # taken for a moment in the past: what was lawful then, for the record; never trained on,
    # since people covered then may have withdrawn since.
    RECONSTRUCTION = "reconstruction", "Reconstruction of a past moment (never trained on)"


class Snapshot(ImmutableModel):
    """The exact set of records a training run may use, frozen at creation.

    Only a retention purge or an erasure may later remove members, and each such removal
    is recorded as a SnapshotAmendment; ``merkle_root`` keeps the root as created.
    """

    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="snapshots")
    purpose = models.ForeignKey(Purpose, on_delete=models.PROTECT, related_name="snapshots")
    taken_for = models.DateTimeField(help_text="The moment T whose consent and retention state applies.")
    # K: the consent ledger as committed at this moment is what the snapshot read (events
    # recorded later are not in it; see governance/consent_clock.py). Consent-status at T
    # with known_at=K answers exactly this snapshot's membership. Empty for other bases.
    consent_known_at = models.DateTimeField(
        null=True, blank=True, help_text="The consent ledger as committed at this moment was read (K).",
    )
    kind = models.CharField(
        max_length=20, choices=SnapshotKind.choices, default=SnapshotKind.CURRENT,
        help_text="current: taken for now (within the clock skew), may be trained on; reconstruction: "
        "taken for a past moment, a read-only record of what was lawful then.",
    )
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    lawful_basis = models.CharField(max_length=30, help_text="The Art. 6(1) basis the selection relied on.")
    compatibility = models.ForeignKey(
        PurposeCompatibility, null=True, blank=True, on_delete=models.PROTECT, related_name="snapshots",
        help_text="The Art. 6(4) assessment relied on when the purpose is not one of the activity's own.",
    )
    included_count = models.PositiveIntegerField()
    included_subjects = models.PositiveIntegerField()
    # {"no_consent": n, "withdrawn": n, "expired": n, "retention_passed": n}
    excluded_counts = models.JSONField(default=dict)
    merkle_root = models.CharField(max_length=64)
    completed_at = models.DateTimeField(null=True, blank=True)
    openlineage_run_id = models.UUIDField(default=uuid.uuid4, db_index=True, editable=False)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"Snapshot {self.pk} of {self.dataset.name}"

    @property
    def trainable(self) -> bool:
        return self.kind == SnapshotKind.CURRENT


class SnapshotMembership(ImmutableModel):
    # snapshot is served by unique_snapshot_record, subject by the (subject, snapshot)
    # index, which also answers "this person's rows in this snapshot" (SISA unlearning)
    # with one index probe each, whether or not the planner has statistics yet.
    snapshot = models.ForeignKey(Snapshot, on_delete=models.PROTECT, related_name="members", db_index=False)
    record = models.ForeignKey(DataRecord, on_delete=models.PROTECT, related_name="+")
    subject = models.ForeignKey(DataSubject, on_delete=models.PROTECT, related_name="+", db_index=False)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["snapshot", "record"], name="unique_snapshot_record")]
        indexes = [models.Index(fields=["subject", "snapshot"])]


class AmendmentReason(models.TextChoices):
    RETENTION = "retention", "Retention period passed (Art. 5(1)(e))"
    ERASURE = "erasure", "Erasure (Art. 17)"


class SnapshotAmendment(ImmutableModel):
    """A recorded removal of members from a snapshot, with the Merkle roots before and after."""

    snapshot = models.ForeignKey(Snapshot, on_delete=models.PROTECT, related_name="amendments")
    reason = models.CharField(max_length=20, choices=AmendmentReason.choices)
    erasure_request_id = models.BigIntegerField(null=True, blank=True)
    # 1, 2, ... per snapshot, in commit order: amendments of one snapshot are serialised by a
    # lock on its row, so "trained after amendment n" (TrainingRun.trained_on_amendment)
    # means the data read held none of the people amendments 1..n removed.
    sequence = models.PositiveIntegerField()
    # The internal ids of the people an erasure removed (never shown by the API): what lets
    # SISA unlearning find the shards to retrain without scanning every placement. Ids of
    # deleted subject rows point at no one. Null for removals that did not name them.
    removed_subject_ids = models.JSONField(null=True, blank=True)
    records_removed = models.PositiveIntegerField()
    subjects_removed = models.PositiveIntegerField()
    previous_root = models.CharField(max_length=64)
    new_root = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["snapshot_id", "sequence"]
        constraints = [models.UniqueConstraint(fields=["snapshot", "sequence"], name="unique_snapshot_amendment_sequence")]

    def __str__(self) -> str:
        return f"{self.reason} amendment {self.sequence} of snapshot {self.snapshot_id}"
