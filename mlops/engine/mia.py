"""Loss-threshold membership-inference attack (Yeom et al., 2018).

The attacker guesses "member" when an example's loss under the model is below a
threshold: models fit their training records more tightly than unseen ones, and the
gap is exactly what differential privacy bounds. Sweeping the threshold gives a ROC
curve; we report its AUC, the advantage ``max(TPR − FPR)`` (Yeom et al.'s membership
advantage), and the TPR at 1% and 0.1% FPR — the low-FPR regime Carlini et al. (2022)
argue is what matters for the people actually exposed.

Honest numerics (issue 15, item 1):

* losses are float64 cross-entropies computed from the logits, in a form that does not
  round to 0 for confident predictions (float32 softmax probabilities gave 79–81% of an
  over-fitted model's examples a loss of exactly 0, i.e. ties no threshold can split);
* every figure carries a 95% percentile-bootstrap interval (members and non-members
  resampled independently, seeded, so an audit is reproducible);
* the TPR at an FPR ``f`` is reported only when there are at least ``1/f`` non-members,
  the fewest for which a single false positive is an FPR of ``f`` or less; below that the
  figure is ``None`` and a note says why.

Every attack shares those figures through :func:`score_attack` (higher score = more
member-like): the loss attack scores −loss, LiRA (``mlops.engine.lira``) a per-record
likelihood ratio of the logit-scaled confidence :func:`logit_confidence`, the explanation
attack minus the L1 norm of a record's attributions (``mlops.engine.explain.attribution_norms``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy
from scipy.stats import rankdata

MAX_ROC_POINTS = 200
BOOTSTRAP_RESAMPLES = 1000
CONFIDENCE = 0.95
# Resamples evaluated at once: bounds memory to a few (chunk × pooled examples) arrays.
_BOOTSTRAP_CHUNK = 50
# The bootstrap's random stream is SeedSequence([seed, _BOOTSTRAP_STREAM]), independent
# of the stream that chose the members and non-members from the same seed.
_BOOTSTRAP_STREAM = 1
# FPRs at which the ROC's pointwise bootstrap band is drawn (where the non-members suffice).
ROC_BAND_FPRS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
# (result attribute, FPR, how it is written)
FPR_TARGETS = (("tpr_at_1pct_fpr", 0.01, "1%"), ("tpr_at_01pct_fpr", 0.001, "0.1%"))


def min_nonmembers_for(fpr: float) -> int:
    """Fewest non-members for which a TPR at ``fpr`` is reported (one false positive ≤ fpr)."""
    return math.ceil(1.0 / fpr - 1e-9)


@dataclass
class MIAResult:
    auc: float
    advantage: float
    tpr_at_1pct_fpr: float | None  # None: too few non-members to measure it (see notes)
    tpr_at_01pct_fpr: float | None
    n_members: int
    n_nonmembers: int
    roc: list[list[float]]  # [[fpr, tpr], ...] from (0, 0) to (1, 1)
    auc_low: float | None = None
    auc_high: float | None = None
    advantage_low: float | None = None
    advantage_high: float | None = None
    tpr_at_1pct_fpr_low: float | None = None
    tpr_at_1pct_fpr_high: float | None = None
    tpr_at_01pct_fpr_low: float | None = None
    tpr_at_01pct_fpr_high: float | None = None
    bootstrap_resamples: int = 0
    notes: list[str] = field(default_factory=list)
    attack: str = "loss"  # "loss" (Yeom et al.), "lira" (Carlini et al.) or "explanation" (Shokri et al.)
    n_references: int = 0  # reference models LiRA trained; 0 for the loss attack
    # [[fpr, tpr_low, tpr_high], ...]: the pointwise 95% bootstrap band of the ROC at ROC_BAND_FPRS.
    roc_band: list[list[float]] = field(default_factory=list)


def per_example_losses(*, models: list, X, y) -> numpy.ndarray:
    """Cross-entropy of every example under a model or a SISA ensemble, in float64.

    Each model runs in float64 (on a copy; the caller's model is untouched). A single
    model's loss is ``−log_softmax(logits)[y]`` written as
    ``softplus(logsumexp_{j≠y}(z_j − z_y))``: the same number, but it stays non-zero for
    margins up to ~700 logits, where ``log_softmax`` itself rounds to 0 above ~37 in
    float64 (and the old ``−log(softmax)`` in float32 above ~17).
    A SISA ensemble predicts the mean of its shard models' probabilities
    (``sisa.ensemble_predict_proba``), so its loss is ``−log(mean_k p_k[y])``, computed
    from the shard losses without forming the rounded probabilities.
    """
    import torch
    import torch.nn.functional as F

    if not models:
        raise ValueError("models: the ensemble has no models")
    X = torch.as_tensor(X).to(torch.float64)
    y = torch.as_tensor(numpy.asarray(y)).to(torch.int64)
    if len(X) == 0:
        return numpy.zeros(0)
    losses = []
    with torch.no_grad():
        for model in models:
            m = copy.deepcopy(model).double().eval()
            parts = []
            for s in range(0, len(X), 4096):
                logits = m(X[s : s + 4096])
                ys = y[s : s + 4096]
                margins = logits - logits.gather(1, ys[:, None])
                margins.scatter_(1, ys[:, None], -math.inf)
                parts.append(F.softplus(torch.logsumexp(margins, dim=1)))
            losses.append(torch.cat(parts))
    stacked = torch.stack(losses)  # [K, N]
    if len(models) == 1:
        return stacked[0].numpy()
    k = len(models)
    # −log(mean p): in log space when the mean probability is at most ½ …
    log_space = math.log(k) - torch.logsumexp(-stacked, dim=0)
    # … and through 1 − p = −expm1(−loss) when it is above, where log space rounds to 0.
    near_one = -torch.log1p(-(-torch.expm1(-stacked)).mean(0))
    return torch.where(near_one < math.log(2), near_one, log_space).numpy()


# Bounds of the logit-scaled confidence. −log of the smallest positive float64 (~744.4) is
# the largest φ a float64 loss can express (a smaller loss is 0); losses are clipped to
# [that float, PHI_LIMIT] so φ stays finite and in the losses' order, within about
# [−745, 744.4], whatever the model does: LiRA fits Gaussians to φ, and one infinity
# would make a whole example's mean infinite.
_SMALLEST_LOSS = float(numpy.nextafter(0.0, 1.0))
PHI_LIMIT = 745.0


def logit_confidence(*, losses: numpy.ndarray) -> numpy.ndarray:
    """LiRA's logit-scaled confidence φ = log(p / (1 − p)) of the true class, from losses.

    ``p = exp(−L)`` is the probability the model (or SISA ensemble) gives the true label,
    so ``φ = −L − log(1 − e^{−L}) = −L − log(−expm1(−L))``: no probability is ever formed,
    which keeps φ exact for confident predictions where ``p`` rounds to 1 (Carlini et al.
    2022 use φ because it is close to Gaussian across models, which the likelihood-ratio
    test assumes). φ is positive when the true class is favoured; it decreases as the
    loss grows. Losses of exactly 0 (margins beyond ~745 logits) give ~744.4 and losses
    above ``PHI_LIMIT`` give ``−PHI_LIMIT``: finite values, in the same order as the losses.
    """
    L = numpy.asarray(losses, dtype=numpy.float64)
    if numpy.isnan(L).any():
        raise ValueError("losses: contain NaN")
    if (L < 0).any():
        raise ValueError("losses: cross-entropy losses cannot be negative")
    L = numpy.clip(L, _SMALLEST_LOSS, PHI_LIMIT)
    return -L - numpy.log(-numpy.expm1(-L))


def roc_curve(*, member_scores: numpy.ndarray, nonmember_scores: numpy.ndarray) -> tuple[numpy.ndarray, numpy.ndarray]:
    """(FPR, TPR) for "member when score ≥ t" at every distinct threshold t, highest first."""
    scores = numpy.concatenate([member_scores, nonmember_scores])
    is_member = numpy.concatenate([numpy.ones(len(member_scores)), numpy.zeros(len(nonmember_scores))])
    order = numpy.argsort(-scores, kind="mergesort")
    scores, is_member = scores[order], is_member[order]
    # Tied scores cannot be separated by any threshold: keep only the last index of each run.
    distinct = numpy.flatnonzero(numpy.diff(scores)) if len(scores) else numpy.zeros(0, dtype=int)
    ends = numpy.concatenate([distinct, [len(scores) - 1]]) if len(scores) else numpy.zeros(0, dtype=int)
    tp = numpy.cumsum(is_member)[ends]
    fp = numpy.cumsum(1 - is_member)[ends]
    tpr = numpy.concatenate([[0.0], tp / max(len(member_scores), 1)])
    fpr = numpy.concatenate([[0.0], fp / max(len(nonmember_scores), 1)])
    return fpr, tpr


def loss_threshold_attack(
    *,
    member_losses: numpy.ndarray,
    nonmember_losses: numpy.ndarray,
    bootstrap_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> MIAResult:
    """Attack with score = −loss; needs at least one member and one non-member.

    ``bootstrap_resamples`` = 0 skips the intervals; ``seed`` (≥ 0) makes them reproducible.
    """
    members = numpy.asarray(member_losses, dtype=numpy.float64).ravel()
    nonmembers = numpy.asarray(nonmember_losses, dtype=numpy.float64).ravel()
    if len(members) == 0:
        raise ValueError("member_losses: the attack needs at least one member")
    if len(nonmembers) == 0:
        raise ValueError("nonmember_losses: the attack needs at least one non-member")
    # An infinite or NaN loss is a confident mistake: score_attack ranks it as the least
    # member-like (−inf and NaN scores both become the lowest finite score).
    return score_attack(
        member_scores=-members, nonmember_scores=-nonmembers, bootstrap_resamples=bootstrap_resamples, seed=seed
    )


# What a chance-level AUC interval means, per attack: the loss attack is the weakest there
# is, so its null result says little. LiRA's says more about per-person leaks, but with
# few reference models it can miss a small leak spread over everyone that the loss
# attack's single threshold sees (measured at ε = 1), so neither is the guarantee: ε is.
_CHANCE_NOTES = {
    "loss": (
        "The AUC interval includes 0.5: this loss attack cannot tell members from non-members here. "
        "That is weak evidence of privacy; a stronger attack may still find leakage."
    ),
    "lira": (
        "The AUC interval includes 0.5: LiRA with reference models cannot tell members from non-members here. "
        "That is evidence of privacy, not proof: with few reference models LiRA can miss a small leak that the "
        "loss attack sees, so read both; ε is the guarantee."
    ),
    "explanation": (
        "The AUC interval includes 0.5: scoring records by the size of their explanations (attribution norm) "
        "cannot tell members from non-members here. Weak evidence that per-decision explanations leak little; "
        "a stronger attack may still find leakage."
    ),
}
ATTACKS = tuple(_CHANCE_NOTES)


def score_attack(
    *,
    member_scores: numpy.ndarray,
    nonmember_scores: numpy.ndarray,
    bootstrap_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    attack: str = "loss",
) -> MIAResult:
    """AUC, advantage, TPR at the low FPRs and their bootstrap intervals for any attack's scores.

    A higher score means "more likely a member"; the attack guesses member when the score
    is at or above a threshold, and every threshold is swept. ``attack`` names the attack
    in the result and chooses the note written when the AUC interval includes 0.5.
    NaN and −inf scores rank as the least member-like, +inf as the most (as the largest
    finite score, so that infinities still tie with each other rather than producing NaN
    differences). ``bootstrap_resamples`` = 0 skips the intervals; ``seed`` (≥ 0) makes them
    reproducible.
    """
    members = numpy.asarray(member_scores, dtype=numpy.float64).ravel()
    nonmembers = numpy.asarray(nonmember_scores, dtype=numpy.float64).ravel()
    if len(members) == 0:
        raise ValueError("member_scores: the attack needs at least one member")
    if len(nonmembers) == 0:
        raise ValueError("nonmember_scores: the attack needs at least one non-member")
    if isinstance(bootstrap_resamples, bool) or not isinstance(bootstrap_resamples, int) or bootstrap_resamples < 0:
        raise ValueError("bootstrap_resamples: must be a non-negative integer")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError("seed: must be a non-negative integer")
    if attack not in _CHANCE_NOTES:
        raise ValueError(f"attack: must be one of {', '.join(ATTACKS)}")
    if not (numpy.isfinite(members).all() and numpy.isfinite(nonmembers).all()):
        big = numpy.finfo(numpy.float64).max
        members = numpy.nan_to_num(members, nan=-big, posinf=big, neginf=-big)
        nonmembers = numpy.nan_to_num(nonmembers, nan=-big, posinf=big, neginf=-big)
    member_scores, nonmember_scores = members, nonmembers

    # AUC as the Mann–Whitney statistic: P(score_member > score_nonmember) + ½ P(tie).
    ranks = rankdata(numpy.concatenate([member_scores, nonmember_scores]))
    n_m, n_n = len(members), len(nonmembers)
    auc = (ranks[:n_m].sum() - n_m * (n_m + 1) / 2) / (n_m * n_n)

    fpr, tpr = roc_curve(member_scores=member_scores, nonmember_scores=nonmember_scores)
    result = MIAResult(
        auc=float(auc),
        advantage=float(numpy.max(tpr - fpr)),
        tpr_at_1pct_fpr=None,
        tpr_at_01pct_fpr=None,
        n_members=n_m,
        n_nonmembers=n_n,
        roc=_thin(fpr, tpr),
        bootstrap_resamples=bootstrap_resamples,
        attack=attack,
    )
    reported = []
    for name, target, shown in FPR_TARGETS:
        needed = min_nonmembers_for(target)
        if n_n >= needed:
            setattr(result, name, _tpr_at(fpr, tpr, target))
            reported.append((name, target))
        else:
            result.notes.append(
                f"TPR at {shown} FPR not reported: {shown} FPR needs ≥ {needed:,} non-members; this audit had {n_n:,}."
            )
    if bootstrap_resamples:
        # The band is drawn only where the non-members can measure the FPR (≥ 1/FPR of them).
        band = [f for f in ROC_BAND_FPRS if n_n >= min_nonmembers_for(f)]
        intervals = bootstrap_intervals(
            member_scores=member_scores, nonmember_scores=nonmember_scores, resamples=bootstrap_resamples,
            seed=seed, fprs=sorted({t for _, t in reported} | set(band)),
        )
        result.roc_band = [[f, round(intervals[f][0], 6), round(intervals[f][1], 6)] for f in band]
        result.auc_low, result.auc_high = intervals["auc"]
        result.advantage_low, result.advantage_high = intervals["advantage"]
        for name, target in reported:
            setattr(result, f"{name}_low", intervals[target][0])
            setattr(result, f"{name}_high", intervals[target][1])
        if result.auc_low <= 0.5 <= result.auc_high:
            result.notes.append(_CHANCE_NOTES[attack])
    return result


def bootstrap_intervals(
    *,
    member_scores: numpy.ndarray,
    nonmember_scores: numpy.ndarray,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    fprs: list[float] | tuple[float, ...] = (),
    confidence: float = CONFIDENCE,
) -> dict:
    """Percentile-bootstrap intervals of AUC, advantage and the TPR at each FPR in ``fprs``.

    Members and non-members are resampled independently, with replacement, at their own
    sizes. All resamples share one sort of the pooled scores: a resample is a vector of
    multiplicities, so its ROC is a cumulative sum of weights in that fixed order, and its
    AUC the trapezoid under it (equal to the Mann–Whitney AUC with ties counted ½).
    Returns ``{"auc": (low, high), "advantage": (low, high), fpr: (low, high), ...}``.
    """
    m = numpy.asarray(member_scores, dtype=numpy.float64).ravel()
    n = numpy.asarray(nonmember_scores, dtype=numpy.float64).ravel()
    n_m, n_n = len(m), len(n)
    if n_m == 0 or n_n == 0:
        raise ValueError("member_scores: the bootstrap needs at least one member and one non-member")
    if resamples < 1:
        raise ValueError("resamples: must be at least 1")
    scores = numpy.concatenate([m, n])
    order = numpy.argsort(-scores, kind="mergesort")
    sorted_scores = scores[order]
    ends = numpy.concatenate([numpy.flatnonzero(numpy.diff(sorted_scores)), [len(scores) - 1]])
    rng = numpy.random.default_rng(numpy.random.SeedSequence([seed, _BOOTSTRAP_STREAM]))
    stats: dict = {"auc": [], "advantage": [], **{f: [] for f in fprs}}
    for start in range(0, resamples, _BOOTSTRAP_CHUNK):
        b = min(_BOOTSTRAP_CHUNK, resamples - start)
        weights_m = numpy.zeros((b, n_m + n_n))
        weights_n = numpy.zeros((b, n_m + n_n))
        weights_m[:, :n_m] = _multiplicities(rng, n_m, b)
        weights_n[:, n_m:] = _multiplicities(rng, n_n, b)
        zeros = numpy.zeros((b, 1))
        tpr = numpy.hstack([zeros, numpy.cumsum(weights_m[:, order], axis=1)[:, ends] / n_m])
        fpr = numpy.hstack([zeros, numpy.cumsum(weights_n[:, order], axis=1)[:, ends] / n_n])
        stats["auc"].append((numpy.diff(fpr, axis=1) * (tpr[:, 1:] + tpr[:, :-1]) / 2).sum(axis=1))
        stats["advantage"].append((tpr - fpr).max(axis=1))
        for f in fprs:
            stats[f].append(numpy.where(fpr <= f + 1e-12, tpr, 0.0).max(axis=1))
    tail = (1 - confidence) / 2
    return {
        key: tuple(float(q) for q in numpy.quantile(numpy.concatenate(values), [tail, 1 - tail]))
        for key, values in stats.items()
    }


def _multiplicities(rng: numpy.random.Generator, n: int, b: int) -> numpy.ndarray:
    """``b`` rows: how often each of ``n`` items is drawn in ``n`` draws with replacement."""
    draws = rng.integers(0, n, size=(b, n)) + (numpy.arange(b) * n)[:, None]
    return numpy.bincount(draws.ravel(), minlength=b * n).reshape(b, n)


def figure_text(value: float | None, low: float | None, high: float | None, *, decimals: int = 2) -> str:
    """``0.52 (95% CI 0.44–0.60)`` for people, rounded; ``not reported`` for a figure left out."""
    if value is None:
        return "not reported"
    if low is None or high is None:
        return f"{value:.{decimals}f} (no interval: computed before intervals were recorded)"
    return f"{value:.{decimals}f} (95% CI {low:.{decimals}f}–{high:.{decimals}f})"


def _tpr_at(fpr: numpy.ndarray, tpr: numpy.ndarray, max_fpr: float) -> float:
    """Best TPR achievable by a threshold whose FPR does not exceed ``max_fpr``."""
    allowed = fpr <= max_fpr + 1e-12
    return float(tpr[allowed].max()) if allowed.any() else 0.0


def _thin(fpr: numpy.ndarray, tpr: numpy.ndarray) -> list[list[float]]:
    """At most ~MAX_ROC_POINTS points for plotting, always including both ends and the
    points that define the reported low-FPR figures."""
    n = len(fpr)
    if n <= MAX_ROC_POINTS:
        keep = numpy.arange(n)
    else:
        grid = numpy.linspace(0, n - 1, MAX_ROC_POINTS - 3).round().astype(int)
        low = [int(numpy.flatnonzero(fpr <= bound + 1e-12)[-1]) for bound in (0.001, 0.01)]
        keep = numpy.unique(numpy.concatenate([grid, low, [0, n - 1]]))
    return [[round(float(fpr[i]), 6), round(float(tpr[i]), 6)] for i in keep]
