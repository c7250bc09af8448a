"""DP training through the API and a real Celery worker: ε, the registry, MIA, SISA."""

from __future__ import annotations

import hashlib

import pytest

from mlops import artifacts, services
from mlops.engine.accounting import epsilon_of_history
from mlops.models import (
    LedgerState,
    MembershipInferenceAudit,
    ModelVersion,
    RunStatus,
    SisaAssignment,
    SisaCheckpoint,
    TrainingRun,
)
from provenance.models import SnapshotMembership
from tests.mlops.factories import make_snapshot
from tests.mlops.helpers import wait_for, wait_for_run


@pytest.mark.django_db(transaction=True)
def test_worker_trains_a_dp_model_end_to_end(celery_worker, ml_client, auditor_client):
    snapshot = make_snapshot(n=300, d=10)
    response = ml_client.post(
        "/api/v1/training-runs/",
        {"snapshot": snapshot.pk, "name": "e2e-dp", "epochs": 2, "batch_size": 32, "target_epsilon": 2.0,
         "model_spec": {"hidden_sizes": [16]}},
        format="json",
    )
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["status"] in {"queued", "running", "succeeded"}
    assert body["planned_epsilon"] <= 2.0

    run = wait_for_run(body["id"])
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.attempts == 1
    # The reported ε respects the target and is exactly what Opacus's accountant says.
    assert run.epsilon <= 2.0
    assert run.epsilon == pytest.approx(
        epsilon_of_history(history=run.accountant_history, delta=run.delta, accountant="rdp"), rel=1e-12
    )
    assert [m["epoch"] for m in run.epoch_metrics] == [1, 2]
    assert run.progress["epoch"] == 2 and run.progress["epsilon"] == pytest.approx(run.epsilon)

    detail = auditor_client.get(f"/api/v1/training-runs/{run.pk}/").json()
    assert detail["status"] == "succeeded" and detail["epsilon"] == pytest.approx(run.epsilon)
    assert len(detail["epoch_metrics"]) == 2

    version = ModelVersion.objects.get(training_run=run)
    assert version.epsilon == run.epsilon and version.delta == run.delta and not version.non_private
    path = artifacts.absolute(version.artifact_path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == version.artifact_sha256

    wait_for(lambda: MembershipInferenceAudit.objects.filter(model_version=version, attack="loss").exists(),
             what="MIA audit")
    audit = MembershipInferenceAudit.objects.get(model_version=version, attack="loss")
    assert audit.n_members == run.n_train and audit.n_nonmembers == run.n_holdout > 0
    assert 0.0 <= audit.auc <= 1.0 and audit.roc[0] == [0.0, 0.0]

    model = auditor_client.get(f"/api/v1/models/{version.pk}/").json()
    assert model["epsilon"] == pytest.approx(run.epsilon)
    loss = next(a for a in model["membership_inference_audits"] if a["attack"] == "loss")
    assert loss["auc"] == pytest.approx(audit.auc)
    assert model["lineage"]["dataset"]["id"] == snapshot.dataset_id
    lineage = auditor_client.get(f"/api/v1/models/{version.pk}/lineage/")
    assert lineage.status_code == 200

    download = ml_client.get(f"/api/v1/models/{version.pk}/artifact/")
    assert download.status_code == 200
    assert hashlib.sha256(b"".join(download.streaming_content)).hexdigest() == version.artifact_sha256
    assert auditor_client.get(f"/api/v1/models/{version.pk}/artifact/").status_code == 403
    # Weights changed or gone behind the registry's back are never served: a clear 409.
    path.write_bytes(path.read_bytes() + b"tampered")
    tampered = ml_client.get(f"/api/v1/models/{version.pk}/artifact/")
    assert tampered.status_code == 409 and "do not match" in tampered.json()["detail"]
    path.unlink()
    assert ml_client.get(f"/api/v1/models/{version.pk}/artifact/").status_code == 409


@pytest.mark.django_db(transaction=True)
def test_sisa_run_stores_assignments_and_checkpoints(celery_worker):
    snapshot = make_snapshot(n=300, d=10, seed=1)
    run = services.training_run_queue(
        snapshot=snapshot, name="sisa", epochs=2, batch_size=16, noise_multiplier=1.5,
        sisa={"shards": 3, "slices": 2}, model_spec={"hidden_sizes": [16]},
    )
    run = wait_for_run(run.pk)
    assert run.status == RunStatus.SUCCEEDED, run.error

    assignments = SisaAssignment.objects.filter(training_run=run)
    train_subjects = run.n_train  # one record per person in this snapshot
    assert assignments.count() == train_subjects
    assert set(assignments.values_list("shard", flat=True)) == {0, 1, 2}
    assert set(assignments.values_list("slice", flat=True)) == {0, 1}
    snapshot_subjects = set(SnapshotMembership.objects.filter(snapshot=snapshot).values_list("subject_id", flat=True))
    assert set(assignments.values_list("subject_id", flat=True)) <= snapshot_subjects

    checkpoints = SisaCheckpoint.objects.filter(training_run=run)
    assert sorted(checkpoints.values_list("shard", "slice")) == [(s, r) for s in range(3) for r in range(2)]
    for checkpoint in checkpoints:
        path = artifacts.absolute(checkpoint.artifact_path)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == checkpoint.artifact_sha256
    for shard in range(3):
        eps = list(checkpoints.filter(shard=shard).order_by("slice").values_list("epsilon", flat=True))
        assert 0 < eps[0] < eps[1]  # a later checkpoint has seen more training
    # Shards are disjoint by person: the ensemble's ε is the worst shard's (parallel composition).
    per_shard = [
        epsilon_of_history(history=h, delta=run.delta, accountant="rdp") for h in run.accountant_history.values()
    ]
    assert run.epsilon == pytest.approx(max(per_shard))
    assert run.epsilon == pytest.approx(run.planned_epsilon)
    version = ModelVersion.objects.get(training_run=run)
    assert version.is_sisa_ensemble and version.epsilon == run.epsilon
    # One ensemble file plus the 6 checkpoints, nothing else.
    assert len(artifacts.run_files(run.pk)) == 7


@pytest.mark.django_db(transaction=True)
def test_executing_a_succeeded_run_again_changes_nothing(celery_worker):
    snapshot = make_snapshot(n=200, d=5, seed=2)
    run = services.training_run_queue(snapshot=snapshot, epochs=1, batch_size=32, noise_multiplier=1.0)
    run = wait_for_run(run.pk)
    assert run.status == RunStatus.SUCCEEDED, run.error
    version = ModelVersion.objects.get(training_run=run)
    files = artifacts.run_files(run.pk)

    again = services.training_run_execute(run_id=run.pk)

    assert again.status == RunStatus.SUCCEEDED and again.attempts == run.attempts == 1
    assert ModelVersion.objects.filter(training_run=run).count() == 1
    assert artifacts.run_files(run.pk) == files
    assert ModelVersion.objects.get(pk=version.pk).artifact_sha256 == version.artifact_sha256


@pytest.mark.slow
@pytest.mark.django_db
def test_non_private_model_leaks_membership_more_than_dp_at_epsilon_1():
    """A non-private model that over-fits shows a clearly higher MIA AUC than DP at ε ≤ 1."""
    snapshot = make_snapshot(n=400, d=20, seed=3, label_noise=0.3)
    common = {
        "snapshot": snapshot, "epochs": 60, "batch_size": 32, "seed": 7, "optimizer": "adam",
        "learning_rate": 0.003, "model_spec": {"hidden_sizes": [256, 256]}, "holdout_fraction": 0.45,
        "validation_split": 0.0,
    }
    plain = services.training_run_queue(name="overfit", allow_non_private=True, **common)
    private = services.training_run_queue(name="dp-eps1", target_epsilon=1.0, max_grad_norm=1.0, **common)
    aucs = {}
    for run in (plain, private):
        run = services.training_run_execute(run_id=run.pk)
        assert run.status == RunStatus.SUCCEEDED, run.error
        version = ModelVersion.objects.get(training_run=run)
        aucs[run.name] = services.membership_inference_audit_run(model_version_id=version.pk)
    private.refresh_from_db()
    plain.refresh_from_db()
    assert private.epsilon <= 1.0
    assert plain.epsilon is None and ModelVersion.objects.get(training_run=plain).non_private
    overfit, dp = aucs["overfit"], aucs["dp-eps1"]
    shown = {name: (a.auc, a.auc_low, a.auc_high) for name, a in aucs.items()}
    # The loss attack is weak (issue 15) and its AUC moves with the person split, which depends
    # on the database's ids (0.64-0.71 for the over-fitted model, 0.55-0.57 for DP): what holds
    # is that the over-fitted model's 95% interval lies clear of chance, above DP's estimate.
    assert overfit.auc_low > 0.5, shown
    assert overfit.auc > dp.auc, shown


@pytest.mark.django_db
def test_cancel_a_queued_run_releases_its_reservation(ml_client):
    snapshot = make_snapshot(n=200, d=5)
    run = services.training_run_queue(snapshot=snapshot, epochs=1, batch_size=32, noise_multiplier=1.0)
    assert run.ledger_entry.state == LedgerState.RESERVED

    response = ml_client.post(f"/api/v1/training-runs/{run.pk}/cancel/")

    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    run.refresh_from_db()
    assert run.ledger_entry.state == LedgerState.RELEASED
    assert ml_client.post(f"/api/v1/training-runs/{run.pk}/cancel/").status_code == 409
    # The queued task, if delivered later, finds the run finished and does nothing.
    assert services.training_run_execute(run_id=run.pk).status == RunStatus.CANCELLED
    assert not ModelVersion.objects.filter(training_run=run).exists()


@pytest.mark.django_db
def test_sweeper_fails_runs_stuck_past_the_time_limit():
    from datetime import timedelta

    from django.utils import timezone

    snapshot = make_snapshot(n=200, d=5)
    stuck = services.training_run_queue(snapshot=snapshot, epochs=1, batch_size=32, noise_multiplier=1.0)
    fresh = services.training_run_queue(snapshot=snapshot, epochs=1, batch_size=32, noise_multiplier=1.0)
    TrainingRun.objects.filter(pk=stuck.pk).update(status="running", started_at=timezone.now() - timedelta(hours=3))
    TrainingRun.objects.filter(pk=fresh.pk).update(status="running", started_at=timezone.now())

    assert services.training_run_fail_stuck(time_limit=timedelta(hours=1)) == 1

    stuck.refresh_from_db()
    fresh.refresh_from_db()
    assert stuck.status == RunStatus.FAILED and "time limit" in stuck.error
    assert stuck.ledger_entry.state == LedgerState.RELEASED
    assert fresh.status == RunStatus.RUNNING
