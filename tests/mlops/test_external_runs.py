"""Issue 20 item 2: runs trained outside the ledger. The ledger plans what Opacus will do,
reserves it, recomputes ε from the reported accountant history (never trusting a sent ε),
settles the budget with that curve and registers the version; serving systems read a
version's status and poll what changed."""

from __future__ import annotations

import hashlib
import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone
from opacus.accountants import PRVAccountant, RDPAccountant

from governance.models import AuditEvent, ConsentEvent
from mlops import services
from mlops.models import LedgerState, ModelStatus, ModelVersion, PrivacyLedgerEntry, RunStatus, TrainingRun
from mlops.services.status import model_versions_status_set
from provenance.lineage_exports import training_run_openlineage_events
from provenance.models import SnapshotMembership
from tests.conftest import make_role_client
from tests.mlops.factories import make_snapshot

SHA = hashlib.sha256(b"weights").hexdigest()
BUDGET_DELTA = 1e-5


def _opacus_epsilon(history, delta: float, accountant: str) -> float:
    acct = RDPAccountant() if accountant == "rdp" else PRVAccountant()
    acct.history = [tuple(h) for h in history]
    return acct.get_epsilon(delta=delta)


def _start(client, snapshot, **extra):
    body = {"executor": "external", "snapshot": snapshot.pk, "name": f"ext-{snapshot.pk}", "epochs": 2,
            "batch_size": 32, "target_epsilon": 3.0, **extra}
    return client.post("/api/v1/training-runs/", body, format="json")


def _report(client, run_id, **body):
    return client.post(f"/api/v1/training-runs/{run_id}/report/", body, format="json")


def _budget(dpo_client, snapshot, cap: float = 50.0):
    response = dpo_client.put(f"/api/v1/datasets/{snapshot.dataset_id}/privacy-budget/",
                              {"epsilon_cap": cap, "delta": BUDGET_DELTA}, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def _planned_history(run: dict) -> list[list]:
    return [[run["noise_multiplier"], run["sample_rate"], run["steps"]]]


# --- The plan is what Opacus will do -----------------------------------------------------


@pytest.mark.parametrize(("n", "batch_size"), [(300, 32), (93, 1)])
def test_the_plan_is_what_opacus_make_private_does_with_the_exported_records(db, ml_client, n, batch_size):
    import torch
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    snapshot = make_snapshot(n=n, d=3, seed=2)
    response = _start(ml_client, snapshot, batch_size=batch_size, epochs=2, target_delta=1e-3 / n)
    assert response.status_code == 201, response.content
    run = response.json()

    # The trainer's side: a DataLoader of batch_size over the N exported records.
    model = torch.nn.Linear(3, 2)
    loader = DataLoader(TensorDataset(torch.zeros(n, 3), torch.zeros(n, dtype=torch.long)), batch_size=batch_size)
    engine = PrivacyEngine(accountant="rdp")
    _, _, private_loader = engine.make_private(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), data_loader=loader,
        noise_multiplier=run["noise_multiplier"], max_grad_norm=1.0, poisson_sampling=True,
    )
    assert run["sample_rate"] == private_loader.sample_rate
    assert run["steps"] == 2 * len(private_loader)
    # The planned ε is Opacus's own for that plan, at the run's δ, and was reserved.
    assert run["planned_epsilon"] == pytest.approx(
        _opacus_epsilon(_planned_history(run), run["target_delta"], "rdp"), rel=1e-12)
    assert run["planned_epsilon"] <= 3.0
    assert run["executor"] == "external" and run["status"] == "running"
    assert run["export_url"] == f"/api/v1/snapshots/{snapshot.pk}/export/"
    assert PrivacyLedgerEntry.objects.get(training_run_id=run["id"]).state == LedgerState.RESERVED


def test_the_run_token_is_shown_once_and_stored_hashed(db, ml_client):
    snapshot = make_snapshot(n=200, d=3, seed=3)
    created = _start(ml_client, snapshot).json()
    token = created["run_token"]
    assert len(token) >= 32
    stored = TrainingRun.objects.get(pk=created["id"])
    assert stored.run_token_hash == hashlib.sha256(token.encode()).hexdigest() and token not in stored.run_token_hash
    again = ml_client.get(f"/api/v1/training-runs/{created['id']}/").json()
    assert "run_token" not in again and token not in str(again)
    assert again["reservation_expires_at"] is not None


# --- The report ------------------------------------------------------------------------


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_reported_epsilon_is_opacus_own_and_the_ledger_is_settled_with_it(db, dpo_client, ml_client, accountant):
    snapshot = make_snapshot(n=400, d=4, seed=4)
    _budget(dpo_client, snapshot)
    run = _start(ml_client, snapshot, accountant=accountant).json()
    before = dpo_client.get(f"/api/v1/datasets/{snapshot.dataset_id}/privacy-budget/").json()
    assert before["spent_epsilon"] == 0 and before["committed_epsilon"] > 0  # reserved

    # The trainer stopped a few steps early and added noise for the last ones: less than planned.
    sigma, q, steps = run["noise_multiplier"], run["sample_rate"], run["steps"]
    history = [[sigma, q, steps - 5], [sigma * 1.5, q, 3]]
    expected = _opacus_epsilon(history, run["target_delta"], accountant)
    assert expected < run["planned_epsilon"]
    response = _report(ml_client, run["id"], run_token=run["run_token"], accountant=accountant, history=history,
                       metrics={"val_accuracy": 0.87, "epochs": 2}, artifact_sha256=SHA.upper(),
                       description="Small CNN", mlflow_run_id="abc123")
    assert response.status_code == 201, response.content
    body = response.json()
    version = body["model_version"]
    assert version["epsilon"] == pytest.approx(expected, rel=1e-12)
    assert version["delta"] == run["target_delta"]
    assert version["artifact_sha256"] == SHA and version["status"] == "active"
    assert body["run"]["status"] == "succeeded" and body["run"]["epsilon"] == pytest.approx(expected, rel=1e-12)
    stored = ModelVersion.objects.get(pk=version["id"])
    assert stored.external and stored.description == "Small CNN" and stored.training_run.snapshot_id == snapshot.pk
    assert stored.metrics == {"val_accuracy": 0.87, "epochs": 2}
    assert stored.training_run.mlflow_run_id == "abc123"

    # Spent = the recomputed curve (the ledger composes RDP at the budget's δ); the rest of
    # the reservation is released: committed is what was spent.
    after = dpo_client.get(f"/api/v1/datasets/{snapshot.dataset_id}/privacy-budget/").json()
    assert after["spent_epsilon"] == pytest.approx(_opacus_epsilon(history, BUDGET_DELTA, "rdp"), rel=1e-9)
    assert after["committed_epsilon"] == pytest.approx(after["spent_epsilon"], rel=1e-12)
    assert after["committed_epsilon"] < before["committed_epsilon"]
    assert PrivacyLedgerEntry.objects.get(training_run_id=run["id"]).state == LedgerState.SPENT

    # Lineage: snapshot → run → version, in the OpenLineage events and the audit trail.
    events = training_run_openlineage_events(run=stored.training_run)
    assert [e.eventType.value for e in events] == ["START", "COMPLETE"]
    assert events[1].inputs[0].name == f"snapshots/{snapshot.pk}"
    assert events[1].outputs[0].name == f"models/{stored.name}/v{stored.version}"
    assert AuditEvent.objects.filter(action="training_run.reported", object_id=str(run["id"])).exists()
    assert AuditEvent.objects.filter(action="model_version.registered", object_id=str(stored.pk)).exists()
    detail = ml_client.get(f"/api/v1/models/{stored.pk}/")
    assert detail.status_code == 200 and detail.json()["external"] is True
    # It claims no encoding, person split or seed of the engine's: the owner's code did that.
    reproducibility = detail.json()["reproducibility"]
    assert reproducibility["executor"] == "external"
    assert reproducibility["feature_order"] == [f["name"] for f in snapshot.dataset.schema["features"]]
    assert reproducibility["person_split"] is None and reproducibility["seed"] is None
    assert "not recorded by the ledger" in reproducibility["encoding_rule"]
    assert reproducibility["snapshot"] == {"id": snapshot.pk, "merkle_root": snapshot.merkle_root}
    # The ledger holds no weights of it: the artifact route says so instead of failing.
    assert dpo_client.get(f"/api/v1/models/{stored.pk}/artifact/").status_code == 409


def test_the_lineage_report_and_the_admin_say_the_epsilon_rests_on_the_owners_reported_history(
        db, ml_client, admin_client, tmp_path):
    from assessments.reports.model_lineage import model_lineage_report_render
    from tests.governance.reports_helpers import pdf_text

    snapshot = make_snapshot(n=200, d=4, seed=6)
    run = _start(ml_client, snapshot).json()
    sigma, q, steps = run["noise_multiplier"], run["sample_rate"], run["steps"]
    history = [[sigma, q, steps - 2], [sigma * 2, q, 2]]
    version = _report(ml_client, run["id"], run_token=run["run_token"], accountant="rdp", history=history,
                      artifact_sha256=SHA).json()["model_version"]
    path = tmp_path / "lineage.pdf"
    model_lineage_report_render(object_id=version["id"], path=path)
    text = " ".join(pdf_text(path.read_bytes()).split())
    assert "outside the ledger by" in text and "did not run or observe the training" in text
    assert f"{steps - 2:,} steps" in text and "2 steps" in text  # both reported segments
    page = admin_client.get(f"/admin/mlops/modelversion/{version['id']}/change/")
    assert page.status_code == 200
    assert "recomputed by the ledger from the accountant history its owner reported" in page.content.decode()


def test_a_forged_lower_epsilon_is_ignored_and_the_audit_says_so(db, ml_client):
    snapshot = make_snapshot(n=300, d=3, seed=5)
    run = _start(ml_client, snapshot).json()
    history = _planned_history(run)
    expected = _opacus_epsilon(history, run["target_delta"], "rdp")
    assert expected > 0.1
    response = _report(ml_client, run["id"], run_token=run["run_token"], accountant="rdp", history=history,
                       artifact_sha256=SHA, epsilon=0.1)
    assert response.status_code == 201, response.content
    assert response.json()["model_version"]["epsilon"] == pytest.approx(expected, rel=1e-12)
    assert ModelVersion.objects.get(training_run_id=run["id"]).epsilon == pytest.approx(expected, rel=1e-12)
    event = AuditEvent.objects.get(action="training_run.reported", object_id=str(run["id"]))
    assert event.details["sent_epsilon_ignored"] is True and event.details["sent_epsilon"] == 0.1
    assert event.details["epsilon"] == pytest.approx(expected, rel=1e-12)


def test_an_overspend_is_refused_until_a_dpo_approves_it_within_the_cap(db, dpo_client, ml_client):
    snapshot = make_snapshot(n=300, d=3, seed=6)
    _budget(dpo_client, snapshot, cap=50.0)
    run = _start(ml_client, snapshot, target_epsilon=1.0).json()
    overspent = [[run["noise_multiplier"] * 0.6, run["sample_rate"], run["steps"]]]
    epsilon = _opacus_epsilon(overspent, run["target_delta"], "rdp")
    assert epsilon > run["planned_epsilon"]
    report = {"run_token": run["run_token"], "accountant": "rdp", "history": overspent, "artifact_sha256": SHA}

    refused = _report(ml_client, run["id"], **report)
    assert refused.status_code == 409, refused.content
    figures = refused.json()
    assert figures["epsilon"] == pytest.approx(epsilon) and figures["planned_epsilon"] == pytest.approx(
        run["planned_epsilon"])
    assert f"{epsilon:.6g}" in str(figures) and f"{run['planned_epsilon']:.6g}" in str(figures)
    assert not ModelVersion.objects.filter(training_run_id=run["id"]).exists()
    assert TrainingRun.objects.get(pk=run["id"]).status == RunStatus.RUNNING
    assert PrivacyLedgerEntry.objects.get(training_run_id=run["id"]).state == LedgerState.RESERVED

    url = f"/api/v1/training-runs/{run['id']}/approve-overspend/"
    approval = {"epsilon_limit": epsilon * 1.01, "reason": "the CNN needed less noise to converge"}
    assert ml_client.post(url, approval, format="json").status_code == 403
    too_little = dpo_client.post(url, {**approval, "epsilon_limit": epsilon * 0.9}, format="json")
    assert too_little.status_code == 200
    assert _report(ml_client, run["id"], **report).status_code == 409  # over the approved limit
    approved = dpo_client.post(url, approval, format="json")
    assert approved.status_code == 200, approved.content
    assert approved.json()["overspend_epsilon_limit"] == pytest.approx(epsilon * 1.01)
    assert AuditEvent.objects.filter(action="training_run.overspend_approved", object_id=str(run["id"])).count() == 2

    accepted = _report(ml_client, run["id"], **report)
    assert accepted.status_code == 201, accepted.content
    assert accepted.json()["model_version"]["epsilon"] == pytest.approx(epsilon, rel=1e-12)


def test_an_approved_overspend_is_still_refused_over_the_dataset_cap(db, dpo_client, ml_client):
    snapshot = make_snapshot(n=300, d=3, seed=7)
    run = _start(ml_client, snapshot, target_epsilon=1.0, target_delta=BUDGET_DELTA).json()
    overspent = [[run["noise_multiplier"] * 0.5, run["sample_rate"], run["steps"]]]
    spent_at_budget_delta = _opacus_epsilon(overspent, BUDGET_DELTA, "rdp")
    # A cap the reservation fits under but the overspent history does not.
    _budget(dpo_client, snapshot, cap=(run["planned_epsilon"] + spent_at_budget_delta) / 2)
    dpo_client.post(f"/api/v1/training-runs/{run['id']}/approve-overspend/",
                    {"epsilon_limit": 50, "reason": "approved"}, format="json")
    refused = _report(ml_client, run["id"], run_token=run["run_token"], accountant="rdp", history=overspent,
                      artifact_sha256=SHA)
    assert refused.status_code == 409, refused.content
    assert refused.json()["epsilon_after"] == pytest.approx(spent_at_budget_delta, rel=1e-9)
    assert "epsilon_cap" in refused.json()
    assert not ModelVersion.objects.filter(training_run_id=run["id"]).exists()
    assert PrivacyLedgerEntry.objects.get(training_run_id=run["id"]).state == LedgerState.RESERVED


def test_tokens_and_states_are_checked(db, ml_client):
    snapshot = make_snapshot(n=300, d=3, seed=8)
    run = _start(ml_client, snapshot).json()
    report = {"accountant": "rdp", "history": _planned_history(run), "artifact_sha256": SHA}

    wrong = _report(ml_client, run["id"], run_token="not-the-token", **report)
    assert wrong.status_code == 403
    assert AuditEvent.objects.filter(action="training_run.token_refused", object_id=str(run["id"])).exists()
    missing = _report(ml_client, run["id"], **report)
    assert missing.status_code == 400 and "run_token" in missing.json()
    wrong_fail = ml_client.post(f"/api/v1/training-runs/{run['id']}/fail/", {"run_token": "x", "reason": "r"},
                                format="json")
    assert wrong_fail.status_code == 403
    assert TrainingRun.objects.get(pk=run["id"]).status == RunStatus.RUNNING

    assert _report(ml_client, run["id"], run_token=run["run_token"], **report).status_code == 201
    twice = _report(ml_client, run["id"], run_token=run["run_token"], **report)
    assert twice.status_code == 409
    assert ModelVersion.objects.filter(training_run_id=run["id"]).count() == 1
    late_fail = ml_client.post(f"/api/v1/training-runs/{run['id']}/fail/",
                               {"run_token": run["run_token"], "reason": "r"}, format="json")
    assert late_fail.status_code == 409

    internal = services.training_run_queue(snapshot=snapshot.pk, epochs=1, batch_size=32, target_epsilon=3.0,
                                           model_spec={"hidden_sizes": [8]}, enqueue=False)
    refused = _report(ml_client, internal.pk, run_token=run["run_token"], **report)
    assert refused.status_code == 409 and "trained by the ledger" in refused.json()["detail"]


def test_failing_a_run_releases_its_reservation(db, dpo_client, ml_client):
    snapshot = make_snapshot(n=300, d=3, seed=9)
    _budget(dpo_client, snapshot)
    run = _start(ml_client, snapshot).json()
    assert dpo_client.get(f"/api/v1/datasets/{snapshot.dataset_id}/privacy-budget/").json()["committed_epsilon"] > 0
    failed = ml_client.post(f"/api/v1/training-runs/{run['id']}/fail/",
                            {"run_token": run["run_token"], "reason": "GPU out of memory"}, format="json")
    assert failed.status_code == 200, failed.content
    assert failed.json()["status"] == "failed" and "GPU out of memory" in failed.json()["error"]
    assert PrivacyLedgerEntry.objects.get(training_run_id=run["id"]).state == LedgerState.RELEASED
    assert dpo_client.get(f"/api/v1/datasets/{snapshot.dataset_id}/privacy-budget/").json()["committed_epsilon"] == 0


def test_the_sweep_releases_a_reservation_left_unreported(db, dpo_client, ml_client, settings):
    from mlops.tasks import fail_stuck_training_runs

    settings.EXTERNAL_RUN_REPORT_HOURS = 72
    snapshot = make_snapshot(n=300, d=3, seed=10)
    _budget(dpo_client, snapshot)
    old = _start(ml_client, snapshot).json()
    fresh = _start(ml_client, snapshot).json()
    created = TrainingRun.objects.get(pk=old["id"]).created_at
    assert TrainingRun.objects.get(pk=old["id"]).reservation_expires_at == pytest.approx(
        created + timedelta(hours=72), abs=timedelta(seconds=5))
    # The clock set back: reserved 73 hours ago.
    TrainingRun.objects.filter(pk=old["id"]).update(
        created_at=timezone.now() - timedelta(hours=73), reservation_expires_at=timezone.now() - timedelta(hours=1)
    )
    assert fail_stuck_training_runs.apply().get() == {"failed": 0, "external_expired": 1}
    expired = TrainingRun.objects.get(pk=old["id"])
    assert expired.status == RunStatus.FAILED and "EXTERNAL_RUN_REPORT_HOURS" in expired.error
    assert PrivacyLedgerEntry.objects.get(training_run_id=old["id"]).state == LedgerState.RELEASED
    assert TrainingRun.objects.get(pk=fresh["id"]).status == RunStatus.RUNNING
    assert PrivacyLedgerEntry.objects.get(training_run_id=fresh["id"]).state == LedgerState.RESERVED
    late = _report(ml_client, old["id"], run_token=old["run_token"], accountant="rdp",
                   history=_planned_history(old), artifact_sha256=SHA)
    assert late.status_code == 409
    # Nothing here re-sends an external run to the ledger's workers.
    assert services.training_runs_redispatch() == 0


def test_a_withdrawn_persons_snapshot_is_refused_as_for_internal_runs(db, ml_client):
    snapshot = make_snapshot(n=200, d=3, seed=11)
    subject = SnapshotMembership.objects.filter(snapshot=snapshot).values_list("subject_id", flat=True).first()
    ConsentEvent.objects.create(
        event_id=f"ext-withdraw-{snapshot.pk}", subject_id=subject, purpose=snapshot.purpose, action="withdrawn",
        occurred_at=timezone.now(), notice_version="v1", notice_sha256="0" * 64, method="web_form",
    )
    external = _start(ml_client, snapshot)
    internal = ml_client.post("/api/v1/training-runs/", {"snapshot": snapshot.pk, "epochs": 1, "batch_size": 32,
                                                         "target_epsilon": 3.0}, format="json")
    assert external.status_code == internal.status_code == 409
    # The same check, the same answer.
    assert external.json() == internal.json() and "no longer covered" in external.json()["detail"]
    assert not TrainingRun.objects.exists() and not PrivacyLedgerEntry.objects.exists()


BAD_REPORTS = [
    ({"history": "many steps"}, "history"),
    ({"history": [[1.0, 0.1]]}, "history"),
    ({"history": [[0.0, 0.1, 10]]}, "history"),
    ({"history": [[-1.0, 0.1, 10]]}, "history"),
    ({"history": [[1.0, 0.0, 10]]}, "history"),
    ({"history": [[1.0, 1.5, 10]]}, "history"),
    ({"history": [[1.0, 0.1, 0]]}, "history"),
    ({"history": [[1.0, 0.1, 2.5]]}, "history"),
    ({"history": [[1.0, 0.1, True]]}, "history"),
    ({"artifact_sha256": "abc"}, "artifact_sha256"),
    ({"artifact_sha256": "g" * 64}, "artifact_sha256"),
    ({"accountant": "gdp"}, "accountant"),
    ({"metrics": {"accuracy": "high"}}, "metrics"),
    ({"metrics": {"accuracy": True}}, "metrics"),
    ({"metrics": [0.9]}, "metrics"),
    ({"description": "x" * 2001}, "description"),
]


@pytest.mark.parametrize(("fields", "field"), BAD_REPORTS, ids=[f"{f}-{i}" for i, (_, f) in enumerate(BAD_REPORTS)])
def test_a_bad_report_is_400_naming_the_field_and_writes_nothing(db, ml_client, fields, field):
    snapshot = make_snapshot(n=200, d=3, seed=12)
    run = _start(ml_client, snapshot).json()
    body = {"run_token": run["run_token"], "accountant": "rdp", "history": _planned_history(run),
            "artifact_sha256": SHA, **fields}
    response = _report(ml_client, run["id"], **body)
    assert response.status_code == 400, response.content
    assert field in response.json(), response.json()
    assert TrainingRun.objects.get(pk=run["id"]).status == RunStatus.RUNNING
    assert not ModelVersion.objects.exists()


BAD_STARTS = [
    ({"model_spec": {"hidden_sizes": [8]}}, "model_spec"),
    ({"sisa": {"shards": 2, "slices": 1}}, "sisa"),
    ({"learning_rate": 0.5}, "learning_rate"),
    ({"description": "x" * 2001}, "description"),
    ({"executor": "elsewhere"}, "executor"),
    ({"batch_size": 0}, "batch_size"),
    ({"accountant": "gdp"}, "accountant"),
    ({"remediates": 999999}, "remediates"),
]


@pytest.mark.parametrize(("fields", "field"), BAD_STARTS, ids=[f for _, f in BAD_STARTS])
def test_a_bad_start_is_400_naming_the_field_and_reserves_nothing(db, ml_client, fields, field):
    snapshot = make_snapshot(n=200, d=3, seed=13)
    response = _start(ml_client, snapshot, **fields)
    assert response.status_code == 400, response.content
    assert field in response.json(), response.json()
    assert not TrainingRun.objects.exists() and not PrivacyLedgerEntry.objects.exists()


def test_an_internal_run_refuses_the_external_only_fields(db, ml_client):
    snapshot = make_snapshot(n=200, d=3, seed=14)
    response = ml_client.post("/api/v1/training-runs/", {"snapshot": snapshot.pk, "target_epsilon": 3.0,
                                                         "description": "mine"}, format="json")
    assert response.status_code == 400 and "description" in response.json()


def test_a_report_may_carry_the_file_whose_hash_it_states(db, dpo_client, ml_client):
    snapshot = make_snapshot(n=200, d=3, seed=15)
    run = _start(ml_client, snapshot).json()
    import json

    from django.core.files.uploadedfile import SimpleUploadedFile

    report = {"run_token": run["run_token"], "accountant": "rdp", "history": _planned_history(run),
              "artifact_sha256": hashlib.sha256(b"other").hexdigest()}
    url = f"/api/v1/training-runs/{run['id']}/report/"
    mismatch = ml_client.post(url, {"report": json.dumps(report), "file": SimpleUploadedFile("m.pt", b"weights")},
                              format="multipart")
    assert mismatch.status_code == 400 and "file" in mismatch.json()
    assert TrainingRun.objects.get(pk=run["id"]).status == RunStatus.RUNNING
    report["artifact_sha256"] = SHA
    accepted = ml_client.post(url, {"report": json.dumps(report), "file": SimpleUploadedFile("m.pt", b"weights")},
                              format="multipart")
    assert accepted.status_code == 201, accepted.content
    weights = dpo_client.get(f"/api/v1/models/{accepted.json()['model_version']['id']}/artifact/")
    assert weights.status_code == 200 and b"".join(weights.streaming_content) == b"weights"
    bad_json = ml_client.post(url, {"report": "{not json"}, format="multipart")
    assert bad_json.status_code == 400 and "report" in bad_json.json()


def test_an_audit_policy_keeps_training_inside_the_ledger(db, dpo_client, ml_client):
    snapshot = make_snapshot(n=200, d=3, seed=16)
    assert dpo_client.post("/api/v1/audit-policies/", {"dataset": snapshot.dataset_id, "max_auc": 0.6},
                           format="json").status_code == 201
    refused = _start(ml_client, snapshot)
    assert refused.status_code == 409 and "audit policy" in str(refused.json())


def test_an_erasure_while_the_run_is_out_registers_its_model_tainted(db, ml_client):
    from provenance.models import AmendmentReason, SnapshotAmendment

    snapshot = make_snapshot(n=200, d=3, seed=19)
    run = _start(ml_client, snapshot).json()
    SnapshotAmendment.objects.create(
        snapshot=snapshot, reason=AmendmentReason.ERASURE, erasure_request_id=1, sequence=1, records_removed=1,
        subjects_removed=1, previous_root=snapshot.merkle_root, new_root="1" * 64,
    )
    outcome = services.model_versions_taint_trained_before(
        amendments=[{"snapshot": snapshot.pk, "sequence": 1}], reason="erasure")
    # Not cancelled: the trainer holds the exported data already; its model must be known.
    assert run["id"] not in outcome["training_runs_cancelled"]
    assert TrainingRun.objects.get(pk=run["id"]).status == RunStatus.RUNNING
    response = _report(ml_client, run["id"], run_token=run["run_token"], accountant="rdp",
                       history=_planned_history(run), artifact_sha256=SHA)
    assert response.status_code == 201, response.content
    assert response.json()["model_version"]["status"] == "tainted"
    assert ml_client.get(f"/api/v1/models/{response.json()['model_version']['id']}/status/").json()["servable"] is False


# --- What serving systems read ---------------------------------------------------------


def test_model_status_and_changed_since(db, ml_client, auditor_client):
    snapshot = make_snapshot(n=200, d=3, seed=17)
    run = _start(ml_client, snapshot).json()
    version_id = _report(ml_client, run["id"], run_token=run["run_token"], accountant="rdp",
                         history=_planned_history(run), artifact_sha256=SHA).json()["model_version"]["id"]
    status = auditor_client.get(f"/api/v1/models/{version_id}/status/")
    assert status.status_code == 200
    assert status.json()["servable"] is True and status.json()["status"] == "active"
    assert set(status.json()) == {"id", "name", "version", "status", "servable", "reason", "status_changed_at"}

    moment = timezone.now()
    model_versions_status_set(ids=[version_id], status=ModelStatus.TAINTED, reason="a person withdrew")
    tainted = ml_client.get(f"/api/v1/models/{version_id}/status/").json()
    assert tainted["status"] == "tainted" and tainted["servable"] is False
    assert tainted["status_changed_at"] > status.json()["status_changed_at"]

    changed = ml_client.get("/api/v1/models/", {"changed_since": moment.isoformat()})
    assert changed.status_code == 200
    assert [v["id"] for v in changed.json()["results"]] == [version_id]
    later = ml_client.get("/api/v1/models/", {"changed_since": (timezone.now() + timedelta(seconds=1)).isoformat()})
    assert later.json()["results"] == []
    bad = ml_client.get("/api/v1/models/", {"changed_since": "yesterday"})
    assert bad.status_code == 400 and "changed_since" in bad.json()
    assert ml_client.get("/api/v1/models/999999/status/").status_code == 404


# --- Concurrency (PostgreSQL) ------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_reports_register_one_version_and_settle_once():
    if connection.vendor != "postgresql":
        pytest.skip("row locks are PostgreSQL's")
    snapshot = make_snapshot(n=300, d=3, seed=18)
    starter = make_role_client("ml_engineer", "ext-starter")
    run = _start(starter, snapshot).json()
    body = {"run_token": run["run_token"], "accountant": "rdp", "history": _planned_history(run),
            "artifact_sha256": SHA}
    barrier = threading.Barrier(2)
    codes: list[int] = []

    clients = [make_role_client("ml_engineer", f"ext-reporter-{i}") for i in range(2)]

    def report(client) -> None:
        try:
            barrier.wait()
            codes.append(_report(client, run["id"], **body).status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=report, args=(client,)) for client in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [201, 409]
    assert ModelVersion.objects.filter(training_run_id=run["id"]).count() == 1
    assert AuditEvent.objects.filter(action="training_run.reported", object_id=str(run["id"])).count() == 1
    assert PrivacyLedgerEntry.objects.get(training_run_id=run["id"]).state == LedgerState.SPENT
