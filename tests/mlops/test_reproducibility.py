"""Reproducible by an outsider (issue 15, item 6): the schema accepts the scaling bounds the
docs describe and the audit flags; a model version carries its feature order, encoding,
class order, person-split rule and seed (API and safetensors metadata), and the DPO and the
auditor, not the ML engineer, get the records its membership-inference audit attacked."""

from __future__ import annotations

import json
import math
from datetime import timedelta

import numpy
import pytest
import torch
from django.utils import timezone

from mlops import artifacts, data, services
from mlops.engine.mia import loss_threshold_attack
from mlops.models import MembershipInferenceAudit, ModelVersion, RunStatus
from mlops.services.audits import _per_example_losses, audit_record_ids, model_version_load
from provenance import services as provenance_services
from provenance.models import DataRecord, Dataset, SnapshotMembership
from tests.provenance.helpers import activity, consent

pytestmark = pytest.mark.django_db

CODE = "ml.training.clinical_risk"
SCHEMA = {
    "features": [
        {"name": "age", "type": "int", "min": 18, "max": 90},
        {"name": "bmi", "type": "float", "min": 15.0, "max": 45.0, "sensitive": True},
        {"name": "smoker", "type": "bool"},
        {"name": "diagnosis", "type": "category", "categories": ["none", "diabetes", "asthma"],
         "special_category": True},
        {"name": "visits", "type": "float"},
    ],
    "label": {"name": "outcome", "type": "bool"},
}


def _dataset_body(act, schema) -> dict:
    return {"name": f"repro {act.pk}", "owner": "ml-team", "processing_activity": act.pk, "schema": schema}


def _with_feature(index: int, **changes) -> dict:
    features = [dict(f) for f in SCHEMA["features"]]
    features[index] = {k: v for k, v in {**features[index], **changes}.items() if v is not None}
    return {**SCHEMA, "features": features}


def test_the_schema_accepts_bounds_and_audit_flags(ml_client):
    response = ml_client.post("/api/v1/datasets/", _dataset_body(activity(), SCHEMA), format="json")
    assert response.status_code == 201, response.content
    features = response.json()["schema"]["features"]
    assert features[0] == {"name": "age", "type": "int", "min": 18, "max": 90}
    assert features[1] == {"name": "bmi", "type": "float", "min": 15.0, "max": 45.0, "sensitive": True}
    assert features[3]["special_category"] is True and "sensitive" not in features[3]
    assert features[4] == {"name": "visits", "type": "float"}


@pytest.mark.parametrize(
    "schema, message",
    [
        (_with_feature(1, max=None), "schema.features[1].max: give both min and max, or neither"),
        (_with_feature(1, min=None), "schema.features[1].min: give both min and max, or neither"),
        (_with_feature(1, min=45.0), "schema.features[1].max: must be greater than min"),
        (_with_feature(0, min=50, max=20), "schema.features[0].max: must be greater than min"),
        (_with_feature(1, max="45"), "schema.features[1].max: must be a finite number"),
        (_with_feature(1, min=True, max=2), "schema.features[1].min: must be a finite number"),
        (_with_feature(0, min=0, max=10**400), "schema.features[0].max: must be a finite number"),
        (_with_feature(2, min=0, max=1), "schema.features[2].min: bounds are for numeric features (float, int) only"),
        (_with_feature(3, min=0, max=1), "schema.features[3].min: bounds are for numeric features (float, int) only"),
        (_with_feature(1, sensitive="yes"), "schema.features[1].sensitive: must be true or false"),
        (_with_feature(3, special_category=1), "schema.features[3].special_category: must be true or false"),
        ({**SCHEMA, "label": {"name": "outcome", "type": "bool", "sensitive": True}}, "label 'outcome': unknown keys"),
    ],
)
def test_bad_bounds_and_flags_are_refused_naming_the_field(dpo_client, schema, message):
    response = dpo_client.post("/api/v1/datasets/", _dataset_body(activity(), schema), format="json")
    assert response.status_code == 400, response.content
    assert response.json()["schema"][0].startswith(message)
    assert not Dataset.objects.exists()


def test_infinite_bounds_are_refused():
    from governance.services import ServiceError
    from provenance.schema import schema_validate

    for value in (math.inf, -math.inf, math.nan):
        with pytest.raises(ServiceError, match=r"schema.features\[1\].max: must be a finite number"):
            schema_validate(_with_feature(1, max=value))


def test_bounds_scale_and_clip_and_records_outside_them_are_kept_as_given(ml_client):
    dataset = ml_client.post("/api/v1/datasets/", _dataset_body(activity(), SCHEMA), format="json").json()
    rows = [
        {"subject": f"clip-{i}@x.org", "label": True,
         "features": {"age": age, "bmi": bmi, "smoker": False, "diagnosis": "none", "visits": 3.5}}
        for i, (age, bmi) in enumerate([(10, 15.0), (18, 30.0), (54, 45.0), (95, 60.0)])
    ]
    response = ml_client.post(f"/api/v1/datasets/{dataset['id']}/records/", rows, format="json")
    assert response.status_code == 201, response.content
    stored = list(DataRecord.objects.filter(dataset_id=dataset["id"]).order_by("id").values_list("features", flat=True))
    assert [r["age"] for r in stored] == [10, 18, 54, 95]  # outside the bounds: accepted, unchanged
    X, _, encoding = data.encode_rows(
        record_features=stored, labels=[True] * 4, schema=Dataset.objects.get(pk=dataset["id"]).schema,
        classes=[False, True],
    )
    # age: (clip(x, 18, 90) − 18) / 72; bmi: (clip(x, 15, 45) − 15) / 30; visits has no bounds.
    assert X[:, 0].tolist() == pytest.approx([0.0, 0.0, 0.5, 1.0])
    assert X[:, 1].tolist() == pytest.approx([0.0, 0.5, 1.0, 1.0])
    assert X[:, -1].tolist() == [3.5] * 4
    assert encoding["features"][0] == {"name": "age", "type": "int", "min": 18.0, "max": 90.0}


def _trained_version(*, n: int = 160, seed: int = 7) -> ModelVersion:
    """A dataset created through the services with the schema above, people who consented,
    a current snapshot and a DP model trained on it in-process."""
    act = activity(purposes=(CODE,))
    dataset = provenance_services.dataset_create(name=f"repro {act.pk}", owner="ml", processing_activity=act, schema=SCHEMA)
    rng = numpy.random.default_rng(seed)
    people = [f"repro-{i}@x.org" for i in range(n)]
    rows = []
    for p in people:
        age, bmi = int(rng.integers(5, 100)), float(rng.normal(30, 9))
        rows.append({
            "subject": p, "label": bool(age + rng.normal(0, 15) > 50),
            "features": {"age": age, "bmi": bmi, "smoker": bool(rng.random() < 0.3),
                         "diagnosis": str(rng.choice(["none", "diabetes", "asthma"])),
                         "visits": float(rng.poisson(4))},
        })
    provenance_services.dataset_records_ingest(dataset=dataset, rows=rows, actor="t")
    for p in people:
        consent(p, CODE, "given", timezone.now() - timedelta(hours=1))
    snapshot = provenance_services.snapshot_create(dataset=dataset, purpose=act.purposes.get())
    run = services.training_run_queue(
        snapshot=snapshot.pk, epochs=1, batch_size=32, noise_multiplier=1.0, seed=seed, holdout_fraction=0.3,
        model_spec={"hidden_sizes": [8]}, enqueue=False,
    )
    run = services.training_run_execute(run_id=run.pk)
    assert run.status == RunStatus.SUCCEEDED, run.error
    return ModelVersion.objects.get(training_run=run)


def _outsider_encoding(reproducibility: dict, records: list[tuple[dict, object]]) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Re-encode raw records from the published record alone, without the project's code."""
    columns = []
    for spec in reproducibility["features"]:
        values = [features[spec["name"]] for features, _ in records]
        if spec["type"] == "category":
            columns.append(numpy.array([[1.0 if v == c else 0.0 for c in spec["categories"]] for v in values]))
        elif "min" in spec:
            lo, hi = spec["min"], spec["max"]
            columns.append(numpy.array([[(min(max(float(v), lo), hi) - lo) / (hi - lo)] for v in values]))
        else:
            columns.append(numpy.array([[float(v)] for v in values]))
    X = numpy.hstack(columns).astype(numpy.float32)
    classes = reproducibility["classes"]
    y = numpy.array([classes.index(label) if label in classes else -1 for _, label in records])
    return X, y


def test_an_outsider_reencodes_the_records_exactly_from_the_published_record(auditor_client):
    version = _trained_version()
    run = version.training_run
    reproducibility = auditor_client.get(f"/api/v1/models/{version.pk}/").json()["reproducibility"]
    assert reproducibility["executor"] == "internal"
    assert reproducibility["feature_order"] == ["age", "bmi", "smoker", "diagnosis", "visits"]
    assert reproducibility["features"][0] == {"name": "age", "type": "int", "min": 18.0, "max": 90.0}
    assert reproducibility["features"][3]["categories"] == ["none", "diabetes", "asthma"]
    assert reproducibility["classes"] == [False, True] and reproducibility["n_inputs"] == 7
    assert reproducibility["seed"] == 7 and reproducibility["release_training_metrics"] is True
    split = reproducibility["person_split"]
    assert split["rule"] == data.PERSON_SPLIT_RULE and split["seed"] == 7
    assert split["holdout_below"] == 0.3 and split["validation_below"] == pytest.approx(0.4)
    assert "not disclosed" in split["key"]
    # The key itself appears nowhere in the record.
    assert data.person_split_key().hex() not in json.dumps(reproducibility)
    assert reproducibility["snapshot"] == {"id": run.snapshot_id, "merkle_root": run.snapshot.merkle_root}

    member_ids = SnapshotMembership.objects.filter(snapshot_id=run.snapshot_id).values("record_id")
    records = list(DataRecord.objects.filter(pk__in=member_ids).order_by("id").values_list("features", "label"))
    X, y = _outsider_encoding(reproducibility, records)
    tensors = data.snapshot_tensors(snapshot_id=run.snapshot_id, schema=run.snapshot.dataset.schema,
                                    classes=run.encoding["classes"])
    assert X.shape == tensors.X.shape == (160, 7)
    assert numpy.array_equal(X, tensors.X) and numpy.array_equal(y, tensors.y)
    assert ((X[:, :2] >= 0) & (X[:, :2] <= 1)).all()  # out-of-bounds ages and BMIs were clipped
    # The model accepts exactly that width.
    model = model_version_load(model_version=version)[0]
    assert model(torch.from_numpy(X)).shape == (160, 2)


def test_the_audit_records_are_shown_to_the_dpo_and_the_auditor_not_the_ml_engineer(
    dpo_client, auditor_client, ml_client
):
    version = _trained_version()
    MembershipInferenceAudit.objects.filter(model_version=version).delete()
    audit = services.membership_inference_audit_run(model_version_id=version.pk, max_examples=20)

    engineer = ml_client.get(f"/api/v1/models/{version.pk}/").json()["reproducibility"]
    assert "membership_inference_audit" not in engineer
    assert engineer["feature_order"] and engineer["classes"] == [False, True]
    listing = ml_client.get("/api/v1/models/").json()
    assert all("reproducibility" not in row for row in listing["results"])
    for client in (dpo_client, auditor_client):
        shown = client.get(f"/api/v1/models/{version.pk}/").json()["reproducibility"]["membership_inference_audit"]
        assert len(shown["members"]) == 20 and len(shown["nonmembers"]) == 20
        assert shown["members_available"] == audit.members_available
        assert shown["nonmembers_available"] == audit.nonmembers_available
        assert shown["limit_per_side"] == 20 and shown["sampling_seed"] == audit.sampling_seed == 7
        assert shown["sampling_rule"] == audit.sampling_rule
        assert shown["audit"] == audit.pk and shown["matches_audit"] is True

    run = version.training_run
    records = DataRecord.objects.in_bulk(shown["members"] + shown["nonmembers"])
    assert len(records) == 40 and not set(shown["members"]) & set(shown["nonmembers"])
    # Members are trained-on people and non-members held-out people, by the published rule.
    subjects = {rid: records[rid].subject_id for rid in records}
    draws = dict(zip(subjects.values(), data.person_draws(subject_ids=list(subjects.values()), seed=run.seed),
                     strict=True))
    assert all(draws[subjects[r]] >= run.holdout_fraction + run.validation_split for r in shown["members"])
    assert all(draws[subjects[r]] < run.holdout_fraction for r in shown["nonmembers"])

    # Re-running the attack on exactly these records gives the recorded figures: they are
    # the records the audit attacked.
    reproducibility = dpo_client.get(f"/api/v1/models/{version.pk}/").json()["reproducibility"]
    models = model_version_load(model_version=version)

    def losses(ids):
        X, y = _outsider_encoding(reproducibility, [(records[i].features, records[i].label) for i in ids])
        return _per_example_losses(models, torch.from_numpy(X), y)

    again = loss_threshold_attack(member_losses=losses(shown["members"]), nonmember_losses=losses(shown["nonmembers"]),
                                  seed=audit.sampling_seed)
    assert (again.auc, again.auc_low, again.auc_high, again.advantage) == (
        audit.auc, audit.auc_low, audit.auc_high, audit.advantage
    )
    # Without an explicit limit the recomputation reads it from the recorded audit's sizes.
    version = ModelVersion.objects.prefetch_related("membership_inference_audits").get(pk=version.pk)
    assert audit_record_ids(model_version=version)["members"] == shown["members"]


def test_the_weights_file_carries_the_same_record_without_audit_ids(dpo_client):
    version = _trained_version(n=120, seed=3)
    metadata = artifacts.read_metadata(relative=version.artifact_path)
    assert metadata["training_run"] == str(version.training_run_id) and metadata["format"] == "mlp"
    in_file = json.loads(metadata[artifacts.REPRODUCIBILITY_KEY])
    api = dpo_client.get(f"/api/v1/models/{version.pk}/").json()["reproducibility"]
    assert "membership_inference_audit" in api and "membership_inference_audit" not in in_file
    api.pop("membership_inference_audit")
    assert in_file == api
    # The registry's hash is the hash of the file with its metadata, and loading checks it.
    assert artifacts.sha256_of(artifacts.absolute(version.artifact_path)) == version.artifact_sha256
    artifacts.load_weights(relative=version.artifact_path, expected_sha256=version.artifact_sha256)


def test_the_record_ids_cost_the_detail_one_query_whatever_the_snapshot_size(dpo_client, ml_client):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def queries(client, version) -> list[str]:
        client.get(f"/api/v1/models/{version.pk}/")  # warm: authentication caches, role lookups
        with CaptureQueriesContext(connection) as captured:
            assert client.get(f"/api/v1/models/{version.pk}/").status_code == 200
        return [q["sql"] for q in captured.captured_queries]

    small, large = _trained_version(n=80, seed=1), _trained_version(n=240, seed=2)
    assert len(queries(dpo_client, small)) == len(queries(dpo_client, large))
    extra = set(queries(dpo_client, small)) - set(queries(ml_client, small))
    assert len(queries(dpo_client, small)) == len(queries(ml_client, small)) + 1
    assert any("snapshotmembership" in q.lower() for q in extra)
