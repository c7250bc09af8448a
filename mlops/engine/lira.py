"""Online LiRA: membership inference with reference models (Carlini et al. 2022,
"Membership Inference Attacks From First Principles").

The loss attack asks "is this person's loss low?", with one threshold for everyone. But
some records are easy (every model fits them) and some are hard (no model does unless it
trained on them), so one threshold confuses easy non-members with members. LiRA asks, per
person: "is the target model's confidence on this record more like that of models that
trained on it, or of models that did not?"

1. The pool is the audited people: the target's members ∪ non-members. ``R`` reference
   models (R even) are trained with the target's configuration, each on a random half of
   the pool, such that every person is IN for exactly R/2 references and OUT for the
   other R/2 (Carlini's balanced split).
2. Every pool record is scored under every reference with the logit-scaled confidence
   ``φ = log(p / (1 − p))`` of its true label (:func:`mia.logit_confidence`, from float64
   losses, so a SISA ensemble is scored exactly as the audit scores it).
3. Per person, Gaussians are fitted to the IN and the OUT φ (per-person means; with
   ``fixed_variance``, one variance shared by all IN fits and one by all OUT fits, which
   Carlini et al. recommend below 64 references: 4 values per person cannot estimate a
   variance). The score is the log likelihood ratio
   ``log N(φ_target; μ_in, σ_in²) − log N(φ_target; μ_out, σ_out²)``: above 0 when the
   target behaves as if it trained on the record.
4. The scores go through :func:`mia.score_attack`, so AUC, advantage, TPR at 1% / 0.1%
   FPR, their bootstrap intervals and the "too few non-members" rule are the loss
   attack's.

Cost: R references are R trainings of the target's configuration (for a SISA target, R
SISA trainings), each on about half the pool, plus R + 1 forward passes over the pool,
which are negligible beside the training. With the pool = the target's training set ∪ as
many non-members, each reference trains on about as many records as the target, so an
audit with 8 references costs about 8 training runs, plus a fixed ~0.3 s for 4,096 + 4,096
records (the scoring and, mostly, the 1,000-resample bootstrap) that only shows beside
sub-second trainings. ``benchmarks/bench_audit.py`` measures it: 8.1× one DP training of
an MLP 100→256→256→2 (1.0 s), 10.8× for an MLP 10→64→2 (0.14 s). The loss attack costs
two forward passes and the same bootstrap. References are scored and dropped at once, so
memory holds one reference at a time.

When the target trained on more records than its members in the pool, the references
(trained on half the pool) fit their data somewhat more tightly than the target: the
audit is then a little less faithful, not wrong (OUT and IN are still compared alike).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy
import torch
from torch import nn

from mlops.engine import dp_train
from mlops.engine.mia import BOOTSTRAP_RESAMPLES, MIAResult, logit_confidence, per_example_losses, score_attack
from mlops.engine.spec import TrainConfig

# train_fn(X_in, y_in, r) -> the reference's model(s): one model, or a SISA ensemble's shards.
TrainFn = Callable[[torch.Tensor, torch.Tensor, int], list[nn.Module]]

DEFAULT_REFERENCES = 8
# Carlini et al. gain little beyond 256 references; more would only multiply the cost,
# and it keeps the per-reference seeds of reference_seed below the next audit seed's.
MAX_REFERENCES = 256
# Floor of every fitted σ, in logits: far below any real spread of φ between models, so
# it matters only for degenerate fits (identical φ, or R = 2 with one IN and one OUT
# value per person), where it keeps the ratio finite: |φ| ≤ ~745, so a squared
# standardised distance stays below ~(1490 / 1e-3)² ≈ 2e12.
SIGMA_FLOOR = 1e-3
# The inclusion's random stream is SeedSequence([seed, _INCLUSION_STREAM]), independent of
# the audit's sampling (the bare seed) and of its bootstrap (stream 1, see mia.py).
_INCLUSION_STREAM = 2


def reference_inclusion(*, n: int, n_references: int, seed: int) -> numpy.ndarray:
    """Which pool records each reference trains on: bool array ``[n_references, n]``.

    Every record is IN for exactly ``n_references / 2`` references, a random half drawn
    independently per record (Carlini's balanced split); a reference therefore trains on
    about ``n / 2`` records. Deterministic for ``seed``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError("n: must be a positive integer")
    if isinstance(n_references, bool) or not isinstance(n_references, int):
        raise ValueError("n_references: must be an even integer of at least 2")
    if n_references < 2 or n_references % 2:
        raise ValueError("n_references: must be an even integer of at least 2")
    if n_references > MAX_REFERENCES:
        raise ValueError(f"n_references: at most {MAX_REFERENCES}")
    _check_seed(seed)
    rng = numpy.random.default_rng(numpy.random.SeedSequence([seed, _INCLUSION_STREAM]))
    # A random permutation of the references per record, its first half IN.
    ranks = rng.random((n_references, n)).argsort(axis=0).argsort(axis=0)
    return ranks < n_references // 2


def reference_seed(*, seed: int, reference: int) -> int:
    """Training seed of reference ``reference`` in an audit seeded ``seed``: ``seed·1000 + r + 1``.

    Never the target's own seed, distinct per reference (r < MAX_REFERENCES < 1000), and
    the same whoever trains the reference, so an audit can be re-run exactly.
    """
    _check_seed(seed)
    if isinstance(reference, bool) or not isinstance(reference, int) or not 0 <= reference < MAX_REFERENCES:
        raise ValueError(f"reference: must lie in 0..{MAX_REFERENCES - 1}")
    return seed * 1000 + reference + 1


def single_model_train_fn(*, n_classes: int, config: TrainConfig) -> TrainFn:
    """A ``train_fn`` training one model per reference with :func:`dp_train.train`.

    Reference r uses ``config`` with its seed replaced by
    ``reference_seed(seed=config.seed, reference=r)``. A private configuration stays
    private: σ is derived again for the reference's own number of records, so each
    reference meets the target's (ε, δ) on its data, as the target did on its own.
    """
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
        raise ValueError("n_classes: must be an integer of at least 2")
    if not isinstance(config, TrainConfig):
        raise ValueError("config: must be a TrainConfig")

    def train_reference(X_in: torch.Tensor, y_in: torch.Tensor, r: int) -> list[nn.Module]:
        reference_config = dataclasses.replace(
            config, seed=reference_seed(seed=config.seed, reference=r), hidden_sizes=list(config.hidden_sizes)
        )
        result = dp_train.train(
            X_train=X_in, y_train=y_in, X_val=None, y_val=None, n_classes=n_classes, config=reference_config
        )
        model = dp_train.load_model(
            state_dict=result.state_dict, n_features=X_in.shape[1], n_classes=n_classes, config=reference_config
        )
        return [model]

    return train_reference


def train_references(
    *,
    X,
    y,
    inclusion: numpy.ndarray,
    train_fn: TrainFn,
    on_progress: Callable[[int, int], None] | None = None,
) -> numpy.ndarray:
    """φ of every pool record under every reference: float64 array ``[R, n]``.

    Reference r is ``train_fn(X_in, y_in, r)`` on the rows where ``inclusion[r]`` is True
    (as tensors, in pool order); it is scored on all n records and dropped.
    ``on_progress(done, total)`` is called after each reference.
    """
    X, y = _pool_tensors(X, y)
    inclusion = _check_inclusion(inclusion, n=len(X))
    if not callable(train_fn):
        raise ValueError("train_fn: must be callable as train_fn(X_in, y_in, r)")
    n_references = len(inclusion)
    phi = numpy.empty((n_references, len(X)), dtype=numpy.float64)
    for r in range(n_references):
        rows = torch.from_numpy(numpy.flatnonzero(inclusion[r]))
        models = train_fn(X.index_select(0, rows), y.index_select(0, rows), r)
        if not isinstance(models, list | tuple) or not models:
            raise ValueError(f"train_fn: returned no models for reference {r} (expected a non-empty list)")
        phi[r] = logit_confidence(losses=per_example_losses(models=list(models), X=X, y=y))
        del models  # one reference in memory at a time
        if on_progress is not None:
            on_progress(r + 1, n_references)
    return phi


def lira_scores(
    *,
    target_phi: numpy.ndarray,
    reference_phi: numpy.ndarray,
    inclusion: numpy.ndarray,
    fixed_variance: bool = True,
) -> numpy.ndarray:
    """Online LiRA's log likelihood ratio per pool record (higher = more member-like).

    ``log N(φ; μ_in, σ_in²) − log N(φ; μ_out, σ_out²)`` with μ_in, μ_out the mean φ of the
    record under the references that did (did not) train on it. With ``fixed_variance``
    σ_in² is the pooled within-record variance of all IN values (each record's deviations
    from its own μ_in, with one degree of freedom per record spent on its mean), likewise
    σ_out²; without it, each record's own sample variance. Every σ is at least
    ``SIGMA_FLOOR``, so the scores are always finite.
    """
    reference_phi = numpy.asarray(reference_phi, dtype=numpy.float64)
    if reference_phi.ndim != 2:
        raise ValueError("reference_phi: must be a 2-D array [references, records]")
    n_references, n = reference_phi.shape
    target_phi = numpy.asarray(target_phi, dtype=numpy.float64)
    if target_phi.shape != (n,):
        raise ValueError(f"target_phi: must hold one value per record ({n}), as reference_phi's columns")
    if not numpy.isfinite(target_phi).all():
        raise ValueError("target_phi: contains NaN or infinite values")
    if not numpy.isfinite(reference_phi).all():
        raise ValueError("reference_phi: contains NaN or infinite values")
    inclusion = _check_inclusion(inclusion, n=n)
    if len(inclusion) != n_references:
        raise ValueError(f"inclusion: has {len(inclusion)} references, reference_phi has {n_references}")
    if not isinstance(fixed_variance, bool):
        raise ValueError("fixed_variance: must be True or False")
    mu_in, sigma_in = _gaussian_fit(reference_phi, inclusion, fixed_variance=fixed_variance)
    mu_out, sigma_out = _gaussian_fit(reference_phi, ~inclusion, fixed_variance=fixed_variance)
    # Both log densities share −½·log 2π, which cancels.
    log_in = -0.5 * ((target_phi - mu_in) / sigma_in) ** 2 - numpy.log(sigma_in)
    log_out = -0.5 * ((target_phi - mu_out) / sigma_out) ** 2 - numpy.log(sigma_out)
    return log_in - log_out


def lira_attack(
    *,
    target_phi: numpy.ndarray,
    reference_phi: numpy.ndarray,
    inclusion: numpy.ndarray,
    is_member: numpy.ndarray,
    fixed_variance: bool = True,
    bootstrap_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> MIAResult:
    """LiRA's figures over the pool: ``is_member[i]`` says whether record i trained the target.

    Returns :func:`mia.score_attack`'s result with ``attack="lira"`` and
    ``n_references`` = R; ``seed`` seeds the bootstrap.
    """
    is_member = numpy.asarray(is_member)
    if is_member.dtype != numpy.bool_ or is_member.ndim != 1:
        raise ValueError("is_member: must be a 1-D boolean array, one entry per pool record")
    if not is_member.any():
        raise ValueError("is_member: the attack needs at least one member")
    if is_member.all():
        raise ValueError("is_member: the attack needs at least one non-member")
    scores = lira_scores(
        target_phi=target_phi, reference_phi=reference_phi, inclusion=inclusion, fixed_variance=fixed_variance
    )
    if len(is_member) != len(scores):
        raise ValueError(f"is_member: has {len(is_member)} entries, the pool has {len(scores)} records")
    result = score_attack(
        member_scores=scores[is_member],
        nonmember_scores=scores[~is_member],
        bootstrap_resamples=bootstrap_resamples,
        seed=seed,
        attack="lira",
    )
    result.n_references = int(numpy.shape(reference_phi)[0])
    result.notes.append(
        f"LiRA (online) with {result.n_references} reference models, each trained with the target's configuration "
        f"on a random half of the {len(is_member):,} audited people; every person was in the training data of "
        f"exactly half of them."
    )
    return result


def lira_audit(
    *,
    models: list[nn.Module],
    X,
    y,
    is_member: numpy.ndarray,
    train_fn: TrainFn,
    n_references: int = DEFAULT_REFERENCES,
    seed: int = 0,
    fixed_variance: bool = True,
    bootstrap_resamples: int = BOOTSTRAP_RESAMPLES,
    on_progress: Callable[[int, int], None] | None = None,
) -> MIAResult:
    """The whole attack on a target (one model or a SISA ensemble's shard models).

    The pool is ``X``, ``y`` (the audited members and non-members); ``seed`` chooses the
    references' halves and seeds the bootstrap; ``train_fn`` trains each reference with
    the target's configuration (see :func:`single_model_train_fn`). Costs
    ``n_references`` trainings.
    """
    X, y = _pool_tensors(X, y)
    _check_seed(seed)
    target_phi = logit_confidence(losses=per_example_losses(models=models, X=X, y=y))
    inclusion = reference_inclusion(n=len(X), n_references=n_references, seed=seed)
    reference_phi = train_references(X=X, y=y, inclusion=inclusion, train_fn=train_fn, on_progress=on_progress)
    return lira_attack(
        target_phi=target_phi,
        reference_phi=reference_phi,
        inclusion=inclusion,
        is_member=is_member,
        fixed_variance=fixed_variance,
        bootstrap_resamples=bootstrap_resamples,
        seed=seed,
    )


def _gaussian_fit(
    phi: numpy.ndarray, mask: numpy.ndarray, *, fixed_variance: bool
) -> tuple[numpy.ndarray, numpy.ndarray | float]:
    """Per-record mean of ``phi`` where ``mask`` holds, and σ (global or per record), floored."""
    counts = mask.sum(axis=0)
    mu = numpy.where(mask, phi, 0.0).sum(axis=0) / counts
    squares = numpy.where(mask, phi - mu, 0.0) ** 2
    if fixed_variance:
        dof = int(counts.sum()) - phi.shape[1]
        variance = float(squares.sum()) / dof if dof > 0 else 0.0
    else:
        variance = squares.sum(axis=0) / numpy.maximum(counts - 1, 1)
    return mu, numpy.maximum(numpy.sqrt(variance), SIGMA_FLOOR)


def _check_inclusion(inclusion: numpy.ndarray, *, n: int) -> numpy.ndarray:
    inclusion = numpy.asarray(inclusion)
    if inclusion.dtype != numpy.bool_ or inclusion.ndim != 2:
        raise ValueError("inclusion: must be a 2-D boolean array [references, records]")
    if inclusion.shape[1] != n:
        raise ValueError(f"inclusion: has {inclusion.shape[1]} records, the pool has {n}")
    if len(inclusion) < 2:
        raise ValueError("inclusion: needs at least 2 references")
    if not (inclusion.any(axis=0).all() and (~inclusion).any(axis=0).all()):
        raise ValueError("inclusion: every record needs at least one IN and one OUT reference")
    empty = numpy.flatnonzero(~inclusion.any(axis=1))
    if len(empty):
        raise ValueError(f"inclusion: reference {int(empty[0])} trains on no record")
    return inclusion


def _pool_tensors(X, y) -> tuple[torch.Tensor, torch.Tensor]:
    X = torch.as_tensor(X)
    y = torch.as_tensor(numpy.asarray(y))
    if X.dim() != 2:
        raise ValueError("X: must be a 2-D array [records, features]")
    if y.dim() != 1 or len(y) != len(X):
        raise ValueError("y: must hold one label per row of X")
    if len(X) < 2:
        raise ValueError("X: the pool needs at least one member and one non-member")
    # Floating features keep their precision: the target is scored in float64 from them.
    return (X if X.is_floating_point() else X.to(torch.float32)), y.to(torch.int64)


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError("seed: must be a non-negative integer")
