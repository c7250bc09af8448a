"""Migrations apply forward on a database made before the rights and assessments apps existed.

The schema is taken back to the last release's migrations, rows are written the way that
release wrote them (erasure and DPIA models in governance), and the migrations are applied
forward: the rows must be readable through the new apps, their content types renamed (so
permissions and admin history stay attached), and the new columns filled in.
"""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

BEFORE = [
    ("governance", "0007_subject_reference_not_indexed"),
    ("provenance", "0003_lean_indexes"),
    ("mlops", "0004_lean_indexes"),
]


def _latest(executor: MigrationExecutor) -> list[tuple[str, str]]:
    return executor.loader.graph.leaf_nodes()


@pytest.mark.django_db(transaction=True)
def test_previous_release_database_migrates_forward_with_its_rows():
    executor = MigrationExecutor(connection)
    try:
        executor.migrate([*BEFORE, ("rights", None), ("assessments", None)])
        old = executor.loader.project_state(BEFORE).apps
        ContentType = old.get_model("contenttypes", "ContentType")
        Group = old.get_model("auth", "Group")
        Permission = old.get_model("auth", "Permission")
        request_type, _ = ContentType.objects.get_or_create(app_label="governance", model="erasurerequest")
        permission = Permission.objects.create(content_type=request_type, codename="view_erasurerequest_x", name="x")
        group, _ = Group.objects.get_or_create(name="dpo")
        group.permissions.add(permission)
        subject = old.get_model("governance", "DataSubject").objects.create(pseudonym="p" * 64)
        activity = old.get_model("governance", "ProcessingActivity").objects.create(
            name="Old activity", controller_name="Controller", controller_contact="c@x.org", dpo_contact="d@x.org",
            security_measures="encryption", lawful_basis="consent",
        )
        request = old.get_model("governance", "ErasureRequest").objects.create(
            subject=subject, subject_ref=subject.reference, identifier_receipt_hash="h" * 64, channel="email",
            received_at=timezone.now(), regime="eu", ground="17_1_a", due_at=timezone.localdate(),
        )
        dpia = old.get_model("governance", "Dpia").objects.create(
            processing_activity=activity, version=1, title="Old DPIA",
        )
        Dataset = old.get_model("provenance", "Dataset")
        dataset = Dataset.objects.create(name="old", owner="team", processing_activity=activity, schema={"features": []})
        purpose = old.get_model("governance", "Purpose").objects.create(code="old.purpose", name="Old purpose")
        snapshot = old.get_model("provenance", "Snapshot").objects.create(
            dataset=dataset, purpose=purpose, taken_for=timezone.now(), lawful_basis="consent", included_count=0,
            included_subjects=0, merkle_root="0" * 64,
        )
        Amendment = old.get_model("provenance", "SnapshotAmendment")
        for n in range(2):
            Amendment.objects.create(snapshot=snapshot, reason="erasure", records_removed=0, subjects_removed=0,
                                     previous_root="0" * 64, new_root=str(n) * 64)

        executor = MigrationExecutor(connection)
        executor.migrate(_latest(executor))

        from django.contrib.auth.models import Group as NewGroup
        from django.contrib.contenttypes.models import ContentType as NewContentType

        from assessments.models import Dpia
        from provenance.models import SnapshotAmendment
        from rights.models import ErasureRequest

        moved = ErasureRequest.objects.get(pk=request.pk)
        assert (moved.subject_id, moved.ground) == (subject.pk, "17_1_a")
        assert Dpia.objects.get(pk=dpia.pk).title == "Old DPIA"
        renamed = NewContentType.objects.get(pk=request_type.pk)
        assert (renamed.app_label, renamed.model) == ("rights", "erasurerequest")
        assert NewGroup.objects.get(name="dpo").permissions.filter(codename="view_erasurerequest_x").exists()
        assert list(SnapshotAmendment.objects.filter(snapshot_id=snapshot.pk).values_list("sequence", flat=True)) == [1, 2]
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(_latest(executor))
