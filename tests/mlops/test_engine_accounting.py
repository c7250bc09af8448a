"""The ledger's arithmetic: stored RDP curves summed must give Opacus's own ε."""

from __future__ import annotations

import math

import numpy
import pytest
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from mlops.engine import accounting

HETEROGENEOUS_RUNS = [
    # (noise_multiplier, sample_rate, steps): different models, batch sizes and lengths
    (1.1, 256 / 10_000, 390),
    (0.8, 0.01, 1000),
    (2.5, 0.05, 200),
    (1.0, 1024 / 16_384, 80),
    (4.0, 0.2, 50),
]


def opacus_epsilon(history, delta):
    acct = RDPAccountant()
    acct.history = list(history)
    return acct.get_epsilon(delta=delta)


def test_orders_are_opacus_default_grid():
    assert list(accounting.RDP_ORDERS) == [float(a) for a in RDPAccountant.DEFAULT_ALPHAS]


@pytest.mark.parametrize("run", HETEROGENEOUS_RUNS)
def test_single_run_curve_gives_opacus_epsilon(run):
    sigma, q, steps = run
    curve = accounting.rdp_curve(noise_multiplier=sigma, sample_rate=q, steps=steps)
    eps = accounting.epsilon_from_rdp(rdp=curve, delta=1e-5)
    assert eps == pytest.approx(opacus_epsilon([run], 1e-5), rel=1e-12)
    assert eps == pytest.approx(accounting.epsilon_of_history(history=[list(run)], delta=1e-5), rel=1e-12)


@pytest.mark.parametrize("delta", [1e-5, 1e-7])
def test_sum_of_curves_equals_opacus_over_combined_history(delta):
    curves = [accounting.rdp_curve(noise_multiplier=s, sample_rate=q, steps=n) for s, q, n in HETEROGENEOUS_RUNS]
    composed = accounting.epsilon_from_rdp(rdp=accounting.compose_rdp(curves), delta=delta)
    expected = opacus_epsilon(HETEROGENEOUS_RUNS, delta)
    assert composed == pytest.approx(expected, rel=1e-9)
    # Composition really costs more than any single run.
    assert composed > max(opacus_epsilon([run], delta) for run in HETEROGENEOUS_RUNS)


def test_composing_a_thousand_curves_matches_scaled_curve():
    curve = accounting.rdp_curve(noise_multiplier=1.3, sample_rate=0.02, steps=100)
    stored = [curve] * 1000
    composed = accounting.compose_rdp(stored)
    # 1,000 identical runs of 100 steps are one run of 100,000 steps.
    assert accounting.epsilon_from_rdp(rdp=composed, delta=1e-5) == pytest.approx(
        opacus_epsilon([(1.3, 0.02, 100_000)], 1e-5), rel=1e-9
    )


def test_empty_ledger_spends_nothing():
    assert accounting.epsilon_from_rdp(rdp=accounting.compose_rdp([]), delta=1e-5) == 0.0
    assert accounting.epsilon_of_history(history=[], delta=1e-5) == 0.0


def test_curve_of_zero_noise_is_infinite():
    curve = accounting.rdp_curve(noise_multiplier=0.0, sample_rate=0.1, steps=10)
    assert math.isinf(accounting.epsilon_from_rdp(rdp=curve, delta=1e-5))


def test_curve_of_history_composes_segments():
    history = [list(run) for run in HETEROGENEOUS_RUNS[:3]]
    curve = accounting.rdp_curve_of_history(history=history)
    assert accounting.epsilon_from_rdp(rdp=curve, delta=1e-5) == pytest.approx(
        opacus_epsilon(HETEROGENEOUS_RUNS[:3], 1e-5), rel=1e-9
    )


def test_wrong_length_curve_is_refused():
    with pytest.raises(ValueError, match="rdp"):
        accounting.epsilon_from_rdp(rdp=[0.1, 0.2], delta=1e-5)
    with pytest.raises(ValueError, match="rdp"):
        accounting.compose_rdp(numpy.zeros((3, 5)))


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_noise_multiplier_matches_opacus_and_meets_target(accountant):
    kwargs = {"target_epsilon": 3.0, "target_delta": 1e-5, "sample_rate": 256 / 10_000, "steps": 390}
    sigma = accounting.noise_multiplier_for(**kwargs, accountant=accountant)
    assert sigma == get_noise_multiplier(**kwargs, accountant=accountant)
    eps = accounting.epsilon_of_history(history=[[sigma, 256 / 10_000, 390]], delta=1e-5, accountant=accountant)
    assert 3.0 - 0.01 <= eps <= 3.0


def test_plan_noise_multiplier_meets_target_over_all_segments():
    plan = [(0.1, 30), (0.05, 60), (0.025, 120)]
    sigma = accounting.noise_multiplier_for_plan(target_epsilon=2.0, target_delta=1e-5, plan=plan)
    eps = opacus_epsilon([(sigma, q, n) for q, n in plan], 1e-5)
    assert 2.0 - 0.01 <= eps <= 2.0


def test_unknown_accountant_is_refused():
    with pytest.raises(ValueError, match="accountant"):
        accounting.epsilon_of_history(history=[[1.0, 0.1, 10]], delta=1e-5, accountant="gdp")


def test_epsilon_of_history_is_bit_identical_to_opacus():
    history = [list(run) for run in HETEROGENEOUS_RUNS]
    # Twice: the second call is served from the per-step cache and must not drift.
    for _ in range(2):
        assert accounting.epsilon_of_history(history=history, delta=1e-5) == opacus_epsilon(HETEROGENEOUS_RUNS, 1e-5)


@pytest.mark.parametrize(
    ("plan", "target"),
    [
        ([(0.1, 30), (0.05, 60), (0.025, 120)], 0.5),
        ([(0.5, 4), (0.2, 10), (0.05, 40)], 4.0),
    ],
)
def test_windowed_plan_search_finds_the_full_grid_sigma(plan, target):
    """The σ search over a window of orders lands on the σ a full-grid search finds."""

    def full_grid(sigma):
        return opacus_epsilon([(sigma, q, n) for q, n in plan], 1e-6)

    expected = accounting._bisect_sigma(full_grid, target)
    assert accounting.noise_multiplier_for_plan(target_epsilon=target, target_delta=1e-6, plan=plan) == expected


@pytest.mark.parametrize("noise_multiplier", [0.3, 0.7, 1.0, 1.3, 2.5, 6.0])
def test_compute_rdp_is_bit_identical_to_opacus(noise_multiplier):
    """The vectorised series gives Opacus's RDP to the last bit at every order: sample
    rates from SISA stages (64 rows of 999, 1000, 3999, …) to near 1, and q = 1, 0."""
    from opacus.accountants.analysis import rdp as rdp_analysis

    rates = [64 / n for n in (70, 999, 1000, 3999, 4000, 40_000, 123_457)] + [1e-4, 0.37, 0.9, 1.0, 0.0]
    for q in rates:
        expected = rdp_analysis.compute_rdp(q=q, noise_multiplier=noise_multiplier, steps=13, orders=list(accounting.RDP_ORDERS))
        got = accounting.compute_rdp(q=q, noise_multiplier=noise_multiplier, steps=13, orders=accounting.RDP_ORDERS)
        assert numpy.array_equal(got, expected), (q, noise_multiplier)
