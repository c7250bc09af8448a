"""One-run canary audit (Steinke et al. 2023): the p-value, the bound, and the audit catching broken noise."""

from __future__ import annotations

import math

import numpy
import pytest
import torch

from mlops.engine import canary, dp_train
from mlops.engine.canary import (
    canary_audit_train,
    canary_examples,
    canary_inclusion,
    default_guess_counts,
    epsilon_lower_bound,
    one_run_audit,
    p_value_dp_audit,
)
from mlops.engine.spec import TrainConfig
from tests.mlops.engine_data import linear_task

# Audit setting (measured): on 2,000 rows of a 10-class linear task in 30 features, a
# 256-unit MLP trained with Adam for 50 epochs memorises random-label canaries once the
# noise is off (966/1000 guesses right, bound ≈ 2.9 against a claimed ε ≈ 1), while the
# same configuration with its noise gives a bound of 0. Each run takes ~2 s.
N_TRAIN, N_FEATURES, N_CLASSES, N_CANARIES = 2000, 30, 10, 1000


def audit_config(**overrides) -> TrainConfig:
    values = {
        "task": "multiclass",
        "hidden_sizes": [256],
        "optimizer": "adam",
        "learning_rate": 0.01,
        "epochs": 50,
        "batch_size": 64,
        "target_epsilon": 1.0,
        "target_delta": 1e-5,
    }
    values.update(overrides)
    return TrainConfig(**values)


def audit(config: TrainConfig):
    X, y = linear_task(n=N_TRAIN, d=N_FEATURES, n_classes=N_CLASSES)
    return canary_audit_train(
        X_train=X, y_train=y, n_classes=N_CLASSES, config=config, n_canaries=N_CANARIES, seed=0
    )


def brute_force_p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """The theorem's p-value from binomial coefficients, term by term."""
    q = math.exp(epsilon) / (1 + math.exp(epsilon))

    def pmf(j: int) -> float:
        return math.comb(r, j) * q**j * (1 - q) ** (r - j)

    tail = sum(pmf(j) for j in range(v, r + 1))
    worst = max((sum(pmf(j) for j in range(v - i, v)) / i for i in range(1, v + 1)), default=0.0)
    return min(1.0, tail + 2 * m * delta * worst)


@pytest.mark.parametrize(
    ("m", "r", "v", "epsilon", "delta"),
    [(10, 6, 5, 0.5, 0.01), (20, 12, 12, 2.0, 0.001), (30, 20, 9, 1.0, 0.0), (8, 8, 0, 0.3, 0.05), (50, 40, 33, 1.7, 1e-3)],
)
def test_p_value_matches_brute_force(m, r, v, epsilon, delta):
    assert p_value_dp_audit(m=m, r=r, v=v, epsilon=epsilon, delta=delta) == pytest.approx(
        brute_force_p_value(m, r, v, epsilon, delta), rel=1e-9, abs=1e-12
    )


def test_all_guesses_right_gives_a_positive_bound_growing_with_r():
    # Pure DP, v = r: the p-value is q^r, so the bound solves q^r = 5% in closed form.
    for r in (10, 50, 200):
        q = 0.05 ** (1 / r)
        assert epsilon_lower_bound(m=r, r=r, v=r, delta=0.0) == pytest.approx(math.log(q / (1 - q)), abs=1e-9)
    bounds = [epsilon_lower_bound(m=1000, r=r, v=r, delta=1e-5) for r in (10, 50, 200, 1000)]
    assert bounds[0] > 0
    assert bounds == sorted(bounds) and len(set(bounds)) == len(bounds)


def test_chance_level_guessing_gives_no_bound():
    assert epsilon_lower_bound(m=1000, r=200, v=100, delta=1e-5) == 0.0
    assert epsilon_lower_bound(m=1000, r=200, v=105, delta=1e-5) == 0.0
    assert epsilon_lower_bound(m=1000, r=1000, v=500, delta=1e-5) == 0.0


def test_bound_is_monotone_in_correct_guesses():
    bounds = [epsilon_lower_bound(m=500, r=100, v=v, delta=1e-5) for v in range(50, 101)]
    assert all(a <= b for a, b in zip(bounds, bounds[1:], strict=False))
    assert bounds[0] == 0.0 and bounds[-1] > 3.0


def test_delta_term_raises_the_p_value_and_lowers_the_bound():
    pure = p_value_dp_audit(m=1000, r=100, v=90, epsilon=1.0, delta=0.0)
    approximate = p_value_dp_audit(m=1000, r=100, v=90, epsilon=1.0, delta=1e-4)
    assert approximate > pure
    assert epsilon_lower_bound(m=1000, r=100, v=90, delta=1e-4) < epsilon_lower_bound(m=1000, r=100, v=90, delta=0.0)
    # A large enough δ·m forbids any conclusion.
    assert epsilon_lower_bound(m=1000, r=100, v=100, delta=0.05) == 0.0


def test_bound_holds_at_its_confidence():
    p = p_value_dp_audit
    bound = epsilon_lower_bound(m=400, r=80, v=70, delta=1e-5)
    assert p(m=400, r=80, v=70, epsilon=bound, delta=1e-5) <= 0.05
    assert p(m=400, r=80, v=70, epsilon=bound + 1e-6, delta=1e-5) > 0.05
    assert epsilon_lower_bound(m=400, r=80, v=70, delta=1e-5, confidence=0.99) < bound


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"m": 10, "r": 11, "v": 5}, "r"),
        ({"m": 10, "r": 6, "v": 7}, "v"),
        ({"m": 0, "r": 0, "v": 0}, "m"),
        ({"m": 10, "r": 6, "v": 2.5}, "v"),
        ({"m": 10, "r": 6, "v": 3, "delta": 1.0}, "delta"),
        ({"m": 10, "r": 6, "v": 3, "delta": -0.1}, "delta"),
        ({"m": 10, "r": 6, "v": 3, "confidence": 1.0}, "confidence"),
    ],
)
def test_bound_refuses_bad_arguments(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        epsilon_lower_bound(**{"delta": 1e-5, **kwargs})


def test_p_value_refuses_negative_epsilon():
    with pytest.raises(ValueError, match="^epsilon:"):
        p_value_dp_audit(m=10, r=6, v=3, epsilon=-1.0, delta=1e-5)


def test_one_run_audit_guesses_from_both_ends_with_bonferroni():
    m = 200
    included = numpy.arange(m) % 2 == 0
    # Scores rank the included canaries first except for two mistakes at each end.
    scores = numpy.where(included, 1.0, -1.0) + numpy.linspace(0, 0.5, m)
    scores[[1, 3]] = 10.0  # excluded, ranked at the very top
    scores[[0, 2]] = -10.0  # included, ranked at the very bottom
    result = one_run_audit(scores=scores, included=included, delta=1e-5)
    assert result.guess_counts == default_guess_counts(m) == [5, 10, 20, 50, 100]
    assert [row["n_correct"] for row in result.per_guess_count] == [6, 16, 36, 96, 196]
    level = 1 - 0.05 / 5
    for row in result.per_guess_count:
        assert row["n_guesses"] == 2 * row["k"]
        assert row["epsilon_lower_bound"] == epsilon_lower_bound(
            m=m, r=row["n_guesses"], v=row["n_correct"], delta=1e-5, confidence=level
        )
    best = max(result.per_guess_count, key=lambda row: row["epsilon_lower_bound"])
    assert (result.n_guesses, result.n_correct) == (best["n_guesses"], best["n_correct"]) == (200, 196)
    assert result.epsilon_lower_bound == best["epsilon_lower_bound"] > 2.0
    # The correction costs something: the same guesses alone at 95% give a larger bound.
    assert result.epsilon_lower_bound < epsilon_lower_bound(m=m, r=200, v=196, delta=1e-5)
    assert result.n_canaries == m and result.n_included == 100 and result.confidence == 0.95

    alone = one_run_audit(scores=scores, included=included, delta=1e-5, guess_counts=[100])
    assert alone.epsilon_lower_bound == epsilon_lower_bound(m=m, r=200, v=196, delta=1e-5)


def test_one_run_audit_refuses_bad_input():
    scores, included = numpy.zeros(10), numpy.zeros(10, dtype=bool)
    with pytest.raises(ValueError, match="^included:"):
        one_run_audit(scores=scores, included=included[:9], delta=1e-5)
    with pytest.raises(ValueError, match="^scores:"):
        one_run_audit(scores=numpy.full(10, numpy.nan), included=included, delta=1e-5)
    with pytest.raises(ValueError, match="^guess_counts:"):
        one_run_audit(scores=scores, included=included, delta=1e-5, guess_counts=[6])
    with pytest.raises(ValueError, match="^guess_counts:"):
        one_run_audit(scores=scores, included=included, delta=1e-5, guess_counts=[2, 2])


def test_audit_of_randomised_response_is_valid_and_has_power():
    """Scores from ε₀-randomised response of each inclusion bit are exactly ε₀-DP per canary:
    the 95% bound may exceed ε₀ in at most ~5% of audits, yet it should find most of ε₀."""
    eps0 = 2.0
    keep = 1 / (1 + math.exp(-eps0))
    rng = numpy.random.default_rng(0)
    bounds = []
    for _ in range(100):
        included = rng.random(200) < 0.5
        answer = numpy.where(rng.random(200) < keep, included, ~included)
        scores = answer + 0.5 * rng.random(200)  # order within each answer, independent of inclusion
        bounds.append(one_run_audit(scores=scores, included=included, delta=0.0).epsilon_lower_bound)
    bounds = numpy.array(bounds)
    assert (bounds > eps0).mean() <= 0.05
    assert numpy.median(bounds) > 0.5 * eps0


def test_canaries_are_seeded_bounded_and_randomly_labelled():
    X, y = canary_examples(n_canaries=2000, n_features=4, n_classes=3, seed=7)
    X2, y2 = canary_examples(n_canaries=2000, n_features=4, n_classes=3, seed=7)
    X3, _ = canary_examples(n_canaries=2000, n_features=4, n_classes=3, seed=8)
    assert X.dtype == torch.float32 and y.dtype == torch.int64 and X.shape == (2000, 4)
    assert torch.equal(X, X2) and torch.equal(y, y2) and not torch.equal(X, X3)
    assert abs(float(X.mean())) < 0.1 and 0.9 < float(X.std()) < 1.1  # standard normal scale
    assert sorted(torch.bincount(y).tolist())[0] > 550  # every class, about a third each

    low, high = [0.0, -1.0, 5.0, 2.0], [1.0, 1.0, 6.0, 2.0]
    Xb, _ = canary_examples(n_canaries=2000, n_features=4, n_classes=3, seed=7, low=low, high=high)
    assert (Xb >= torch.tensor(low)).all() and (Xb <= torch.tensor(high)).all()
    assert float(Xb[:, 0].min()) < 0.05 and float(Xb[:, 0].max()) > 0.95
    with pytest.raises(ValueError, match="^low:"):
        canary_examples(n_canaries=10, n_features=4, n_classes=3, seed=7, low=low)
    with pytest.raises(ValueError, match="^high:"):
        canary_examples(n_canaries=10, n_features=4, n_classes=3, seed=7, low=low, high=[0.0] * 4)
    with pytest.raises(ValueError, match="^low:"):
        canary_examples(n_canaries=10, n_features=4, n_classes=3, seed=7, low=[0.0] * 3, high=1.0)


def test_inclusion_is_seeded_and_about_half():
    included = canary_inclusion(n_canaries=4000, seed=3)
    assert included.dtype == numpy.bool_ and included.shape == (4000,)
    assert numpy.array_equal(included, canary_inclusion(n_canaries=4000, seed=3))
    assert not numpy.array_equal(included, canary_inclusion(n_canaries=4000, seed=4))
    assert 1900 < included.sum() < 2100
    with pytest.raises(ValueError, match="^n_canaries:"):
        canary_inclusion(n_canaries=1, seed=0)
    with pytest.raises(ValueError, match="^seed:"):
        canary_inclusion(n_canaries=10, seed=-1)


def test_dp_run_bound_stays_below_its_claimed_epsilon():
    config = audit_config()
    result, claimed, run = audit(config)
    n_included = int(canary_inclusion(n_canaries=N_CANARIES, seed=0).sum())
    # The included canaries really were trained on: N grew by exactly that many.
    assert run.sample_rate == config.batch_size / (N_TRAIN + n_included)
    assert result.n_included == n_included and result.n_canaries == N_CANARIES
    assert claimed == run.epsilon == result.claimed_epsilon
    assert 0.98 <= claimed <= 1.0
    assert result.epsilon_lower_bound < claimed
    assert not result.flagged
    assert result.delta == 1e-5


def test_run_without_noise_is_caught(monkeypatch):
    """The accountant still claims ε ≈ 1, but no noise is added: the canaries are memorised."""
    calls = []

    def no_noise(self, grad, std):
        calls.append(std)
        return grad.clone()

    monkeypatch.setattr(dp_train.Trainer, "_noised", no_noise)
    result, claimed, run = audit(audit_config())
    assert calls and all(std > 0 for std in calls)  # the seam was hit, with the σC it should have used
    assert run.noise_multiplier > 1 and 0.98 <= claimed <= 1.0
    assert result.epsilon_lower_bound > 2 * claimed
    assert result.flagged
    assert any(note.startswith("FLAGGED") for note in result.notes)


def test_non_private_run_claims_infinity_and_is_never_flagged():
    X, y = linear_task(n=600, d=8)
    config = TrainConfig(hidden_sizes=[32], epochs=2, batch_size=64, private=False)
    result, claimed, run = canary_audit_train(X_train=X, y_train=y, n_classes=2, config=config, n_canaries=100, seed=1)
    assert math.isinf(claimed) and math.isinf(run.epsilon)
    assert not result.flagged
    assert result.n_canaries == 100 and run.clipping == "none"


def test_audit_train_refuses_bad_canary_arguments():
    X, y = linear_task(n=200, d=4)
    with pytest.raises(ValueError, match="^n_canaries:"):
        canary_audit_train(X_train=X, y_train=y, n_classes=2, config=audit_config(), n_canaries=1, seed=0)
    with pytest.raises(ValueError, match="^y_train:"):
        canary_audit_train(X_train=X, y_train=y[:10], n_classes=2, config=audit_config(), n_canaries=10, seed=0)


def test_grid_is_small_and_within_m():
    assert default_guess_counts(1000) == [25, 50, 100, 250, 500]
    assert default_guess_counts(10) == [1, 2, 5]
    assert len(canary.GUESS_FRACTIONS) == 5
