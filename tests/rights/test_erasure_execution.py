"""Executing an erasure: every step, resumability after an interruption, remediation rules."""

from __future__ import annotations

import pytest
from django.utils import timezone

from governance.models import AuditEvent, ConsentEvent, DataSubject
from governance.selectors import audit_chain_verify
from mlops.models import ModelVersion
from provenance.models import DataRecord, Snapshot, SnapshotAmendment
from rights import execution, services
from rights import selectors as erasure_selectors
from rights.models import ErasureReceipt, ErasureStatus, ErasureStep
from tests.rights import helpers as h

CAROL = "carol@example.org"


class WorkerKilled(Exception):
    """Stands for a worker dying in the middle of a step."""


def _world():
    carol = h.subject_for(CAROL)
    act = h.activity(recipients=[{"name": "Acme Analytics", "third_country": ""},
                                 {"name": "Globex Labs", "third_country": "US"}])
    people = [carol, *h.crowd(40)]
    ds = h.people_dataset(act=act, people=people, records_per_person=2)
    ConsentEvent.objects.create(
        event_id="carol-given", subject=carol, purpose=act.purposes.first(), action="given",
        occurred_at=timezone.now(), notice_version="v1", notice_sha256="0" * 64, method="web",
    )
    snap = h.snapshot_of(ds)  # gives the others their consent
    return carol, ds, snap


def _verified_request(identifier: str = CAROL):
    request = services.erasure_request_receive(identifier=identifier, ground="17_1_a")
    services.erasure_request_verify(erasure_request=request, method="signed letter")
    return request


def _start(request):
    # Move to in progress without enqueueing, so the test drives the execution itself.
    from rights.models import ErasureRequest

    ErasureRequest.objects.filter(pk=request.pk).update(status=ErasureStatus.IN_PROGRESS, execution_started_at=timezone.now())


@pytest.mark.django_db(transaction=True)
def test_interrupted_execution_resumes_to_one_consistent_result(monkeypatch, celery_worker):
    carol, ds, snap = _world()
    model = h.train(snapshot=snap, name="plain")
    version = ModelVersion.objects.get(training_run=model)
    request = _verified_request()
    _start(request)

    original = execution._delete_consent

    def killed_after_deleting(plan):
        work = original(plan)

        def run(req):
            work(req)  # the deletion happens, then the worker dies before the step commits
            raise WorkerKilled()

        return run

    monkeypatch.setattr(execution, "_delete_consent", killed_after_deleting)
    with pytest.raises(WorkerKilled):
        execution.erasure_request_execute(request_id=request.pk)

    steps = {s.name: s for s in ErasureStep.objects.filter(request=request)}
    assert steps["delete_records"].status == "done"
    assert steps["remediate_lineage_plain"].status == "done"
    assert steps["delete_consent_events"].status == "failed" and "WorkerKilled" in steps["delete_consent_events"].error
    assert "certificate" not in steps
    # Work done by finished steps stays done; the interrupted step's work rolled back.
    assert not DataRecord.objects.filter(subject=carol).exists()
    assert ConsentEvent.objects.filter(subject=carol).count() == 1
    request.refresh_from_db()
    assert request.status == ErasureStatus.IN_PROGRESS

    monkeypatch.setattr(execution, "_delete_consent", original)
    result = execution.erasure_request_execute(request_id=request.pk)
    assert result["status"] == "completed"
    request.refresh_from_db()
    assert request.status == ErasureStatus.COMPLETED and request.subject_id is None
    steps = {s.name: s for s in ErasureStep.objects.filter(request=request)}
    assert all(s.status == "done" for s in steps.values())
    assert steps["delete_records"].attempts == 1  # not run again
    assert steps["delete_consent_events"].attempts == 2
    # Exactly one new model version, one receipt, one certificate event.
    assert ModelVersion.objects.filter(supersedes=version).count() == 1
    assert ErasureReceipt.objects.filter(request=request).count() == 1
    assert AuditEvent.objects.filter(action="erasure.certificate_issued", object_id=str(request.pk)).count() == 1
    assert not DataSubject.objects.filter(pk=carol.pk).exists()
    # Running it once more changes nothing.
    events = AuditEvent.objects.count()
    assert execution.erasure_request_execute(request_id=request.pk)["certificate_sha256"] == request.certificate_sha256
    assert AuditEvent.objects.count() == events
    assert audit_chain_verify().ok


@pytest.mark.django_db(transaction=True)
def test_execution_amends_snapshots_deletes_and_remediates_by_override(celery_worker):
    carol, ds, snap = _world()
    kept = ModelVersion.objects.get(training_run=h.train(snapshot=snap, name="kept-on-dp"))
    retired = ModelVersion.objects.get(training_run=h.train(snapshot=snap, name="to-retire"))
    request = _verified_request()
    services.erasure_request_override_remediation(
        erasure_request=request, model_version_id=kept.pk, action="rely_on_dp",
        justification="σ=1.0; MIA AUC 0.50 on the hold-out; the model serves an emergency triage tool.",
    )
    services.erasure_request_override_remediation(
        erasure_request=request, model_version_id=retired.pk, action="retire", justification="Not worth retraining.",
    )
    original_root = snap.merkle_root
    # A run already training on data it read before the erasure would register a model
    # holding the person: it is cancelled. A queued run reads the amended snapshot later:
    # it is left to train without them.
    from mlops.models import TrainingRun

    queued = TrainingRun.objects.create(name="queued", snapshot=snap, target_delta=1e-5, status="queued")
    running = TrainingRun.objects.create(
        name="running", snapshot=snap, target_delta=1e-5, status="running", trained_on_amendment=0
    )
    _start(request)
    execution.erasure_request_execute(request_id=request.pk)
    queued.refresh_from_db()
    running.refresh_from_db()
    assert (queued.status, running.status) == ("queued", "cancelled")

    snap = Snapshot.objects.get(pk=snap.pk)
    assert snap.merkle_root == original_root  # the original root stays as history
    amendment = SnapshotAmendment.objects.get(snapshot=snap, reason="erasure")
    assert amendment.erasure_request_id == request.pk and amendment.records_removed == 2
    assert amendment.previous_root == original_root and amendment.new_root != original_root
    assert snap.members.count() == snap.included_count - 2

    kept.refresh_from_db()
    retired.refresh_from_db()
    assert kept.status == "active" and "accepted risk" in kept.status_reason
    assert retired.status == "retired"
    from mlops import artifacts

    assert artifacts.absolute(kept.artifact_path).exists()
    assert not artifacts.absolute(retired.artifact_path).exists()
    request.refresh_from_db()
    assert sorted(request.recipient_notifications.values_list("recipient", flat=True)) == ["Acme Analytics", "Globex Labs"]
    receipt = request.receipt
    assert (receipt.records_deleted, receipt.snapshots_amended, receipt.consent_events_deleted) == (2, 1, 1)
    event = AuditEvent.objects.get(action="erasure.lineage_kept_on_dp", object_id=str(request.pk))
    assert event.details["name"] == "kept-on-dp" and event.details["model_version"] == kept.pk


@pytest.mark.django_db
def test_rely_on_dp_needs_a_dp_model_and_a_justification():
    carol = h.subject_for(CAROL)
    request = services.erasure_request_receive(identifier=CAROL, ground="17_1_a")
    with pytest.raises(services.ServiceError) as excinfo:
        services.erasure_request_override_remediation(
            erasure_request=request, model_version_id=999, action="rely_on_dp", justification="x"
        )
    assert excinfo.value.field == "model_version"
    with pytest.raises(services.ServiceError) as excinfo:
        services.erasure_request_override_remediation(
            erasure_request=request, model_version_id=1, action="rely_on_dp", justification=" "
        )
    assert excinfo.value.field == "justification"
    assert carol.pk


@pytest.mark.django_db(transaction=True)
def test_a_repeated_request_after_erasure_is_recognised_without_the_subject_row():
    _world()
    request = _verified_request()
    _start(request)
    execution.erasure_request_execute(request_id=request.pk)
    again = services.erasure_request_receive(identifier=" Carol@Example.org", ground="17_1_a")
    assert again.data_held_at_receipt is False and again.status == "completed"
    assert f"erasure request {request.pk}" in again.outcome
    assert again.identifier_receipt_hash == request.identifier_receipt_hash


@pytest.mark.django_db(transaction=True)
def test_shard_rows_equal_the_shard_of_the_full_snapshot(celery_worker):
    """Unlearning reads only the shard's people; it must see exactly what training saw."""
    import numpy as np

    from mlops.models import TrainingRun
    from mlops.services import unlearning

    rng = np.random.default_rng(5)
    people = h.crowd(90)
    colours = ["red", "green", "blue", None]
    rows = []
    for subject in people:
        x0, x1 = float(rng.normal()), float(rng.normal())
        colour = colours[int(rng.integers(0, 4))]
        rows.append((subject, {"x0": x0 * 3, "x1": x1, "colour": colour}, int(x0 + x1 > 0)))
    ds = h.dataset_with_records(act=h.activity(), rows=rows)
    ds.schema = {"features": [{"name": "x0", "type": "float", "min": -2.0, "max": 2.0},
                              {"name": "colour", "type": "category", "categories": ["red", "green", "blue"]},
                              {"name": "x1", "type": "float"}],
                 "label": {"name": "y", "type": "int"}}
    ds.save(update_fields=["schema"])
    run = TrainingRun.objects.get(pk=h.train(snapshot=h.snapshot_of(ds), name="mixed", sisa={"shards": 3, "slices": 2}).pk)
    for shard in range(3):
        placed = dict(run.sisa_assignments.filter(shard=shard).values_list("subject_id", "slice"))
        X, y, slices = unlearning.shard_rows(run=run, shard=shard)
        X_full, y_full, slices_full = unlearning._shard_rows_from_full_snapshot(run=run, placed=placed)
        assert len(X) == len(placed) > 0
        assert np.array_equal(X, X_full) and np.array_equal(y, y_full) and np.array_equal(slices, slices_full)


@pytest.mark.django_db(transaction=True)
def test_retraining_runs_outside_any_transaction_and_a_failed_retraining_is_resumed_not_duplicated(
    monkeypatch, celery_worker
):
    from mlops.models import LedgerState, PrivacyLedgerEntry, RunStatus, TrainingRun
    from mlops.services import execution as mlops_execution

    carol, ds, snap = _world()
    version = ModelVersion.objects.get(training_run=h.train(snapshot=snap, name="plain"))
    request = _verified_request()
    _start(request)

    real_execute = mlops_execution.training_run_execute
    trained_outside_transactions = []

    def dying_worker(*, run_id, on_progress=None, takeover=False):
        # Training starts once the retraining run is registered and committed, with no
        # transaction open around it; here the worker dies with the run left 'running'.
        from django.db import connection

        trained_outside_transactions.append(not connection.in_atomic_block)
        TrainingRun.objects.filter(pk=run_id).update(status=RunStatus.RUNNING)
        raise RuntimeError("worker lost")

    monkeypatch.setattr(mlops_execution, "training_run_execute", dying_worker)
    with pytest.raises(RuntimeError, match="worker lost"):
        execution.erasure_request_execute(request_id=request.pk)
    assert trained_outside_transactions == [True]
    step = ErasureStep.objects.get(request=request, name="remediate_lineage_plain")
    assert step.status == "failed" and "worker lost" in step.error and "/" not in step.error
    (orphan,) = TrainingRun.objects.filter(remediates=version)

    monkeypatch.setattr(mlops_execution, "training_run_execute", real_execute)
    result = execution.erasure_request_execute(request_id=request.pk)
    assert result["status"] == ErasureStatus.COMPLETED
    # The retry resumed the registered run: one retraining, one ledger entry, one new version.
    assert list(TrainingRun.objects.filter(remediates=version).values_list("pk", "status")) == [
        (orphan.pk, RunStatus.SUCCEEDED)
    ]
    assert PrivacyLedgerEntry.objects.filter(training_run=orphan, state=LedgerState.SPENT).count() == 1
    remediated = ErasureStep.objects.get(request=request, name="remediate_lineage_plain").details
    assert remediated["outcome"] == "retrained" and remediated["new_training_run"] == orphan.pk
    new = ModelVersion.objects.get(supersedes=version)
    assert (new.status, remediated["model_version"]) == ("active", new.pk)
    assert audit_chain_verify().ok


@pytest.mark.django_db(transaction=True)
def test_unlearning_twice_keeps_everyone_else_in_the_original_placements_without_copying_them(celery_worker):
    from mlops.models import SisaAssignment, TrainingRun

    people = h.crowd(60)
    ds = h.people_dataset(act=h.activity(), people=people, records_per_person=2)
    original = TrainingRun.objects.get(
        pk=h.train(snapshot=h.snapshot_of(ds), name="sisa", sisa={"shards": 3, "slices": 2}).pk
    )
    placements = dict(original.sisa_assignments.values_list("subject_id", "shard"))
    first, second = people[0], people[1]

    runs = []
    for person in (first, second):
        identifier = f"person-{person.pk}"
        # Tie the crowd member to an identifier the request can name.
        from governance.pseudonymisation import pseudonymise

        DataSubject.objects.filter(pk=person.pk).update(pseudonym=pseudonymise(identifier))
        request = _verified_request(identifier)
        impact = erasure_selectors.erasure_request_impact(erasure_request=request)
        live = [m for m in impact["model_versions"] if m["status"] == "active"]
        assert [m["shards"] for m in live] == [[placements[person.pk]]]
        _start(request)
        execution.erasure_request_execute(request_id=request.pk)
        successor = ModelVersion.objects.get(status="active", name="sisa").training_run
        runs.append(successor)

    for run in runs:
        assert run.sisa_placements_from_id == original.pk
        assert not SisaAssignment.objects.filter(training_run=run).exists()
    # The erased people's placements went with them; everyone else kept theirs.
    remaining = dict(original.sisa_assignments.values_list("subject_id", "shard"))
    assert remaining == {k: v for k, v in placements.items() if k not in (first.pk, second.pk)}


@pytest.mark.django_db(transaction=True)
def test_a_person_in_no_snapshot_is_erased_and_certified_with_nothing_to_remediate():
    """Records in a dataset no snapshot was taken of: no amendment, no model, a true certificate."""
    carol = h.subject_for(CAROL)
    h.people_dataset(act=h.activity(), people=[carol, *h.crowd(5)])
    request = _verified_request()
    _start(request)
    assert execution.erasure_request_execute(request_id=request.pk)["status"] == "completed"
    steps = {s.name: s.details for s in ErasureStep.objects.filter(request=request)}
    assert steps["amend_snapshots"]["amendments"] == [] and steps["taint_models"]["tainted"] == []
    assert not any(name.startswith(execution.REMEDIATE_PREFIX) for name in steps)
    assert all(check["ok"] for check in steps["verify_claims"]["checks"])
    assert not DataRecord.objects.filter(subject_id=carol.pk).exists()
    assert not DataSubject.objects.filter(pk=carol.pk).exists()
