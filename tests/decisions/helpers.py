"""A served model for the decision tests: a small DP model trained on the factory's snapshot,
with published bounds on one feature (so a counterfactual can be searched) and, optionally,
an Art. 9 category feature."""

from __future__ import annotations

from mlops import services
from mlops.models import ModelVersion, RunStatus
from provenance.models import Dataset
from tests.mlops.factories import make_snapshot

BOUNDS = {"min": -3.0, "max": 3.0}


def trained_version(*, n: int = 160, d: int = 4, seed: int = 3, health_condition: bool = False,
                    name: str | None = None, sisa: dict | None = None) -> ModelVersion:
    snapshot = make_snapshot(n=n, d=d, seed=seed, health_condition=health_condition)
    dataset = snapshot.dataset
    schema = dict(dataset.schema)
    schema["features"] = [dict(f, **BOUNDS) if f["name"] == "x0" else f for f in schema["features"]]
    Dataset.objects.filter(pk=dataset.pk).update(schema=schema)
    snapshot.dataset.refresh_from_db()
    options = {"sisa": sisa} if sisa else {}
    run = services.training_run_queue(
        snapshot=snapshot, name=name or f"decider-{snapshot.pk}", epochs=2, batch_size=32, noise_multiplier=1.0,
        model_spec={"hidden_sizes": [8]}, seed=seed, enqueue=False, **options,
    )
    run = services.training_run_execute(run_id=run.pk)
    assert run.status == RunStatus.SUCCEEDED, run.error
    return ModelVersion.objects.select_related("training_run__snapshot__dataset").get(training_run=run)


def row(i: int = 0, *, d: int = 4, condition: str | None = None) -> dict:
    """A row of distinctive values (their text appears nowhere else), in the schema's types."""
    values = {f"x{j}": round(0.1234567 + 0.0111 * i + 0.3713 * j - 0.9, 7) for j in range(d)}
    if condition is not None:
        values["condition"] = condition
    return values
