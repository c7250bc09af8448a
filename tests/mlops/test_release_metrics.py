"""Release accounting (issue 15, item 7): a run with ``release_training_metrics: false``
releases no figure computed on its training data (those are outside ε) — per-epoch loss and
train accuracy are null in epoch metrics, progress and the version's metrics — and trains
bit-identical weights."""

from __future__ import annotations

import numpy
import pytest
import torch

from mlops import services
from mlops.engine.dp_train import train
from mlops.engine.sisa import train_shard
from mlops.engine.spec import TrainConfig
from mlops.models import ModelVersion, RunStatus, TrainingRun
from tests.mlops.engine_data import linear_task
from tests.mlops.factories import make_snapshot


def _config(**overrides) -> TrainConfig:
    values = {"hidden_sizes": [16], "epochs": 3, "batch_size": 64, "learning_rate": 0.5, "noise_multiplier": 1.1,
              "target_delta": 1e-5, "dropout": 0.2, "seed": 5}
    values.update(overrides)
    return TrainConfig(**values)


@pytest.mark.parametrize("private", [True, False])
def test_training_without_training_metrics_gives_bit_identical_weights_and_no_training_figures(private):
    X, y = linear_task(n=900)
    config = _config() if private else _config(noise_multiplier=None, private=False)
    kwargs = {"X_train": X[:700], "y_train": y[:700], "X_val": X[700:], "y_val": y[700:], "n_classes": 2,
              "config": config}
    seen: list = []
    on = train(**kwargs)
    off = train(**kwargs, train_metrics=False, on_epoch=seen.append)
    assert on.state_dict.keys() == off.state_dict.keys()
    assert all(torch.equal(on.state_dict[k], off.state_dict[k]) for k in on.state_dict)
    assert on.accountant_history == off.accountant_history and on.epsilon == off.epsilon
    assert [e.loss for e in off.epochs] == [None] * 3 and [e.train_accuracy for e in off.epochs] == [None] * 3
    assert seen == off.epochs  # what the progress callback is given
    assert all(e.loss > 0 and 0 < e.train_accuracy <= 1 for e in on.epochs)
    # Validation figures (held-out people) are released either way, and are the same.
    assert [e.val_accuracy for e in off.epochs] == [e.val_accuracy for e in on.epochs]
    assert all(e.val_accuracy is not None for e in off.epochs)


def test_a_sisa_shard_without_training_metrics_trains_the_same_checkpoints():
    X, y = linear_task(n=300, seed=2)
    slice_of_row = numpy.arange(300) % 2
    kwargs = {"X": X, "y": y, "slice_of_row": slice_of_row, "slices": 2, "n_classes": 2,
              "config": _config(epochs=2, batch_size=32), "shard": 0}
    on = train_shard(**kwargs)
    off = train_shard(**kwargs, train_metrics=False)
    for a, b in zip(on.checkpoints, off.checkpoints, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(e.loss is None and e.train_accuracy is None for e in off.result.epochs)
    assert all(e.loss is not None and e.train_accuracy is not None for e in on.result.epochs)


@pytest.mark.django_db
@pytest.mark.parametrize("sisa", [None, {"shards": 2, "slices": 2}])
def test_a_run_without_training_metrics_releases_validation_figures_only(ml_client, auditor_client, sisa):
    snapshot = make_snapshot(n=240, d=5, seed=4)
    body = {"snapshot": snapshot.pk, "epochs": 2, "batch_size": 32, "noise_multiplier": 1.0, "seed": 3,
            "model_spec": {"hidden_sizes": [8]}, "release_training_metrics": False}
    if sisa:
        body["sisa"] = sisa
    response = ml_client.post("/api/v1/training-runs/", body, format="json")
    assert response.status_code == 202, response.content
    assert response.json()["release_training_metrics"] is False
    run = services.training_run_execute(run_id=response.json()["id"])  # the task is sent on commit
    assert run.status == RunStatus.SUCCEEDED, run.error

    detail = auditor_client.get(f"/api/v1/training-runs/{run.pk}/").json()
    assert detail["release_training_metrics"] is False
    rows = detail["epoch_metrics"]
    assert len(rows) == (2 * 2 if sisa else 2)  # SISA: every shard's epochs
    assert all(r["loss"] is None and r["train_accuracy"] is None for r in rows)
    assert all(r["epsilon"] is not None for r in rows)
    if not sisa:
        assert all(r["val_accuracy"] is not None for r in rows)

    version = ModelVersion.objects.get(training_run=run)
    model = auditor_client.get(f"/api/v1/models/{version.pk}/").json()
    assert model["metrics"]["train_accuracy"] is None and model["metrics"].get("loss") is None
    assert 0.0 <= model["metrics"]["val_accuracy"] <= 1.0
    assert model["reproducibility"]["release_training_metrics"] is False


@pytest.mark.django_db
def test_training_metrics_are_released_by_default_and_the_weights_do_not_depend_on_the_choice():
    snapshot = make_snapshot(n=200, d=4, seed=6)
    common = {"snapshot": snapshot, "epochs": 2, "batch_size": 32, "noise_multiplier": 1.0, "seed": 9,
              "model_spec": {"hidden_sizes": [8]}, "enqueue": False}
    released = services.training_run_execute(run_id=services.training_run_queue(name="released", **common).pk)
    withheld = services.training_run_execute(
        run_id=services.training_run_queue(name="withheld", release_training_metrics=False, **common).pk
    )
    assert released.release_training_metrics is True and withheld.release_training_metrics is False
    assert all(r["loss"] is not None and r["train_accuracy"] is not None for r in released.epoch_metrics)
    assert [r["val_accuracy"] for r in released.epoch_metrics] == [r["val_accuracy"] for r in withheld.epoch_metrics]
    from mlops import artifacts

    a, b = (ModelVersion.objects.get(training_run=r) for r in (released, withheld))
    weights_a = artifacts.load_weights(relative=a.artifact_path, expected_sha256=a.artifact_sha256)
    weights_b = artifacts.load_weights(relative=b.artifact_path, expected_sha256=b.artifact_sha256)
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert a.metrics["train_accuracy"] is not None and b.metrics["train_accuracy"] is None

    # The model's training accuracy is its final weights' on the training rows, read back as
    # an outsider would from the snapshot and the recorded split (not the epochs' running figure).
    from mlops import data
    from mlops.engine.dp_train import predict_proba
    from mlops.services.config import _schema_for

    run = a.training_run
    tensors = data.snapshot_tensors(snapshot_id=run.snapshot_id, schema=_schema_for(run, snapshot.dataset.schema),
                                    classes=run.encoding["classes"])
    split = data.subject_split(subject_ids=tensors.subject_ids, seed=run.seed, validation_split=run.validation_split,
                               holdout_fraction=run.holdout_fraction)
    train_rows = (tensors.y >= 0) & (split == data.SPLIT_TRAIN)
    model = services.model_version_load(model_version=a)
    model = model[0] if isinstance(model, list) else model
    proba = predict_proba(model=model, X=torch.from_numpy(tensors.X[train_rows]))
    assert a.metrics["train_accuracy"] == float((proba.argmax(dim=1).numpy() == tensors.y[train_rows]).mean())


@pytest.mark.django_db
def test_release_training_metrics_must_be_a_boolean(ml_client):
    snapshot = make_snapshot(n=60, d=3)
    response = ml_client.post(
        "/api/v1/training-runs/",
        {"snapshot": snapshot.pk, "noise_multiplier": 1.0, "release_training_metrics": "sometimes"}, format="json",
    )
    assert response.status_code == 400 and "release_training_metrics" in response.json()
    from governance.services import ServiceError

    with pytest.raises(ServiceError) as refused:
        services.training_run_queue(snapshot=snapshot, noise_multiplier=1.0, release_training_metrics=1, enqueue=False)
    assert refused.value.field == "release_training_metrics"
    assert not TrainingRun.objects.exists()
