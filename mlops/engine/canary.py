"""Empirical ε lower bound from one training run with canaries (Steinke, Nasr & Jagielski 2023).

How the audit works ("Privacy Auditing with One (1) Training Run", NeurIPS 2023):

1. ``m`` canaries — random feature vectors with uniformly random labels — are drawn, and
   each is included in the training data independently with probability ½.
2. One model is trained, with the same configuration as the run being audited, on the
   real training data plus the included canaries (an audit run: its model is not
   published).
3. Every canary is scored by ``−loss`` under that model. The auditor guesses "included"
   for the ``k`` highest scores, "excluded" for the ``k`` lowest and abstains on the rest:
   ``r = 2k`` guesses, ``v`` of them correct.
4. If training were (ε, δ)-DP with respect to each canary, the number of correct guesses
   would be stochastically dominated (up to a δ term) by ``Binomial(r, e^ε/(1+e^ε))``:
   guessing one example's membership from a DP output is no better than randomised
   response. ``v`` correct guesses that this binomial makes improbable (p-value ≤ 5%)
   reject that ε; the largest rejected ε is the lower bound.

What the figure proves, and what it does not:

* With 95% confidence, the configuration's true ε (at the run's δ) is at least the lower
  bound — for this training code, as it actually executes. It is a fact about the
  implementation, not about the accountant's arithmetic.
* A bound far below the claimed ε is the expected outcome. These canaries are audited
  black-box, from the final model only, with one run; the bound is limited by how well a
  loss attack singles them out, and by ``m`` (even ``v = r`` gives a finite bound). It is
  NOT evidence that the claimed ε is tight, nor that the model is "more private" than
  claimed.
* A bound ABOVE the claimed ε means the claim is false: the noise, the clipping, the
  sampling or the accounting is broken (``flagged``). At 95% confidence a correct
  implementation is flagged by chance at most 5% of the time.

Sampling-rate caveat: the engine samples at ``q = batch_size / N`` for the run's actual
``N`` (real data plus the ~m/2 included canaries), and the claimed ε is the accountant's
for that ``q``. Add/remove neighbours then differ in ``q`` by about ``batch_size/N²`` as
well as in one record — the engine's standard accounting, which this audit inherits
rather than tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy
import torch
from scipy.stats import binom

from mlops.engine import dp_train, mia
from mlops.engine.spec import TrainConfig

CONFIDENCE = 0.95
# The pre-declared guess grid: k = fraction × m guesses on each side. Few guesses with
# high precision make the strongest bound when leakage is concentrated in the most
# exposed canaries; many guesses when it is spread thinly. Five options cost a
# Bonferroni factor of 5 (each bound at 99% for a 95% audit): less than one correct guess
# of margin at these sizes.
GUESS_FRACTIONS = (0.025, 0.05, 0.1, 0.25, 0.5)
# Independent random streams from one seed: SeedSequence([seed, stream]).
_FEATURE_STREAM = 0
_INCLUSION_STREAM = 1
_PLACEMENT_STREAM = 2
_BISECTION_STEPS = 60


@dataclass
class CanaryAuditResult:
    """One audit. ``epsilon_lower_bound`` holds with probability ``confidence`` over the
    canaries' random inclusion, whichever guess count produced it (Bonferroni)."""

    epsilon_lower_bound: float
    confidence: float
    delta: float
    n_canaries: int  # m
    n_guesses: int  # r, at the guess count that gave the bound
    n_correct: int  # v, of those r
    guess_counts: list[int]  # the pre-declared grid: k guesses on each side, r = 2k
    per_guess_count: list[dict] = field(default_factory=list)  # {k, n_guesses, n_correct, epsilon_lower_bound}
    n_included: int | None = None
    claimed_epsilon: float | None = None  # set by canary_audit_train: the accountant's ε for the run
    flagged: bool = False  # lower bound > claimed ε: the implementation or its accounting is broken
    notes: list[str] = field(default_factory=list)


def _check_counts(m: object, r: object, v: object) -> tuple[int, int, int]:
    for name, value in (("m", m), ("r", r), ("v", v)):
        if isinstance(value, bool) or not isinstance(value, int | numpy.integer):
            raise ValueError(f"{name}: must be an integer")
    m, r, v = int(m), int(r), int(v)
    if m < 1:
        raise ValueError("m: the audit needs at least one canary")
    if not 0 <= r <= m:
        raise ValueError("r: the number of guesses must lie in 0..m")
    if not 0 <= v <= r:
        raise ValueError("v: the number of correct guesses must lie in 0..r")
    return m, r, v


def _check_delta(delta: object) -> float:
    if isinstance(delta, bool) or not isinstance(delta, int | float) or not 0.0 <= delta < 1.0:
        raise ValueError("delta: must be a number in [0, 1)")
    return float(delta)


def _check_confidence(confidence: object) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, int | float) or not 0.0 < confidence < 1.0:
        raise ValueError("confidence: must be a number strictly between 0 and 1")
    return float(confidence)


def p_value_dp_audit(*, m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """p-value of "training is (ε, δ)-DP" after ``v`` correct guesses out of ``r`` on ``m`` canaries.

    Steinke et al.'s Theorem 5.2 (their Algorithm, Appendix D):
    ``P[Binomial(r, q) ≥ v] + 2mδ · max_{1≤i≤v} P[v > Binomial(r, q) ≥ v − i] / i`` with
    ``q = e^ε / (1 + e^ε)``, capped at 1. Small means the guesses were too good for ε.
    """
    m, r, v = _check_counts(m, r, v)
    delta = _check_delta(delta)
    if isinstance(epsilon, bool) or not isinstance(epsilon, int | float) or not epsilon >= 0:
        raise ValueError("epsilon: must be a non-negative number")
    # 1/(1+e^−ε) rather than e^ε/(1+e^ε): the same q, without overflow for large ε.
    q = 1.0 / (1.0 + math.exp(-epsilon)) if math.isfinite(epsilon) else 1.0
    beta = float(binom.sf(v - 1, r, q))  # P[Binomial(r, q) ≥ v]
    alpha = 0.0
    if v > 0 and delta > 0:
        # P[v > B ≥ v − i] for i = 1..v: the pmf summed downwards from v − 1.
        window = numpy.cumsum(binom.pmf(numpy.arange(v - 1, -1, -1), r, q))
        alpha = float(numpy.max(window / numpy.arange(1, v + 1)))
    return min(beta + alpha * delta * 2 * m, 1.0)


def epsilon_lower_bound(*, m: int, r: int, v: int, delta: float, confidence: float = CONFIDENCE) -> float:
    """Largest ε whose p-value (:func:`p_value_dp_audit`) is at most ``1 − confidence``; 0 if none.

    The p-value grows with ε (a larger ε allows more correct guesses), so every ε up to
    the returned one is rejected: with probability ``confidence`` the true ε exceeds it.
    Found by bisection, returning the rejected end, so the bound is never overstated.
    """
    m, r, v = _check_counts(m, r, v)
    delta = _check_delta(delta)
    level = 1.0 - _check_confidence(confidence)

    def rejected(eps: float) -> bool:
        return p_value_dp_audit(m=m, r=r, v=v, epsilon=eps, delta=delta) <= level

    if not rejected(0.0):
        return 0.0
    low, high = 0.0, 1.0
    while rejected(high):
        # Terminates: as ε → ∞ the binomial tail P[B ≥ v] tends to 1.
        low, high = high, 2.0 * high
    for _ in range(_BISECTION_STEPS):
        middle = (low + high) / 2.0
        if rejected(middle):
            low = middle
        else:
            high = middle
    return low


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError("seed: must be a non-negative integer")
    return seed


def _check_n_canaries(n_canaries: object) -> int:
    if isinstance(n_canaries, bool) or not isinstance(n_canaries, int) or n_canaries < 2:
        raise ValueError("n_canaries: must be an integer of at least 2")
    return n_canaries


def canary_examples(
    *,
    n_canaries: int,
    n_features: int,
    n_classes: int,
    seed: int,
    low: float | Sequence[float] | None = None,
    high: float | Sequence[float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_canaries`` input-space canaries (X float32 ``[m, n_features]``, y int64 ``[m]``).

    Features are uniform within ``[low, high]`` per feature when bounds are given (e.g.
    the schema's bounds, so canaries look like valid rows), else standard normal. Labels
    are uniform over the classes, independent of the features: a canary's label can only
    be fitted by memorising that canary, which is the leakage DP bounds.
    """
    n_canaries = _check_n_canaries(n_canaries)
    seed = _check_seed(seed)
    if isinstance(n_features, bool) or not isinstance(n_features, int) or n_features < 1:
        raise ValueError("n_features: must be a positive integer")
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
        raise ValueError("n_classes: must be an integer of at least 2")
    if (low is None) != (high is None):
        raise ValueError("low: give both low and high, or neither")
    rng = numpy.random.default_rng(numpy.random.SeedSequence([seed, _FEATURE_STREAM]))
    if low is None:
        X = rng.standard_normal((n_canaries, n_features))
    else:
        lo = _bounds(low, n_features, "low")
        hi = _bounds(high, n_features, "high")
        if (hi < lo).any():
            raise ValueError("high: every upper bound must be at least its lower bound")
        X = lo + (hi - lo) * rng.random((n_canaries, n_features))
    y = rng.integers(0, n_classes, size=n_canaries)
    return torch.from_numpy(X.astype(numpy.float32)), torch.from_numpy(y.astype(numpy.int64))


def _bounds(value: object, n_features: int, name: str) -> numpy.ndarray:
    try:
        array = numpy.asarray(value, dtype=numpy.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: must be a number or one number per feature")
    if array.ndim == 0:
        array = numpy.full(n_features, float(array))
    if array.shape != (n_features,):
        raise ValueError(f"{name}: must be a number or one number per feature ({n_features})")
    if not numpy.isfinite(array).all():
        raise ValueError(f"{name}: bounds must be finite")
    return array


def canary_inclusion(*, n_canaries: int, seed: int) -> numpy.ndarray:
    """Which canaries join the training data: each independently with probability ½ (bool ``[m]``).

    Independent of the features' stream, so the canaries themselves carry no hint of it.
    """
    n_canaries = _check_n_canaries(n_canaries)
    seed = _check_seed(seed)
    rng = numpy.random.default_rng(numpy.random.SeedSequence([seed, _INCLUSION_STREAM]))
    return rng.random(n_canaries) < 0.5


def default_guess_counts(n_canaries: int) -> list[int]:
    """The pre-declared grid for ``m`` canaries: ``GUESS_FRACTIONS`` of m per side, at least 1."""
    n_canaries = _check_n_canaries(n_canaries)
    return sorted({max(1, min(n_canaries // 2, int(f * n_canaries))) for f in GUESS_FRACTIONS})


def one_run_audit(
    *,
    scores: Sequence[float] | numpy.ndarray,
    included: Sequence[bool] | numpy.ndarray,
    delta: float,
    confidence: float = CONFIDENCE,
    guess_counts: Sequence[int] | None = None,
) -> CanaryAuditResult:
    """ε lower bound from canary scores (higher = more member-like) and the true inclusion.

    For every ``k`` in ``guess_counts`` (default :func:`default_guess_counts`), guess
    "included" for the ``k`` highest scores and "excluded" for the ``k`` lowest. Ties are
    broken by canary index, which is independent of inclusion.

    Why a Bonferroni correction: Steinke et al.'s guarantee holds for guesses computed from
    the model alone. Choosing ``k`` by how many guesses turned out right looks at the
    inclusion bits themselves, and reporting the best of several ``k`` at 95% each would
    overstate the confidence. So the grid is fixed in advance and each ``k`` is tested at
    ``1 − (1 − confidence)/len(grid)``: by the union bound, the chance that any of them
    (hence the maximum) exceeds the true ε is at most ``1 − confidence``.
    """
    s = numpy.asarray(scores, dtype=numpy.float64)
    inc = numpy.asarray(included)
    if s.ndim != 1 or len(s) < 2:
        raise ValueError("scores: must be a 1-D array of at least 2 canary scores")
    if numpy.isnan(s).any():
        raise ValueError("scores: contains NaN")
    if inc.shape != s.shape:
        raise ValueError("included: must hold one flag per score")
    if inc.dtype != numpy.bool_:
        if not numpy.isin(inc, (0, 1)).all():
            raise ValueError("included: must be booleans")
        inc = inc.astype(bool)
    delta = _check_delta(delta)
    confidence = _check_confidence(confidence)
    m = len(s)
    if guess_counts is None:
        grid = default_guess_counts(m)
    else:
        grid = []
        for k in guess_counts:
            if isinstance(k, bool) or not isinstance(k, int | numpy.integer) or not 1 <= k <= m // 2:
                raise ValueError(f"guess_counts: each must be an integer in 1..{m // 2} (m/2)")
            grid.append(int(k))
        if not grid or len(set(grid)) != len(grid):
            raise ValueError("guess_counts: must be a non-empty list of distinct integers")
        grid = sorted(grid)
    per_k_confidence = 1.0 - (1.0 - confidence) / len(grid)
    # Stable sort of −score: descending scores, ties in index order.
    order = numpy.argsort(-s, kind="stable")
    per_guess_count = []
    for k in grid:
        correct = int(inc[order[:k]].sum()) + int((~inc[order[m - k :]]).sum())
        bound = epsilon_lower_bound(m=m, r=2 * k, v=correct, delta=delta, confidence=per_k_confidence)
        per_guess_count.append({"k": k, "n_guesses": 2 * k, "n_correct": correct, "epsilon_lower_bound": bound})
    # The first k attaining the maximum: ties favour fewer guesses, deterministically.
    best = max(per_guess_count, key=lambda row: row["epsilon_lower_bound"])
    notes = [
        f"{len(grid)} guess counts k per side ({', '.join(map(str, grid))}) fixed in advance; each tested at "
        f"{per_k_confidence:.4g} confidence (Bonferroni), so the reported maximum holds at {confidence:.4g}."
    ]
    if best["epsilon_lower_bound"] == 0.0:
        notes.append(
            "No guess count did better than chance allows for ε = 0: the audit found no evidence of leakage. "
            "That is not evidence of privacy; a stronger attack may still find some."
        )
    return CanaryAuditResult(
        epsilon_lower_bound=best["epsilon_lower_bound"],
        confidence=confidence,
        delta=delta,
        n_canaries=m,
        n_guesses=best["n_guesses"],
        n_correct=best["n_correct"],
        guess_counts=grid,
        per_guess_count=per_guess_count,
        n_included=int(inc.sum()),
        notes=notes,
    )


def canary_audit_train(
    *,
    X_train: torch.Tensor,
    y_train: torch.Tensor,
    n_classes: int,
    config: TrainConfig,
    n_canaries: int,
    seed: int,
    X_val: torch.Tensor | None = None,
    y_val: torch.Tensor | None = None,
    clipping: str = "auto",
    low: float | Sequence[float] | None = None,
    high: float | Sequence[float] | None = None,
    guess_counts: Sequence[int] | None = None,
    confidence: float = CONFIDENCE,
) -> tuple[CanaryAuditResult, float, dp_train.TrainResult]:
    """Train one audit run of ``config`` with canaries and bound its ε from below.

    The included canaries are inserted at random positions of a copy of the training
    data (``low``/``high`` bound their features, see :func:`canary_examples`); the run
    uses ``config`` unchanged: a given ``noise_multiplier`` is used as is, a
    ``target_epsilon`` is met on the padded data as the production run meets it on its
    own (so ``target_delta`` must also be below 1/N for the padded N). Returns ``(audit, claimed ε, TrainResult)``:
    the claimed ε is the accountant's for this run at its δ (``math.inf`` when not
    private), and ``audit.flagged`` is set when the lower bound exceeds it. The audit
    model has seen the canaries and is not for publication.
    """
    X_train, y_train = dp_train.check_tensors(X=X_train, y=y_train, n_classes=n_classes, name="train")
    n_canaries = _check_n_canaries(n_canaries)
    seed = _check_seed(seed)
    X_can, y_can = canary_examples(
        n_canaries=n_canaries, n_features=X_train.shape[1], n_classes=n_classes, seed=seed, low=low, high=high
    )
    included = canary_inclusion(n_canaries=n_canaries, seed=seed)
    chosen = torch.from_numpy(numpy.flatnonzero(included))
    X_all = torch.cat([X_train, X_can.index_select(0, chosen)])
    y_all = torch.cat([y_train, y_can.index_select(0, chosen)])
    # Random positions: Poisson sampling treats rows alike, but nothing downstream
    # should be able to tell canaries by where they sit.
    rng = numpy.random.default_rng(numpy.random.SeedSequence([seed, _PLACEMENT_STREAM]))
    permutation = torch.from_numpy(rng.permutation(len(X_all)))
    X_all, y_all = X_all.index_select(0, permutation), y_all.index_select(0, permutation)

    result = dp_train.train(
        X_train=X_all, y_train=y_all, X_val=X_val, y_val=y_val, n_classes=n_classes, config=config, clipping=clipping
    )
    model = dp_train.load_model(
        state_dict=result.state_dict, n_features=X_train.shape[1], n_classes=n_classes, config=config
    )
    losses = mia.per_example_losses(models=[model], X=X_can, y=y_can)
    delta = float(config.target_delta)
    audit = one_run_audit(
        scores=-losses, included=included, delta=delta, confidence=confidence, guess_counts=guess_counts
    )
    claimed = float(result.epsilon) if config.private else math.inf
    audit.claimed_epsilon = claimed
    audit.flagged = audit.epsilon_lower_bound > claimed
    if audit.flagged:
        audit.notes.append(
            f"FLAGGED: the lower bound {audit.epsilon_lower_bound:.3g} exceeds the claimed ε = {claimed:.3g} "
            f"at δ = {delta:g}; the claim is false for this implementation (broken noise, clipping, sampling or "
            "accounting), barring the audit's 1 − confidence chance of error."
        )
    elif config.private:
        audit.notes.append(
            f"The lower bound {audit.epsilon_lower_bound:.3g} is below the claimed ε = {claimed:.3g}: consistent "
            "with the claim. A gap is expected for a one-run black-box audit and does not show the claim is tight."
        )
    return audit, claimed, result
