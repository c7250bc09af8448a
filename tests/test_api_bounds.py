"""Issue 14, item 5: a training request cannot keep the web process busy. ε and δ are
bounded and refused (400, naming the field) before any accounting; the σ search makes a
bounded number of accountant evaluations whatever it is asked; the PRV accountant's mesh
is bounded instead of exhausting memory."""

from __future__ import annotations

import pytest

from mlops.engine import accounting
from mlops.models import PrivacyLedgerEntry, TrainingRun
from tests.mlops.factories import make_snapshot

RUN = {"epochs": 1, "batch_size": 16, "model_spec": {"hidden_sizes": [8]}}


@pytest.fixture
def searches():
    """The engine's own count of ε evaluations in the last σ search (caches emptied first)."""
    accounting._noise_multiplier_cached.cache_clear()
    accounting._noise_multiplier_for_plan_rdp.cache_clear()
    accounting.search_stats_reset()
    yield accounting.last_search_evaluations
    accounting._noise_multiplier_cached.cache_clear()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"target_epsilon": 1e20}, "target_epsilon"),
        ({"target_epsilon": 100.5}, "target_epsilon"),
        ({"target_epsilon": 1, "target_delta": 0.012}, "target_delta"),  # below 1/N = 1/70, above 1e-2
        ({"target_epsilon": 1, "target_delta": 0}, "target_delta"),
        ({"noise_multiplier": 1e300}, "noise_multiplier"),
        # A σ so small that the run would spend ε in the thousands: the same bound as a target.
        ({"noise_multiplier": 0.01}, "noise_multiplier"),
        ({"target_epsilon": 1, "seed": 2**40}, "seed"),
        ({"target_epsilon": 1, "batch_size": 2**40}, "batch_size"),
    ],
    ids=["eps-1e20", "eps-100.5", "delta-0.012", "delta-0", "sigma-huge", "sigma-tiny", "seed", "batch"],
)
def test_out_of_bound_privacy_parameters_are_400_naming_the_field(ml_client, searches, fields, field):
    snapshot = make_snapshot(n=100, d=3)
    response = ml_client.post("/api/v1/training-runs/", {"snapshot": snapshot.pk, **RUN, **fields}, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json(), response.json()
    assert not TrainingRun.objects.exists() and not PrivacyLedgerEntry.objects.exists()
    if field in ("target_epsilon", "target_delta"):
        assert searches() is None  # refused before any σ search


@pytest.mark.django_db
def test_the_largest_allowed_epsilon_with_prv_and_near_full_batches_is_answered(ml_client, searches):
    """ε = 100 with the PRV accountant, half the training set per step for 1,000 steps:
    Opacus's own search never met its tolerance here and spun until the worker was killed."""
    snapshot = make_snapshot(n=100, d=3)
    body = {"snapshot": snapshot.pk, "target_epsilon": 100, "accountant": "prv", "epochs": 500,
            "model_spec": {"hidden_sizes": [8]}, "validation_split": 0.0, "holdout_fraction": 0.0, "batch_size": 50}
    response = ml_client.post("/api/v1/training-runs/", body, format="json")
    assert response.status_code in (202, 400), response.content
    assert 0 < searches() <= accounting.MAX_SEARCH_EVALUATIONS
    if response.status_code == 202:
        run = response.json()
        assert run["planned_epsilon"] <= 100
        assert run["steps"] == 1000 and run["sample_rate"] == 0.5
    else:
        assert "accountant" in response.json() or "target_epsilon" in response.json()


def test_the_search_is_bounded_when_floating_point_cannot_meet_the_tolerance(searches):
    # ε = 1e20: its spacing between floats is far above the 0.01 tolerance (Opacus looped forever).
    sigma = accounting.noise_multiplier_for(target_epsilon=1e20, target_delta=1e-5, sample_rate=0.01, steps=1000)
    assert searches() <= accounting.MAX_SEARCH_EVALUATIONS
    assert accounting.epsilon_of_history(history=[[sigma, 0.01, 1000]], delta=1e-5) <= 1e20


def test_an_epsilon_below_what_any_noise_reaches_is_refused_without_searching_to_the_end(searches):
    # At δ = 1e-12 the orders of the RDP grid give ε ≥ ~0.36 whatever σ: Opacus doubled σ
    # to a million (about 30 s) before giving up.
    with pytest.raises(ValueError, match="target_epsilon: unreachable"):
        accounting.noise_multiplier_for(target_epsilon=0.01, target_delta=1e-12, sample_rate=0.5, steps=2000)
    assert searches() <= 10  # Opacus made 17 doublings, the last ones a second each


def test_a_prv_run_needing_a_huge_mesh_is_refused_naming_the_accountant():
    # 1.9 million mesh points: 660 MB and seconds per evaluation (10^7 steps would need 900 million).
    with pytest.raises(ValueError, match="accountant: the prv accountant would need"):
        accounting.epsilon_of_history(history=[[0.5, 1e-4, 100_000]], delta=1e-5, accountant="prv")


def test_ordinary_searches_still_give_opacus_sigma():
    from opacus.accountants.utils import get_noise_multiplier

    kwargs = {"target_epsilon": 1.0, "target_delta": 1e-6, "sample_rate": 0.01, "steps": 2000}
    assert accounting.noise_multiplier_for(**kwargs) == get_noise_multiplier(**kwargs, accountant="rdp")


@pytest.mark.django_db
def test_privacy_parameters_above_zero_are_stated_in_the_schema_and_zero_is_refused_naming_the_field(dpo_client):
    """Schemathesis generated epsilon_cap 0 from a schema that allowed it; the server refused it."""
    from drf_spectacular.generators import SchemaGenerator

    components = SchemaGenerator().get_schema(request=None, public=True)["components"]["schemas"]
    for component, field in (("PrivacyBudgetSetRequest", "epsilon_cap"), ("PrivacyBudgetSetRequest", "delta"),
                             ("TrainingRunRequestRequest", "target_epsilon"), ("TrainingRunRequestRequest", "target_delta"),
                             ("TrainingRunRequestRequest", "noise_multiplier")):
        documented = components[component]["properties"][field]
        assert documented["minimum"] == 0 and documented["exclusiveMinimum"] is True, (component, field)
    from tests.governance.reports_helpers import make_world

    world = make_world(n_subjects=2, records_per_subject=1, with_model=False)
    url = f"/api/v1/datasets/{world.snapshot.dataset_id}/privacy-budget/"
    for body, field in (({"epsilon_cap": 0, "delta": 1e-5}, "epsilon_cap"), ({"epsilon_cap": 1, "delta": 0}, "delta")):
        answer = dpo_client.put(url, body, format="json")
        assert answer.status_code == 400 and answer.json()[field] == ["Must be above 0."], answer.content


@pytest.mark.django_db
def test_a_queued_runs_unknown_epsilon_is_a_null_the_schema_allows(ml_client):
    """Schemathesis as an ML engineer: a queued run answered epsilon null against a schema
    saying number."""
    from drf_spectacular.generators import SchemaGenerator

    from mlops import services
    from tests.mlops.factories import make_snapshot

    run = services.training_run_queue(
        snapshot=make_snapshot(n=60, d=3), target_epsilon=3.0, epochs=1, batch_size=16, enqueue=False
    )
    answer = ml_client.get(f"/api/v1/training-runs/{run.pk}/").json()
    assert answer["status"] == "queued" and answer["epsilon"] is None
    components = SchemaGenerator().get_schema(request=None, public=True)["components"]["schemas"]
    for component, field in (("TrainingRun", "epsilon"), ("TrainingRun", "planned_epsilon"), ("ModelVersion", "epsilon")):
        assert components[component]["properties"][field].get("nullable") is True, (component, field)
