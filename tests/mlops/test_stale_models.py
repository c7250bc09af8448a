"""Model versions trained on values a rectification (Art. 16) corrected become stale, and
the processing activity's rectification policy retrains or accepts them."""

from __future__ import annotations

import pytest

from governance.models import AuditEvent
from governance.services import ServiceConflict, ServiceError
from mlops import services
from mlops.models import (
    AuditJobStatus,
    ModelStatus,
    ModelVersion,
    PrivacyAuditJob,
    RectificationPolicy,
    RunStatus,
    TrainingRun,
)
from provenance import services as provenance_services
from provenance.integrity import snapshot_verify
from provenance.models import DataRecord, SnapshotMembership
from tests.mlops.factories import make_snapshot
from tests.mlops.helpers import wait_for, wait_for_run

# Transactional: provenance announces a rectification after its commit, and mlops reacts then.
pytestmark = pytest.mark.django_db(transaction=True)


def _trained(snapshot) -> ModelVersion:
    run = services.training_run_queue(snapshot=snapshot, epochs=1, batch_size=32, noise_multiplier=1.0, enqueue=False)
    run = services.training_run_execute(run_id=run.pk)
    assert run.status == RunStatus.SUCCEEDED, run.error
    return ModelVersion.objects.get(training_run=run)


def _audits_settled() -> None:
    # With a real worker the versions' privacy audits run on after the test's last assertion;
    # the database is flushed only once they are done.
    wait_for(lambda: not PrivacyAuditJob.objects.filter(
        status__in=(AuditJobStatus.QUEUED, AuditJobStatus.RUNNING)).exists(), what="privacy audits to finish")


def _rectify(snapshot, *, value: float = 9.5) -> tuple[DataRecord, dict]:
    record = DataRecord.objects.filter(dataset=snapshot.dataset, superseded_at__isnull=True).order_by("id").first()
    result = provenance_services.record_rectify(
        subject=record.subject_id, dataset=snapshot.dataset, reason="the source system sent a corrected value",
        corrections=[{"record": record.pk, "values": {"x0": value}}], actor="dpo",
    )
    return record, result


def _policy(dpo_client, snapshot, action: str, justification: str = "proportionate for this activity"):
    response = dpo_client.post("/api/v1/rectification-policies/", {
        "processing_activity": snapshot.dataset.processing_activity_id, "action": action,
        "justification": justification,
    }, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def test_a_version_trained_on_the_old_value_becomes_stale_and_one_not_trained_on_it_stays_active(ml_client):
    snapshot, elsewhere = make_snapshot(n=120, d=4, seed=1), make_snapshot(n=120, d=4, seed=2)
    stale, untouched = _trained(snapshot), _trained(elsewhere)

    record, result = _rectify(snapshot)

    stale.refresh_from_db()
    untouched.refresh_from_db()
    assert stale.status == ModelStatus.STALE
    assert f"snapshot {snapshot.pk}" in stale.status_reason and "Art. 16" in stale.status_reason
    assert untouched.status == ModelStatus.ACTIVE
    event = AuditEvent.objects.get(action="model_version.stale")
    assert event.object_id == str(stale.pk) and event.details["snapshots"] == [snapshot.pk]
    # The snapshot it was trained on still holds the old version and still verifies.
    assert SnapshotMembership.objects.filter(snapshot=snapshot, record_id=record.pk).exists()
    assert snapshot_verify(snapshot_id=snapshot.pk).ok
    # The API shows the status and filters by it; an ML engineer reads a neutral reason.
    listed = ml_client.get("/api/v1/models/", {"status": "stale"}).json()
    assert [v["id"] for v in listed["results"]] == [stale.pk]
    detail = ml_client.get(f"/api/v1/models/{stale.pk}/").json()
    assert detail["status"] == "stale"
    assert detail["status_reason"] == "Some of its training data were corrected after this version was trained."
    # Stale is the lineage's head (erasure finds it) but not active.
    assert services.lineage_head(name=stale.name).pk == stale.pk
    assert ModelStatus.STALE in services.LIVE_STATUSES


def test_accept_keeps_the_version_in_service_with_the_justification(dpo_client):
    snapshot = make_snapshot(n=120, d=4, seed=3)
    version = _trained(snapshot)
    _rectify(snapshot)
    version.refresh_from_db()
    assert version.status == ModelStatus.STALE

    policy = _policy(dpo_client, snapshot, "accept", "one corrected feature of one person among 120: ε bounds its weight")

    version.refresh_from_db()
    assert version.status == ModelStatus.ACTIVE
    assert f"rectification policy {policy['id']}" in version.status_reason
    assert "ε bounds its weight" in version.status_reason
    assert AuditEvent.objects.filter(action="model_version.rectification_accepted", object_id=str(version.pk)).exists()

    # Under an accept policy a later rectification leaves the version active, noted.
    _rectify(snapshot, value=-3.0)
    version.refresh_from_db()
    assert version.status == ModelStatus.ACTIVE
    assert AuditEvent.objects.filter(action="model_version.rectification_accepted", object_id=str(version.pk)).count() == 2


def test_retrain_replaces_the_stale_version_with_one_trained_on_a_fresh_snapshot(dpo_client, celery_worker):
    snapshot = make_snapshot(n=120, d=4, seed=4)
    version = _trained(snapshot)
    _policy(dpo_client, snapshot, "retrain", "corrected values change predictions: serve none trained on old ones")

    record, result = _rectify(snapshot)

    new_record_id = result["records"][0]["new"]
    # Embedded mode trains in-process on commit; otherwise the worker picks the run up.
    run = wait_for_run(TrainingRun.objects.get(remediates=version).pk)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.snapshot_id != snapshot.pk
    assert SnapshotMembership.objects.filter(snapshot_id=run.snapshot_id, record_id=new_record_id).exists()
    assert not SnapshotMembership.objects.filter(snapshot_id=run.snapshot_id, record_id=record.pk).exists()
    replacement = ModelVersion.objects.get(training_run=run)
    version.refresh_from_db()
    assert replacement.status == ModelStatus.ACTIVE and replacement.supersedes_id == version.pk
    assert version.status == ModelStatus.SUPERSEDED
    _audits_settled()


def test_retrain_policy_set_after_the_fact_retrains_the_versions_stale_now(dpo_client, celery_worker):
    snapshot = make_snapshot(n=120, d=4, seed=5)
    version = _trained(snapshot)
    _rectify(snapshot)
    version.refresh_from_db()
    assert version.status == ModelStatus.STALE

    _policy(dpo_client, snapshot, "retrain")

    run = wait_for_run(TrainingRun.objects.get(remediates=version).pk)
    assert run.status == RunStatus.SUCCEEDED and run.snapshot_id != snapshot.pk
    version.refresh_from_db()
    assert version.status == ModelStatus.SUPERSEDED
    _audits_settled()


def test_a_run_that_read_the_old_snapshot_registers_stale():
    snapshot = make_snapshot(n=120, d=4, seed=6)
    run = services.training_run_queue(snapshot=snapshot, epochs=1, batch_size=32, noise_multiplier=1.0, enqueue=False)
    _rectify(snapshot)  # after queueing, before training: the run trains on the old version

    run = services.training_run_execute(run_id=run.pk)

    version = ModelVersion.objects.get(training_run=run)
    assert version.status == ModelStatus.STALE and version.status_reason.startswith("on registration:")


def test_a_new_run_on_a_snapshot_holding_rectified_records_is_refused_and_nothing_is_queued(ml_client):
    snapshot = make_snapshot(n=120, d=4, seed=9)
    _rectify(snapshot)
    before = TrainingRun.objects.count()
    with pytest.raises(ServiceConflict) as refused:
        services.training_run_queue(snapshot=snapshot, epochs=1, batch_size=32, noise_multiplier=1.0, enqueue=False)
    assert "Art. 16" in str(refused.value) and refused.value.extra["rectified"] == 1
    response = ml_client.post("/api/v1/training-runs/", {
        "name": "on-old-values", "snapshot": snapshot.pk, "epochs": 1, "batch_size": 32, "noise_multiplier": 1.0,
    }, format="json")
    assert response.status_code == 409 and "rectified since it was taken" in response.json()["detail"], response.content
    assert TrainingRun.objects.count() == before
    # A new snapshot holds the corrected value, and trains.
    fresh = provenance_services.snapshot_create(dataset=snapshot.dataset, purpose=snapshot.purpose, requested_by="ml")
    run = services.training_run_queue(snapshot=fresh, epochs=1, batch_size=32, noise_multiplier=1.0, enqueue=False)
    assert run.status == RunStatus.QUEUED


def test_an_erasure_taints_a_stale_version():
    snapshot = make_snapshot(n=120, d=4, seed=7)
    version = _trained(snapshot)
    _rectify(snapshot)
    member = SnapshotMembership.objects.filter(snapshot=snapshot).order_by("record_id").last()
    amendments = provenance_services.snapshot_records_remove(
        records=DataRecord.objects.filter(subject_id=member.subject_id), reason="erasure", erasure_request_id=1,
    )
    result = services.model_versions_taint_trained_before(
        amendments=[{"snapshot": a.snapshot_id, "sequence": a.sequence} for a in amendments], reason="erasure request 1"
    )
    assert result["newly_tainted"] == [version.pk]
    assert ModelVersion.objects.get(pk=version.pk).status == ModelStatus.TAINTED


def test_policy_bad_input_and_roles(dpo_client, ml_client, auditor_client):
    snapshot = make_snapshot(n=20, d=2, seed=8)
    activity = snapshot.dataset.processing_activity_id
    body = {"processing_activity": activity, "action": "ignore", "justification": "x"}
    refused = dpo_client.post("/api/v1/rectification-policies/", body, format="json")
    assert refused.status_code == 400 and "action" in refused.json()
    empty = dpo_client.post("/api/v1/rectification-policies/", {**body, "action": "accept", "justification": ""},
                            format="json")
    assert empty.status_code == 400 and "justification" in empty.json()
    assert ml_client.post("/api/v1/rectification-policies/", {**body, "action": "accept"}, format="json").status_code == 403
    assert not RectificationPolicy.objects.exists()
    with pytest.raises(ServiceError) as caught:
        services.rectification_policy_set(actor=dpo_client.user, processing_activity=activity, action="accept",
                                          justification="   ")
    assert caught.value.field == "justification"

    first = _policy(dpo_client, snapshot, "accept")
    second = _policy(dpo_client, snapshot, "retrain")
    listed = auditor_client.get("/api/v1/rectification-policies/", {"processing_activity": activity}).json()
    assert [p["id"] for p in listed["results"]] == [second["id"], first["id"]]
    assert ml_client.get(f"/api/v1/rectification-policies/{first['id']}/").json()["action"] == "accept"
    assert services.rectification_policy_current(processing_activity_id=activity).pk == second["id"]
    with pytest.raises(ValueError):
        RectificationPolicy.objects.get(pk=first["id"]).save()
