"""Loss-threshold membership-inference attack (Yeom et al., 2018).

The attacker guesses "member" when an example's loss under the model is below a
threshold: models fit their training records more tightly than unseen ones, and the
gap is exactly what differential privacy bounds. Sweeping the threshold gives a ROC
curve; we report its AUC, the advantage ``max(TPR − FPR)`` (Yeom et al.'s membership
advantage), and the TPR at 1% and 0.1% FPR — the low-FPR regime Carlini et al. (2022)
argue is what matters for the people actually exposed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy
from scipy.stats import rankdata

MAX_ROC_POINTS = 200


@dataclass
class MIAResult:
    auc: float
    advantage: float
    tpr_at_1pct_fpr: float
    tpr_at_01pct_fpr: float
    n_members: int
    n_nonmembers: int
    roc: list[list[float]]  # [[fpr, tpr], ...] from (0, 0) to (1, 1)


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


def loss_threshold_attack(*, member_losses: numpy.ndarray, nonmember_losses: numpy.ndarray) -> MIAResult:
    """Attack with score = −loss; needs at least one member and one non-member."""
    members = numpy.asarray(member_losses, dtype=numpy.float64).ravel()
    nonmembers = numpy.asarray(nonmember_losses, dtype=numpy.float64).ravel()
    if len(members) == 0:
        raise ValueError("member_losses: the attack needs at least one member")
    if len(nonmembers) == 0:
        raise ValueError("nonmember_losses: the attack needs at least one non-member")
    if not (numpy.isfinite(members).all() and numpy.isfinite(nonmembers).all()):
        # An infinite loss is a confident mistake; rank it as the least member-like.
        members = numpy.nan_to_num(members, nan=numpy.inf, posinf=numpy.finfo(numpy.float64).max)
        nonmembers = numpy.nan_to_num(nonmembers, nan=numpy.inf, posinf=numpy.finfo(numpy.float64).max)
    member_scores, nonmember_scores = -members, -nonmembers

    # AUC as the Mann–Whitney statistic: P(score_member > score_nonmember) + ½ P(tie).
    ranks = rankdata(numpy.concatenate([member_scores, nonmember_scores]))
    n_m, n_n = len(members), len(nonmembers)
    auc = (ranks[:n_m].sum() - n_m * (n_m + 1) / 2) / (n_m * n_n)

    fpr, tpr = roc_curve(member_scores=member_scores, nonmember_scores=nonmember_scores)
    return MIAResult(
        auc=float(auc),
        advantage=float(numpy.max(tpr - fpr)),
        tpr_at_1pct_fpr=_tpr_at(fpr, tpr, 0.01),
        tpr_at_01pct_fpr=_tpr_at(fpr, tpr, 0.001),
        n_members=n_m,
        n_nonmembers=n_n,
        roc=_thin(fpr, tpr),
    )


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
