"""The per-dataset privacy-budget ledger: composition, refusal over the cap, DPO-only cap."""

from __future__ import annotations

import pytest

from governance.models import AuditEvent
from mlops import selectors, services
from mlops.engine.accounting import epsilon_of_history
from mlops.models import LedgerState, PrivacyBudget, PrivacyLedgerEntry, RunStatus, TrainingRun
from tests.mlops.factories import make_snapshot
from tests.mlops.helpers import wait_for_run

RUN = {"epochs": 1, "batch_size": 32, "model_spec": {"hidden_sizes": [8]}}


@pytest.mark.django_db(transaction=True)
def test_ledger_equals_the_accountant_for_one_run_and_composes_several(celery_worker, dpo_client, ml_client):
    snapshot = make_snapshot(n=300, d=5, seed=4)
    dataset_id = snapshot.dataset_id
    first = wait_for_run(services.training_run_queue(snapshot=snapshot, noise_multiplier=1.2, **RUN).pk)
    assert first.status == RunStatus.SUCCEEDED, first.error
    delta = first.delta

    # One run: the ledger's ε is Opacus's own accountant's for that run.
    single = selectors.dataset_spent_epsilon(dataset_id=dataset_id, delta=delta)
    assert single == pytest.approx(epsilon_of_history(history=first.accountant_history, delta=delta), rel=1e-9)
    assert single == pytest.approx(first.epsilon, rel=1e-9)

    second = wait_for_run(
        services.training_run_queue(snapshot=snapshot, noise_multiplier=2.0, seed=1, epochs=2, batch_size=16).pk
    )
    assert second.status == RunStatus.SUCCEEDED, second.error
    composed = selectors.dataset_spent_epsilon(dataset_id=dataset_id, delta=delta)
    opacus = epsilon_of_history(history=first.accountant_history + second.accountant_history, delta=delta)
    assert composed == pytest.approx(opacus, rel=1e-9)
    assert max(first.epsilon, second.epsilon) < composed < first.epsilon + second.epsilon

    # A cap just above what is spent refuses the next run with 409 and the numbers.
    cap = composed + 0.05
    assert dpo_client.put(
        f"/api/v1/datasets/{dataset_id}/privacy-budget/", {"epsilon_cap": cap, "delta": delta}, format="json"
    ).status_code == 200
    runs_before = TrainingRun.objects.count()
    response = ml_client.post(
        "/api/v1/training-runs/", {"snapshot": snapshot.pk, "noise_multiplier": 1.2, **RUN}, format="json"
    )
    assert response.status_code == 409, response.content
    body = response.json()
    assert body["epsilon_cap"] == pytest.approx(cap)
    assert body["spent_epsilon"] == pytest.approx(composed, rel=1e-9)
    assert body["epsilon_after"] > cap and body["planned_epsilon_at_budget_delta"] > 0
    assert TrainingRun.objects.count() == runs_before

    status = dpo_client.get(f"/api/v1/datasets/{dataset_id}/privacy-budget/").json()
    assert status["spent_epsilon"] == pytest.approx(composed, rel=1e-9)
    assert status["epsilon_cap"] == pytest.approx(cap)
    assert [r["training_run"] for r in status["runs"]] == [first.pk, second.pk]
    assert all(r["state"] == "spent" for r in status["runs"])


@pytest.mark.django_db
def test_queued_runs_reserve_budget_so_the_next_one_is_refused(dpo_client, ml_client):
    snapshot = make_snapshot(n=300, d=5, seed=5)
    probe = services.training_run_queue(snapshot=snapshot, noise_multiplier=1.5, **RUN)
    one_run = probe.planned_epsilon
    segment = [probe.noise_multiplier, probe.sample_rate, probe.steps]
    two_runs = epsilon_of_history(history=[segment, segment], delta=probe.target_delta)
    services.training_run_cancel(run=probe, actor="test")
    response = dpo_client.post(
        f"/api/v1/datasets/{snapshot.dataset_id}/privacy-budget/",
        {"epsilon_cap": (one_run + two_runs) / 2, "delta": probe.target_delta}, format="json",
    )
    assert response.status_code == 200, response.content

    queued = services.training_run_queue(snapshot=snapshot, noise_multiplier=1.5, **RUN)
    assert queued.ledger_entry.state == LedgerState.RESERVED
    response = ml_client.post(
        "/api/v1/training-runs/", {"snapshot": snapshot.pk, "noise_multiplier": 1.5, **RUN}, format="json"
    )
    assert response.status_code == 409
    assert response.json()["committed_epsilon"] == pytest.approx(one_run, rel=1e-6)
    assert TrainingRun.objects.filter(snapshot=snapshot).count() == 2  # the probe and the queued one


@pytest.mark.django_db
def test_non_private_training_is_refused_under_a_budget(dpo_client, ml_client):
    snapshot = make_snapshot(n=200, d=5)
    dpo_client.put(f"/api/v1/datasets/{snapshot.dataset_id}/privacy-budget/", {"epsilon_cap": 50, "delta": 1e-5},
                   format="json")
    response = ml_client.post(
        "/api/v1/training-runs/", {"snapshot": snapshot.pk, "allow_non_private": True, **RUN}, format="json"
    )
    assert response.status_code == 409
    assert "non-private" in response.json()["detail"]
    assert not TrainingRun.objects.exists()


@pytest.mark.django_db
def test_only_a_dpo_sets_the_cap_and_every_change_is_audited(dpo_client, ml_client, auditor_client):
    snapshot = make_snapshot(n=50, d=3)
    url = f"/api/v1/datasets/{snapshot.dataset_id}/privacy-budget/"
    assert ml_client.put(url, {"epsilon_cap": 5, "delta": 1e-5}, format="json").status_code == 403
    assert dpo_client.put(url, {"epsilon_cap": 5, "delta": 1e-5}, format="json").status_code == 200
    assert dpo_client.put(url, {"epsilon_cap": 3, "delta": 1e-6}, format="json").status_code == 200
    bad = dpo_client.put(url, {"epsilon_cap": -1, "delta": 1e-6}, format="json")
    assert bad.status_code == 400 and "epsilon_cap" in bad.json()
    budget = PrivacyBudget.objects.get(dataset_id=snapshot.dataset_id)
    assert (budget.epsilon_cap, budget.delta) == (3, 1e-6)
    events = list(AuditEvent.objects.filter(action="privacy_budget.set").order_by("position").values_list("details", flat=True))
    assert events[-1]["previous"] == {"epsilon_cap": 5.0, "delta": 1e-5}
    assert auditor_client.get(url).json()["epsilon_cap"] == 3


BAD_INPUT = [
    ({"target_epsilon": 0}, "target_epsilon"),
    ({"target_epsilon": -1}, "target_epsilon"),
    ({"target_epsilon": 1, "target_delta": 0.5}, "target_delta"),
    ({"target_epsilon": 1, "max_grad_norm": 0}, "max_grad_norm"),
    ({"target_epsilon": 1, "model_spec": {"hidden_sizes": [100000]}}, "model_spec"),
    ({"target_epsilon": 1, "model_spec": {"activation": "sigmoid"}}, "model_spec"),
    ({"target_epsilon": 1, "batch_size": 100000}, "batch_size"),
    ({"target_epsilon": 1, "sisa": {"shards": 0, "slices": 2}}, "sisa"),
    ({"target_epsilon": 1, "task": "multiclass", "model_spec": {"hidden_sizes": [8]}, "accountant": "moments"}, "accountant"),
    ({}, "target_epsilon"),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("fields", "field"), BAD_INPUT, ids=[f for _, f in BAD_INPUT])
def test_bad_input_is_400_naming_the_field_and_queues_nothing(ml_client, fields, field):
    snapshot = make_snapshot(n=100, d=3)
    response = ml_client.post("/api/v1/training-runs/", {"snapshot": snapshot.pk, "epochs": 1, "batch_size": 16, **fields}, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json(), response.json()
    assert not TrainingRun.objects.exists() and not PrivacyLedgerEntry.objects.exists()


@pytest.mark.django_db
def test_unknown_empty_and_single_class_snapshots_are_refused(ml_client):
    from provenance.models import Snapshot

    unknown = ml_client.post("/api/v1/training-runs/", {"snapshot": 999999, "target_epsilon": 1, "batch_size": 8}, format="json")
    assert unknown.status_code == 400 and "snapshot" in unknown.json()

    full = make_snapshot(n=20, d=3)
    empty = Snapshot.objects.create(
        dataset=full.dataset, purpose=full.purpose, taken_for=full.taken_for, lawful_basis="consent",
        included_count=0, included_subjects=0, merkle_root="0" * 64,
    )
    response = ml_client.post("/api/v1/training-runs/", {"snapshot": empty.pk, "target_epsilon": 1, "batch_size": 8}, format="json")
    assert response.status_code == 400 and "no records" in response.json()["snapshot"][0]

    one_class = make_snapshot(n=50, d=3, single_class=True)
    response = ml_client.post("/api/v1/training-runs/", {"snapshot": one_class.pk, "target_epsilon": 1, "batch_size": 8}, format="json")
    assert response.status_code == 400 and "class" in response.json()["snapshot"][0]
    assert not TrainingRun.objects.exists()
