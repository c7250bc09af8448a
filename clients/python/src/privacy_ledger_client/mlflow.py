"""MLflow lineage (the ``mlflow`` extra): the snapshot as the run's dataset input, ledger ids as tags.

MLflow records which data a run used but knows nothing of consent or erasure; the ledger knows
both. Linking them: the MLflow run's dataset input is the snapshot (digest = its current
Merkle root, source = the ledger's export URL), the MLflow run and registered model carry the
ledger's run and version ids, and the ledger stores the MLflow run id with the version.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import mlflow
from mlflow.data.http_dataset_source import HTTPDatasetSource
from mlflow.data.meta_dataset import MetaDataset

if TYPE_CHECKING:  # pragma: no cover
    from privacy_ledger_client.client import LedgerClient, ReportResult

TAG_SNAPSHOT = "privacy_ledger.snapshot_id"
TAG_MERKLE_ROOT = "privacy_ledger.merkle_root"
TAG_AMENDMENT = "privacy_ledger.amendment"
TAG_RUN = "privacy_ledger.training_run_id"
TAG_VERSION = "privacy_ledger.model_version_id"
TAG_LEDGER = "privacy_ledger.url"


def log_snapshot_input(
    client: LedgerClient,
    snapshot_id: int,
    *,
    context: str = "training",
    name: str | None = None,
    merkle_root: str | None = None,
    run_id: str | None = None,
) -> MetaDataset:
    """Log the snapshot as a dataset input of the active MLflow run (or ``run_id``).

    ``merkle_root``: the root the training used (a :class:`SnapshotExport`'s); by default the
    snapshot's current root as the ledger states it now. Also tags the run with the snapshot id
    and root. Returns the logged dataset.
    """
    snapshot = client.snapshot(snapshot_id)
    root = merkle_root or snapshot.get("current_merkle_root") or snapshot["merkle_root"]
    amendments = snapshot.get("amendments") or []
    source = HTTPDatasetSource(client.url(f"snapshots/{int(snapshot_id)}/export/"))
    dataset = MetaDataset(source=source, name=name or f"ledger-snapshot-{int(snapshot_id)}", digest=root)
    tags = {
        TAG_SNAPSHOT: str(int(snapshot_id)), TAG_MERKLE_ROOT: root, TAG_AMENDMENT: str(len(amendments)),
        TAG_LEDGER: client.api_root,
    }
    mlflow_client = mlflow.MlflowClient()
    target = run_id or _active_run_id()
    # log_inputs on the client takes DatasetInput entities; the fluent log_input needs an active run.
    if run_id is None:
        mlflow.log_input(dataset, context=context, tags={TAG_SNAPSHOT: tags[TAG_SNAPSHOT]})
    else:
        from mlflow.entities import DatasetInput, InputTag

        mlflow_client.log_inputs(run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), tags=[
            InputTag("mlflow.data.context", context), InputTag(TAG_SNAPSHOT, tags[TAG_SNAPSHOT])])])
    for key, value in tags.items():
        mlflow_client.set_tag(target, key, value)
    return dataset


def tag_ledger_ids(result: ReportResult, *, run_id: str | None = None, registered_model: str | None = None,
                   model_version: str | int | None = None) -> None:
    """After the report: tag the MLflow run (active or ``run_id``) with the ledger's run and
    version ids, and, when given, the registered model and its version too."""
    mlflow_client = mlflow.MlflowClient()
    target = run_id or _active_run_id()
    ledger_tags = {TAG_RUN: str(result.run.get("id", "")), TAG_VERSION: str(result.model_version_id)}
    for key, value in ledger_tags.items():
        mlflow_client.set_tag(target, key, value)
    if registered_model is not None:
        for key, value in ledger_tags.items():
            mlflow_client.set_registered_model_tag(registered_model, key, value)
        if model_version is not None:
            for key, value in ledger_tags.items():
                mlflow_client.set_model_version_tag(registered_model, str(model_version), key, value)


def register_model(result: ReportResult, *, name: str, source: str, run_id: str | None = None) -> Any:
    """Register ``source`` (e.g. ``runs:/<id>/model`` or an artifact URI) as a version of the
    MLflow registered model ``name``, both tagged with the ledger's ids; returns MLflow's version."""
    mlflow_client = mlflow.MlflowClient()
    target = run_id or _active_run_id()
    try:
        mlflow_client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        mlflow_client.create_registered_model(name)
    version = mlflow_client.create_model_version(name, source=source, run_id=target)
    tag_ledger_ids(result, run_id=target, registered_model=name, model_version=version.version)
    return mlflow_client.get_model_version(name, str(version.version))


def _active_run_id() -> str:
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("no active MLflow run: call inside `with mlflow.start_run():` or pass run_id")
    return run.info.run_id
