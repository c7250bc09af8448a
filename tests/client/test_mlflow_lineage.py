"""MLflow lineage through the client, against a real MLflow tracking store on the local disk.

The MLflow run that trains on a snapshot shows the snapshot as its dataset input (digest = the
snapshot's Merkle root, source = the ledger's export URL); the MLflow run and the registered
model carry the ledger's run and version ids; the ledger keeps the MLflow run id.
"""

from __future__ import annotations

import json

import mlflow
import pytest
import torch
from privacy_ledger_client import LedgerClient
from privacy_ledger_client.mlflow import (
    TAG_MERKLE_ROOT,
    TAG_RUN,
    TAG_SNAPSHOT,
    TAG_VERSION,
    log_snapshot_input,
    register_model,
)
from torch import nn

from mlops.models import TrainingRun
from tests.client.helpers import api_key
from tests.mlops.factories import make_snapshot

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:Full backward hook:UserWarning")]


@pytest.fixture
def tracking(tmp_path, monkeypatch) -> str:
    # MLflow 3 keeps the file store for existing users behind this switch; a SQLite store
    # needs SQLAlchemy, which mlflow-skinny leaves out.
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    return uri


def test_an_mlflow_run_shows_the_snapshot_as_input_and_the_ledger_ids(live_server, celery_worker, tracking, request):
    snapshot = make_snapshot(n=32, d=4)
    ledger = LedgerClient(live_server.url, api_key("ml_engineer"))
    request.addfinalizer(ledger.close)
    model = nn.Sequential(nn.Linear(4, 2))

    with mlflow.start_run() as active:
        log_snapshot_input(ledger, snapshot.pk)
        with ledger.private_training(
            snapshot=snapshot.pk, name="mlflow-linked", target_epsilon=4.0, epochs=1, batch_size=8, module=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        ) as training:
            for x, y in training.data_loader:
                training.optimizer.zero_grad()
                nn.functional.cross_entropy(training.model(x), y).backward()
                training.optimizer.step()
        registered = register_model(training.result, name="mlflow-linked", source=f"runs:/{active.info.run_id}/model")

    store = mlflow.MlflowClient()
    run = store.get_run(active.info.run_id)
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.digest == snapshot.merkle_root
    assert json.loads(dataset_input.dataset.source)["url"] == f"{live_server.url}/api/v1/snapshots/{snapshot.pk}/export/"
    assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "training"

    ledger_run, version_id = training.run.id, training.result.model_version_id
    assert run.data.tags[TAG_SNAPSHOT] == str(snapshot.pk)
    assert run.data.tags[TAG_MERKLE_ROOT] == snapshot.merkle_root
    assert run.data.tags[TAG_RUN] == str(ledger_run) and run.data.tags[TAG_VERSION] == str(version_id)
    model_tags = store.get_registered_model("mlflow-linked").tags
    assert model_tags[TAG_RUN] == str(ledger_run) and model_tags[TAG_VERSION] == str(version_id)
    assert store.get_model_version("mlflow-linked", registered.version).tags[TAG_VERSION] == str(version_id)

    # The ledger's side of the link: the report carried the active MLflow run's id.
    assert TrainingRun.objects.get(pk=ledger_run).mlflow_run_id == active.info.run_id
