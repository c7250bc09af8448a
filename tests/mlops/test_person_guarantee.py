"""ε is a record-level guarantee: DP-SGD samples and clips records. A person with k records is
protected at the group-privacy bound only, and every place that shows ε says what it means
for a person, from the most records one person has in the training set (recorded per run).

The expected figures are recomputed here from the definition (the chained (ε, δ) inequality,
term by term), not with the code under test."""

from __future__ import annotations

import math

import pytest

from governance import display
from mlops import services
from mlops.engine.accounting import group_privacy
from mlops.models import RunStatus, TrainingRun
from tests.mlops.factories import make_snapshot


def _chained(epsilon: float, delta: float, k: int) -> tuple[float, float]:
    """P[M(x0)∈S] ≤ e^ε P[M(x1)∈S] + δ, applied k times: δ_k = Σ_{i<k} e^{iε} δ."""
    total = 0.0
    for i in range(k):
        total += math.exp(i * epsilon) * delta
    return k * epsilon, total


@pytest.mark.parametrize(("epsilon", "delta", "k"), [(3.0, 1e-5, 4), (0.5, 1e-6, 10), (1e-4, 1e-5, 3), (8.0, 1e-5, 2)])
def test_the_group_bound_is_the_chained_inequality(epsilon, delta, k):
    got = group_privacy(epsilon=epsilon, delta=delta, k=k)
    want = _chained(epsilon, delta, k)
    assert got[0] == pytest.approx(want[0], rel=1e-12)
    assert got[1] == pytest.approx(want[1], rel=1e-9)


def test_one_record_per_person_is_the_record_guarantee_and_huge_groups_have_none():
    assert group_privacy(epsilon=2.5, delta=1e-5, k=1) == (2.5, 1e-5)
    assert group_privacy(epsilon=10.0, delta=1e-5, k=100) == (1000.0, math.inf)
    for k in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match="k:"):
            group_privacy(epsilon=1.0, delta=1e-5, k=k)


def _train(ml_client, snapshot, **extra) -> TrainingRun:
    body = {"snapshot": snapshot.pk, "epochs": 2, "batch_size": 32, "target_epsilon": 2.0, "seed": 3,
            "model_spec": {"hidden_sizes": [8]}, **extra}
    response = ml_client.post("/api/v1/training-runs/", body, format="json")
    assert response.status_code == 202, response.content
    run = services.training_run_execute(run_id=response.json()["id"])
    assert run.status == RunStatus.SUCCEEDED, run.error
    return run


@pytest.mark.django_db
def test_a_run_records_the_most_records_a_person_has_and_each_view_says_what_that_means(
        ml_client, auditor_client, admin_client, tmp_path):
    from assessments.reports.model_lineage import model_lineage_report_render
    from tests.governance.reports_helpers import pdf_text

    snapshot = make_snapshot(n=360, d=4, seed=2, records_per_subject=3)
    run = _train(ml_client, snapshot)
    assert run.max_records_per_person == 3
    assert ml_client.get(f"/api/v1/training-runs/{run.pk}/").json()["max_records_per_person"] == 3

    version = run.model_versions.get()
    person_epsilon, person_delta = _chained(version.epsilon, version.delta, 3)
    body = auditor_client.get(f"/api/v1/models/{version.pk}/").json()
    guarantee = body["person_guarantee"]
    assert guarantee["unit"] == "record" and guarantee["max_records_per_person"] == 3
    assert guarantee["epsilon"] == pytest.approx(person_epsilon, rel=1e-12)
    assert guarantee["delta"] == pytest.approx(person_delta, rel=1e-9)
    assert guarantee["holds"] is (person_delta < 1)
    # The record counts are records, named so.
    assert body["metrics"]["n_train"] == run.n_train

    page = admin_client.get(f"/admin/mlops/modelversion/{version.pk}/change/").content.decode()
    assert "a person has up to 3 records in the training set" in page
    run_page = admin_client.get(f"/admin/mlops/trainingrun/{run.pk}/change/").content.decode()
    assert f"{run.n_train:,} records trained on" in run_page and "a person has up to 3 records" in run_page

    path = tmp_path / "lineage.pdf"
    model_lineage_report_render(object_id=version.pk, path=path)
    text = " ".join(pdf_text(path.read_bytes()).split())
    assert "Unit of privacy one record" in text
    assert f"Records trained on {run.n_train}" in text
    assert "a person has up to 3 records in the training set" in text
    assert f"a person is protected at ε = {display.epsilon(person_epsilon)}" in text
    # Figures by label, not by key; the audit trail in words.
    assert "Validation accuracy" in text and "val_accuracy" not in text and "n_train" not in text
    assert "Model version registered" in text and "model_version.registered" not in text


@pytest.mark.django_db
def test_one_record_per_person_says_the_record_guarantee_is_the_persons(ml_client, admin_client):
    snapshot = make_snapshot(n=240, d=4, seed=5)
    run = _train(ml_client, snapshot)
    assert run.max_records_per_person == 1
    version = run.model_versions.get()
    guarantee = ml_client.get(f"/api/v1/models/{version.pk}/").json()["person_guarantee"]
    assert guarantee["epsilon"] == pytest.approx(version.epsilon) and guarantee["delta"] == pytest.approx(version.delta)
    page = admin_client.get(f"/admin/mlops/modelversion/{version.pk}/change/").content.decode()
    assert "also each person&#x27;s" in page or "also each person's" in page


@pytest.mark.django_db
def test_an_external_run_counts_the_records_of_the_people_it_was_given(ml_client):
    """The owner trains on the export, every current member: no person can have more there."""
    snapshot = make_snapshot(n=300, d=4, seed=7, records_per_subject=5)
    response = ml_client.post("/api/v1/training-runs/", {
        "executor": "external", "snapshot": snapshot.pk, "name": "ext", "epochs": 2, "batch_size": 32,
        "target_epsilon": 3.0}, format="json")
    assert response.status_code == 201, response.content
    assert TrainingRun.objects.get(pk=response.json()["id"]).max_records_per_person == 5
    assert response.json()["max_records_per_person"] == 5


def test_exclusions_are_told_in_words_with_their_counts():
    from provenance.display import exclusions_words

    assert exclusions_words({"no_consent": 0, "expired": 44, "withdrawn": 68, "restricted": 1}) == (
        "Consent withdrawn: 68 records; Consent expired: 44 records; Processing restricted (Art. 18): 1 record")
    assert exclusions_words({}) == "none" and exclusions_words(None) == "none"


@pytest.mark.django_db
def test_the_access_answer_gives_a_person_the_bound_for_their_own_records():
    from provenance.models import SnapshotMembership
    from provenance.selectors import subject_records_in_snapshots
    from rights.access import _for_you

    snapshot = make_snapshot(n=30, d=2, seed=1, records_per_subject=3)
    first = SnapshotMembership.objects.filter(snapshot=snapshot).order_by("id").first().subject_id
    assert subject_records_in_snapshots(subject_id=first, snapshot_ids=[snapshot.pk, 10**9]) == {snapshot.pk: 3}
    epsilon, delta = _chained(1.5, 1e-5, 3)
    assert _for_you(epsilon=1.5, delta=1e-5, records=3) == {
        "your_records_in_its_training_data": 3, "epsilon": pytest.approx(epsilon), "delta": pytest.approx(delta)}
    assert _for_you(epsilon=6.0, delta=1e-5, records=3)["delta"] == "1 or more: no guarantee"
    assert _for_you(epsilon=None, delta=None, records=2)["epsilon"] is None  # not private: no bound to give


@pytest.mark.django_db
def test_a_non_private_version_claims_no_unit_and_no_guarantee_for_anyone(ml_client, admin_client, tmp_path):
    from assessments.reports.model_lineage import model_lineage_report_render
    from tests.governance.reports_helpers import pdf_text

    snapshot = make_snapshot(n=240, d=4, seed=8, records_per_subject=2)
    body = {"snapshot": snapshot.pk, "epochs": 1, "batch_size": 32, "seed": 3, "model_spec": {"hidden_sizes": [8]},
            "allow_non_private": True}
    response = ml_client.post("/api/v1/training-runs/", body, format="json")
    assert response.status_code == 202, response.content
    run = services.training_run_execute(run_id=response.json()["id"])
    version = run.model_versions.get()
    assert version.non_private and ml_client.get(f"/api/v1/models/{version.pk}/").json()["person_guarantee"] is None
    path = tmp_path / "lineage.pdf"
    model_lineage_report_render(object_id=version.pk, path=path)
    text = " ".join(pdf_text(path.read_bytes()).split())
    assert "Unit of privacy none: no differential privacy" in text
    assert "Guarantee for a person None: trained without differential privacy." in text
    page = admin_client.get(f"/admin/mlops/modelversion/{version.pk}/change/").content.decode()
    assert "For a person" not in page
