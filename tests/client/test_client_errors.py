"""How the client surfaces the ledger's refusals, and what private_training does on failure.

A live server on PostgreSQL answers a client in this process: a refusal is a LedgerError
carrying the server's own message and field, and training that raises, or a loader that
does not match the ledger's plan, fails the run in the ledger so its budget is released.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import datetime

import pytest
import torch
from privacy_ledger_client import LedgerClient, LedgerError, LedgerIntegrityError
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mlops.models import LedgerState, PrivacyLedgerEntry, TrainingRun
from mlops.services.status import model_versions_status_set
from tests.client.helpers import api_key
from tests.mlops.factories import make_snapshot

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:Full backward hook:UserWarning")]


@pytest.fixture
def ledger(live_server, celery_worker) -> Iterator[LedgerClient]:
    # Closed after the test: a kept-alive connection holds a live-server thread and its
    # database session past the test database's teardown.
    with LedgerClient(live_server.url, api_key("ml_engineer")) as client:
        yield client


@pytest.fixture
def dpo_ledger(live_server) -> Iterator[LedgerClient]:
    with LedgerClient(live_server.url, api_key("dpo")) as client:
        yield client


def _committed(client: LedgerClient, dataset_id: int) -> float:
    return client.request("GET", f"datasets/{dataset_id}/privacy-budget/")["committed_epsilon"]


def test_a_run_over_the_budget_is_a_ledger_error_with_the_servers_reason(ledger, dpo_ledger):
    snapshot = make_snapshot(n=64, d=4)
    dpo_ledger.request("PUT", f"datasets/{snapshot.dataset_id}/privacy-budget/", json={"epsilon_cap": 0.5, "delta": 1e-5})

    with pytest.raises(LedgerError) as refused:
        ledger.start_external_run(snapshot=snapshot.pk, name="too-much", epochs=2, batch_size=16, target_epsilon=3.0)

    assert refused.value.status == 409
    # The server's message, word for word, not a generic "HTTP 409".
    assert refused.value.detail == refused.value.body["detail"]
    assert "budget" in refused.value.detail.lower()
    assert not TrainingRun.objects.filter(snapshot=snapshot).exists()


def test_a_bad_value_names_its_field(ledger):
    snapshot = make_snapshot(n=32, d=4)
    with pytest.raises(LedgerError) as refused:
        ledger.start_external_run(snapshot=snapshot.pk, name="bad", epochs=1, batch_size=0, target_epsilon=3.0)
    assert refused.value.status == 400 and refused.value.field == "batch_size"


def test_an_exception_inside_private_training_fails_the_run_and_releases_its_budget(ledger):
    snapshot = make_snapshot(n=64, d=4)
    model = nn.Sequential(nn.Linear(4, 2))
    with pytest.raises(RuntimeError, match="the GPU fell off"), ledger.private_training(
        snapshot=snapshot.pk, name="crashes", target_epsilon=3.0, epochs=1, batch_size=16, module=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
    ) as training:
        for x, y in training.data_loader:
            training.optimizer.zero_grad()
            nn.functional.cross_entropy(training.model(x), y).backward()
            training.optimizer.step()
            raise RuntimeError("the GPU fell off")

    run = TrainingRun.objects.get(pk=training.run.id)
    assert run.status == "failed"
    assert "the GPU fell off" in run.error
    assert PrivacyLedgerEntry.objects.get(training_run=run).state == LedgerState.RELEASED
    assert _committed(ledger, snapshot.dataset_id) == 0
    assert not run.model_versions.exists()


def test_a_loader_that_is_not_the_planned_one_is_refused_before_training(ledger):
    """Another batch count means another sample rate than the ledger reserved for: the run is
    failed before a single step, rather than reporting a history that does not match."""
    snapshot = make_snapshot(n=64, d=4)
    model = nn.Sequential(nn.Linear(4, 2))
    # 40 rows, not the snapshot's 64: Opacus would sample at 1/3 instead of 1/4.
    loader = DataLoader(TensorDataset(torch.zeros(40, 4), torch.zeros(40, dtype=torch.long)), batch_size=16)
    with pytest.raises(LedgerIntegrityError) as refused, ledger.private_training(
        snapshot=snapshot.pk, name="wrong-loader", target_epsilon=3.0, epochs=1, module=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1), data_loader=loader,
    ):
        pytest.fail("the block must not run")
    assert refused.value.field == "sample_rate"
    run = TrainingRun.objects.get(snapshot=snapshot)
    assert run.status == "failed" and "sample rate" in run.error
    assert _committed(ledger, snapshot.dataset_id) == 0


def _train(training, epochs: int) -> None:
    for _ in range(epochs):
        for x, y in training.data_loader:
            training.optimizer.zero_grad()
            nn.functional.cross_entropy(training.model(x), y).backward()
            training.optimizer.step()


def test_training_longer_than_planned_is_refused_until_a_dpo_approves_then_reported_again(ledger, dpo_ledger, tmp_path):
    """Two epochs trained on a one-epoch reservation: the report is refused (409) and the run stays
    open; after a DPO approves the overspend, the same training reports again and is registered,
    with the weights uploaded."""
    snapshot = make_snapshot(n=64, d=4)
    model = nn.Sequential(nn.Linear(4, 2))
    with pytest.raises(LedgerError) as refused, ledger.private_training(
        snapshot=snapshot.pk, name="overspends", target_epsilon=2.0, epochs=1, batch_size=16, module=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1), artifact_path=tmp_path / "w.pt", upload_artifact=True,
    ) as training:
        _train(training, epochs=2)
    assert refused.value.status == 409
    assert TrainingRun.objects.get(pk=training.run.id).status == "running"
    spent = training.get_epsilon()
    assert spent > training.run.planned_epsilon

    dpo_ledger.approve_overspend(training.run.id, epsilon_limit=spent * 1.01, reason="second epoch agreed")
    result = training.report()
    assert result.epsilon == pytest.approx(spent, rel=1e-9)
    version = TrainingRun.objects.get(pk=training.run.id).model_versions.get()
    assert version.pk == result.model_version_id and version.epsilon == pytest.approx(spent, rel=1e-9)


def test_a_wrong_run_token_is_refused_and_the_run_stays_open(ledger):
    snapshot = make_snapshot(n=64, d=4)
    run = ledger.start_external_run(snapshot=snapshot.pk, name="tok", epochs=1, batch_size=16, target_epsilon=3.0)
    with pytest.raises(LedgerError) as refused:
        ledger.report_run(run.id, run_token="not-" + run.run_token, history=[[run.noise_multiplier, run.sample_rate,
                          run.steps]], artifact_sha256="0" * 64)
    assert refused.value.status == 403
    assert TrainingRun.objects.get(pk=run.id).status == "running"


def test_a_report_of_the_plan_registers_a_servable_version_listed_as_changed(ledger):
    snapshot = make_snapshot(n=64, d=4)
    before = datetime.now().astimezone()
    run = ledger.start_external_run(snapshot=snapshot.pk, name="plan", epochs=2, batch_size=16, target_epsilon=2.0)
    assert math.isclose(run.sample_rate, 0.25) and run.steps == 8
    result = ledger.report_run(
        run.id, run_token=run.run_token, history=[[run.noise_multiplier, run.sample_rate, run.steps]],
        artifact_sha256="a" * 64, metrics={"accuracy": 0.5},
    )
    assert result.epsilon == pytest.approx(run.planned_epsilon, rel=1e-9)
    status = ledger.model_status(result.model_version_id)
    assert status.servable is True and status.id == result.model_version_id
    assert result.model_version_id in {v["id"] for v in ledger.models_changed_since(before)}
    # A second report of a finished run is refused by the ledger, surfaced as such.
    with pytest.raises(LedgerError) as again:
        ledger.report_run(run.id, run_token=run.run_token, history=[[run.noise_multiplier, run.sample_rate, run.steps]],
                          artifact_sha256="a" * 64)
    assert again.value.status == 409


def test_a_serving_system_learns_that_a_version_is_tainted(ledger):
    """What an erasure does to a version (tests/rights covers the erasure itself): from then on
    the status check refuses it and the poll for changes lists it."""
    snapshot = make_snapshot(n=64, d=4)
    run = ledger.start_external_run(snapshot=snapshot.pk, name="served", epochs=1, batch_size=16, target_epsilon=2.0)
    result = ledger.report_run(run.id, run_token=run.run_token, artifact_sha256="b" * 64,
                               history=[[run.noise_multiplier, run.sample_rate, run.steps]])
    assert ledger.model_status(result.model_version_id).servable is True
    before = datetime.now().astimezone()

    model_versions_status_set(ids=[result.model_version_id], status="tainted", reason="erasure of a member")

    status = ledger.model_status(result.model_version_id)
    assert (status.servable, status.status) == (False, "tainted") and status.reason
    changed = {v["id"]: v["status"] for v in ledger.models_changed_since(before)}
    assert changed == {result.model_version_id: "tainted"}


def test_a_naive_moment_is_refused_by_the_client():
    client = LedgerClient("http://127.0.0.1:9", "unused")
    with pytest.raises(ValueError, match="timezone-aware"):
        client.models_changed_since(datetime(2026, 1, 1))
