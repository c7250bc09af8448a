"""Attribute inference (model inversion) measured against an imputation baseline.

The question this audit answers is the one Jayaraman & Evans (2022, "Are Attribute
Inference Attacks Just Imputation?") showed is the right one: *does access to the model
let someone learn a training member's sensitive attribute better than they could from
the member's other features and label alone?* An attacker who knows the rest of a
record can often guess a sensitive value well without any model, because the value is
correlated with the rest of the record in the population ("imputation"). That is a
fact about the data, not something the model leaked; reporting an attack's raw accuracy
would blame the model for it. The risk the model adds is the **gain**: attack accuracy
minus imputation accuracy on the model's members, with a paired bootstrap interval.

Three guesses are made for every member, each by someone who knows the member's other
features and true label:

* **imputation** — a multinomial logistic regression from ``[other features, one-hot
  label]`` to the sensitive value, fitted on the records whose sensitive value the
  attacker knows (a population of non-members, and possibly some members). It never
  sees the model.
* **attack** — imputation plus the model's answers: for every candidate value ``v`` of
  the sensitive feature the attacker sets the sensitive columns to ``v`` and asks the
  model for the float64 loss of the true label (:func:`mlops.engine.mia.per_example_losses`,
  so SISA ensembles work too). A second logistic regression combines the imputation's
  logits (a linear function of ``[other features, one-hot label]``) with the log loss of
  every candidate, centred on the row's mean: which candidate the model finds likelier
  is the signal; how low the row's losses are overall says whether it is a member, not
  its value. Starting from the imputation's logits, it only has to learn what the model
  adds, from however few rows the attacker knows. Which records it learns from is the
  attacker's knowledge; see :func:`attribute_inference`.
* **inversion** — the classic model-inversion guess (Fredrikson et al. 2014/2015): the
  candidate whose loss is lowest, no training needed. Exact ties (a model that ignores
  the feature) go to the candidate most frequent in the population, which is
  Fredrikson et al.'s prior.

The sensitive feature is described by the columns it occupies in the encoded matrix
(:func:`mlops.data.encode_rows`) and its candidate encoded values; see
:func:`candidates_for` and :func:`sensitive_feature`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy
from scipy.optimize import minimize

from mlops.engine.mia import BOOTSTRAP_RESAMPLES, CONFIDENCE, per_example_losses

KINDS = ("category", "numeric")
# A row's sensitive columns "hold" a candidate when they agree to float32 round-off:
# encode_rows stores features in float32, candidates usually arrive as float64.
_MATCH_RTOL = 1e-6
_MATCH_ATOL = 1e-6
# Losses span many decades (1e-10 for a memorised record, 10 for a confident mistake);
# the classifier sees their logarithm, floored where float64 itself runs out.
_LOSS_FLOOR = numpy.finfo(numpy.float64).tiny
# The seed drives two independent streams, SeedSequence([seed, stream]): the split of
# the members into folds and the gain bootstrap. Nothing else in the audit is random.
_BOOTSTRAP_STREAM = 1
_FOLD_STREAM = 2
DEFAULT_MEMBER_FOLDS = 5
_BOOTSTRAP_CHUNK = 50
DEFAULT_L2 = 1e-3


# --------------------------------------------------------------------------- candidates


def candidates_for(*, columns: Sequence[int], kind: str, values: Sequence[float] | None = None) -> numpy.ndarray:
    """Candidate encoded values of a sensitive feature, one row per candidate.

    * ``kind="category"``: ``columns`` is the feature's one-hot block in the encoded
      matrix, in the schema's category order; the candidates are the block's one-hot
      vectors (the identity matrix, row ``i`` = category ``i``). ``values`` must be None.
    * ``kind="numeric"``: ``columns`` is the feature's single column; ``values`` are its
      distinct candidate values *as encoded* (already scaled to [0, 1] when the schema has
      min/max; :func:`sensitive_feature` scales raw values for you). Suits binary and
      low-cardinality numeric features; a continuous one has no finite candidate list.

    Returns a float64 array ``[n_candidates, len(columns)]``.
    """
    columns = _check_columns(columns)
    if kind not in KINDS:
        raise ValueError(f"kind: must be one of {', '.join(KINDS)}")
    if kind == "category":
        if values is not None:
            raise ValueError("values: a category's candidates are its one-hot vectors; give no values")
        if len(columns) < 2:
            raise ValueError("columns: a category needs a one-hot block of at least two columns")
        return numpy.eye(len(columns))
    if len(columns) != 1:
        raise ValueError("columns: a numeric feature occupies exactly one column")
    if values is None:
        raise ValueError("values: a numeric feature needs its candidate values")
    try:
        array = numpy.asarray(values, dtype=numpy.float64)
    except (TypeError, ValueError):
        raise ValueError("values: must be a list of numbers")
    if array.ndim != 1 or len(array) < 2:
        raise ValueError("values: give at least two candidate values")
    if not numpy.isfinite(array).all():
        raise ValueError("values: must be finite numbers")
    candidates = array.reshape(-1, 1)
    _check_distinct(candidates)
    return candidates


def feature_columns(*, encoding: dict, name: str) -> tuple[list[int], dict]:
    """``(columns, spec)`` of the feature ``name`` in a run's recorded ``encoding``: the
    columns it occupies in the encoded matrix (a category's one-hot block) and its entry."""
    features = encoding.get("features") if isinstance(encoding, dict) else None
    if not isinstance(features, list):
        raise ValueError("encoding: must be an encoding dict with a 'features' list")
    start = 0
    for spec in features:
        width = len(spec.get("categories") or []) if spec.get("type") == "category" else 1
        if spec.get("name") == name:
            return list(range(start, start + width)), spec
        start += width
    raise ValueError(f"name: the encoding has no feature called {name!r}")


def sensitive_feature(
    *, encoding: dict, name: str, values: Sequence[float] | None = None
) -> tuple[list[int], numpy.ndarray]:
    """``(columns, candidates)`` of the feature ``name`` in a run's recorded ``encoding``.

    ``encoding`` is the dict :func:`mlops.data.encode_rows` returns (features in column
    order; a category has ``categories``, a scaled numeric feature ``min``/``max``).
    For a numeric feature ``values`` are raw candidate values, scaled (and clipped) the
    way the encoding scaled them.
    """
    columns, spec = feature_columns(encoding=encoding, name=name)
    if spec.get("type") == "category":
        return columns, candidates_for(columns=columns, kind="category", values=values)
    if values is None:
        raise ValueError("values: a numeric feature needs its candidate values")
    raw = numpy.asarray(values, dtype=numpy.float64)
    lo, hi = spec.get("min"), spec.get("max")
    if lo is not None and hi is not None and float(hi) > float(lo):
        raw = (numpy.clip(raw, float(lo), float(hi)) - float(lo)) / (float(hi) - float(lo))
    # Round through float32 as encode_rows does, so the candidates match the rows exactly.
    raw = raw.astype(numpy.float32).astype(numpy.float64)
    return columns, candidates_for(columns=columns, kind="numeric", values=list(raw))


# ------------------------------------------------------------------- logistic regression


@dataclass
class LogisticRegression:
    """A fitted multinomial logistic regression on standardised features."""

    mean: numpy.ndarray  # [d] feature means of the training data
    scale: numpy.ndarray  # [d] feature standard deviations (1 where a feature is constant)
    weights: numpy.ndarray  # [d, n_classes] on the standardised features
    bias: numpy.ndarray  # [n_classes]
    converged: bool

    def decision_function(self, X) -> numpy.ndarray:
        X = numpy.asarray(X, dtype=numpy.float64)
        if X.ndim != 2 or X.shape[1] != len(self.mean):
            raise ValueError(f"X: must be a 2-D array with {len(self.mean)} features")
        return ((X - self.mean) / self.scale) @ self.weights + self.bias

    def predict_proba(self, X) -> numpy.ndarray:
        logits = self.decision_function(X)
        logits -= logits.max(axis=1, keepdims=True)
        p = numpy.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, X) -> numpy.ndarray:
        # argmax of the logits, first class on ties, so predictions are deterministic.
        return self.decision_function(X).argmax(axis=1)


def fit_logistic_regression(
    *, X, y, n_classes: int, l2: float = DEFAULT_L2, max_iter: int = 1000
) -> LogisticRegression:
    """Multinomial logistic regression by L-BFGS on mean cross-entropy + ``l2/2·‖W‖²``.

    Features are standardised with the training data's mean and standard deviation, so
    one ``l2`` suits features of any scale and L-BFGS is well conditioned. The penalty
    (bias excluded) keeps the optimum finite on separable data. Starts from zero weights
    and uses no randomness: the same data give the same model. Classes absent from ``y``
    are still modelled; they just end up improbable.
    """
    X = numpy.asarray(X, dtype=numpy.float64)
    y = numpy.asarray(y)
    if X.ndim != 2 or len(X) == 0:
        raise ValueError("X: must be a non-empty 2-D array [examples, features]")
    if not numpy.isfinite(X).all():
        raise ValueError("X: contains NaN or infinite values")
    _check_n_classes(n_classes)
    y = _check_labels(y, n=len(X), n_classes=n_classes, name="y")
    if isinstance(l2, bool) or not isinstance(l2, int | float) or not l2 > 0 or not math.isfinite(l2):
        raise ValueError("l2: must be a positive number")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError("max_iter: must be a positive integer")

    n, d = X.shape
    mean = X.mean(axis=0)
    scale = X.std(axis=0)
    scale[scale < 1e-12] = 1.0  # a constant feature carries nothing; leave it at 0 after centring
    Z = (X - mean) / scale
    Y = numpy.zeros((n, n_classes))
    Y[numpy.arange(n), y] = 1.0

    def objective(theta: numpy.ndarray) -> tuple[float, numpy.ndarray]:
        W = theta[: d * n_classes].reshape(d, n_classes)
        b = theta[d * n_classes :]
        logits = Z @ W + b
        top = logits.max(axis=1, keepdims=True)
        log_norm = top[:, 0] + numpy.log(numpy.exp(logits - top).sum(axis=1))
        loss = float((log_norm - (logits * Y).sum(axis=1)).mean() + 0.5 * l2 * (W * W).sum())
        residual = (numpy.exp(logits - log_norm[:, None]) - Y) / n
        grad_W = Z.T @ residual + l2 * W
        return loss, numpy.concatenate([grad_W.ravel(), residual.sum(axis=0)])

    fit = minimize(
        objective,
        numpy.zeros(d * n_classes + n_classes),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": max_iter, "gtol": 1e-9, "ftol": 1e-12},
    )
    theta = fit.x
    return LogisticRegression(
        mean=mean,
        scale=scale,
        weights=theta[: d * n_classes].reshape(d, n_classes).copy(),
        bias=theta[d * n_classes :].copy(),
        converged=bool(fit.success),
    )


# ------------------------------------------------------------------------------ the audit


@dataclass
class AttributeInferenceResult:
    """Accuracies are fractions of the model's members whose sensitive value was guessed.

    ``gain`` (attack − imputation) is the figure that measures the model's risk: it is
    what querying the model adds to what the rest of the record already gives away.
    ``attack_accuracy`` alone is not, and ``majority_accuracy`` (always guessing the
    population's most frequent value) is the floor any guess should beat.
    ``inversion_accuracy`` is the untrained lowest-loss guess; when it beats imputation
    by more than chance, a note says so (the gain then understates the risk).
    """

    feature_name: str
    n_population: int
    n_members: int
    n_candidates: int
    attack_accuracy: float
    imputation_accuracy: float
    inversion_accuracy: float
    majority_accuracy: float
    gain: float
    gain_low: float | None = None  # 95% paired percentile bootstrap over members; None without resamples
    gain_high: float | None = None
    known_member_folds: int = 0  # 0: the attacker knew only the population (see attribute_inference)
    bootstrap_resamples: int = 0
    notes: list[str] = field(default_factory=list)


def attribute_inference(
    *,
    models: list,
    X_population,
    y_population,
    X_members,
    y_members,
    n_classes: int,
    columns: Sequence[int],
    candidates,
    feature_name: str,
    known_member_folds: int = DEFAULT_MEMBER_FOLDS,
    bootstrap_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    l2: float = DEFAULT_L2,
) -> AttributeInferenceResult:
    """Attribute inference against ``models`` (one model, or a SISA ensemble's shard models).

    ``X_population``/``y_population`` are records the attacker knows in full, sensitive
    value included; they should not be members (a hold-out). ``X_members``/``y_members``
    are the model's training records under attack. Both are encoded matrices
    (:func:`mlops.data.encode_rows`); every row's ``columns`` must hold one of the
    ``candidates`` (see :func:`candidates_for`), which is the true value to be guessed.

    Who the attacker is (``known_member_folds``):

    * ``0`` — it knows only the population, and both classifiers are fitted on it. The
      model behaves differently on members than on the non-members the attack learned
      from, so this attacker cannot learn what memorisation looks like; Jayaraman & Evans
      (2022) find such black-box attacks rarely beat imputation, and so do the tests
      here, even against a model that memorised its members.
    * ``K ≥ 2`` (default 5) — it also knows the sensitive value of some members (a leaked
      part of the training set, or people who shared their own record): the members are
      split into ``K`` seeded folds and each fold is attacked by classifiers that know the
      other folds. The attack is fitted on those known members; the imputation baseline on
      the population *and* those members (it never sees the model, so more rows only make
      the baseline stronger and the gain more conservative). No member's guess comes from
      a classifier trained on that member. This is the audit's worst case and its default.

    Reports the three guesses' accuracy on the members (see the module docstring) and the
    gain = attack − imputation, the model's risk, with a 95% paired percentile-bootstrap
    interval: members are resampled with replacement and both guesses are scored on the
    same resample, so the interval reflects only how the two differ (it holds the fitted
    classifiers fixed). A gain interval including 0 means querying the model taught this
    attacker nothing about the feature that the rest of the record does not; above 0, the
    model leaks the feature of its members. One attacker failing is weak evidence of
    privacy, not proof. Deterministic for ``seed`` (the folds and the bootstrap).
    ``l2`` is the classifiers' penalty (see :func:`fit_logistic_regression`).
    """
    if not isinstance(models, list | tuple) or not models:
        raise ValueError("models: give a list of one model or of a SISA ensemble's shard models")
    _check_n_classes(n_classes)
    if not isinstance(feature_name, str) or not feature_name.strip():
        raise ValueError("feature_name: must be a non-empty string")
    if isinstance(bootstrap_resamples, bool) or not isinstance(bootstrap_resamples, int) or bootstrap_resamples < 0:
        raise ValueError("bootstrap_resamples: must be a non-negative integer")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError("seed: must be a non-negative integer")
    if (
        isinstance(known_member_folds, bool) or not isinstance(known_member_folds, int)
        or known_member_folds < 0 or known_member_folds == 1
    ):
        raise ValueError("known_member_folds: must be 0 (the attacker knows no member) or an integer of at least 2")
    X_pop = _check_matrix(X_population, name="X_population")
    X_mem = _check_matrix(X_members, name="X_members")
    if X_pop.shape[1] != X_mem.shape[1]:
        raise ValueError(f"X_members: has {X_mem.shape[1]} features, X_population has {X_pop.shape[1]}")
    y_pop = _check_labels(y_population, n=len(X_pop), n_classes=n_classes, name="y_population")
    y_mem = _check_labels(y_members, n=len(X_mem), n_classes=n_classes, name="y_members")
    if known_member_folds > len(X_mem):
        raise ValueError(f"known_member_folds: cannot split {len(X_mem)} members into {known_member_folds} folds")
    cols = _check_columns(columns)
    if max(cols) >= X_pop.shape[1]:
        raise ValueError(f"columns: the encoded matrix has only {X_pop.shape[1]} columns")
    cands = _check_candidates(candidates, width=len(cols))

    truth_pop = _true_candidates(X_pop[:, cols], cands, name="X_population", feature_name=feature_name)
    truth_mem = _true_candidates(X_mem[:, cols], cands, name="X_members", feature_name=feature_name)
    k = len(cands)
    counts = numpy.bincount(truth_pop, minlength=k)

    losses_pop = _candidate_losses(models, X_pop, y_pop, cols, cands)
    losses_mem = _candidate_losses(models, X_mem, y_mem, cols, cands)
    others = [c for c in range(X_pop.shape[1]) if c not in set(cols)]
    known_pop = numpy.hstack([X_pop[:, others], numpy.eye(n_classes)[y_pop]])
    known_mem = numpy.hstack([X_mem[:, others], numpy.eye(n_classes)[y_mem]])
    log_losses_pop, log_losses_mem = _log_losses(losses_pop), _log_losses(losses_mem)

    imputation_correct = numpy.zeros(len(X_mem), dtype=bool)
    attack_correct = numpy.zeros(len(X_mem), dtype=bool)
    converged = True
    if known_member_folds:
        folds = member_folds(n_members=len(X_mem), folds=known_member_folds, seed=seed)
        splits = [(folds != f, folds == f) for f in range(known_member_folds)]
    else:
        splits = [(numpy.zeros(len(X_mem), dtype=bool), numpy.ones(len(X_mem), dtype=bool))]
    for known, target in splits:
        # Imputation may learn from every record whose value the attacker knows: it never
        # sees the model, so members and non-members are alike to it, and more rows only
        # make the baseline stronger (and the gain more conservative).
        imputer = fit_logistic_regression(
            X=numpy.vstack([known_pop, known_mem[known]]),
            y=numpy.concatenate([truth_pop, truth_mem[known]]),
            n_classes=k, l2=l2,
        )
        # The attack starts from what imputation believes (its logits) and adds the model's
        # answers, so it only has to learn what the model tells beyond the rest of the
        # record, and cannot lose much to imputation for having fewer rows to learn from.
        if known.any():
            # The model treats members differently (it memorised them), and a linear
            # classifier cannot tell the two kinds of row apart: calibrated on known
            # members only, it learns what the model's answers mean for a member.
            attack_X = numpy.hstack([imputer.decision_function(known_mem[known]), log_losses_mem[known]])
            attack_y = truth_mem[known]
        else:
            attack_X, attack_y = numpy.hstack([imputer.decision_function(known_pop), log_losses_pop]), truth_pop
        attacker = fit_logistic_regression(X=attack_X, y=attack_y, n_classes=k, l2=l2)
        imputation_logits = imputer.decision_function(known_mem[target])
        imputation_correct[target] = imputation_logits.argmax(axis=1) == truth_mem[target]
        attack_correct[target] = (
            attacker.predict(numpy.hstack([imputation_logits, log_losses_mem[target]])) == truth_mem[target]
        )
        converged = converged and imputer.converged and attacker.converged
    inversion_correct = _inversion_guess(losses_mem, counts) == truth_mem
    majority = int(counts.argmax())  # first on ties

    attack_accuracy = float(attack_correct.mean())
    imputation_accuracy = float(imputation_correct.mean())
    result = AttributeInferenceResult(
        feature_name=feature_name,
        n_population=len(X_pop),
        n_members=len(X_mem),
        n_candidates=k,
        attack_accuracy=attack_accuracy,
        imputation_accuracy=imputation_accuracy,
        inversion_accuracy=float(inversion_correct.mean()),
        majority_accuracy=float((truth_mem == majority).mean()),
        gain=attack_accuracy - imputation_accuracy,
        known_member_folds=known_member_folds,
        bootstrap_resamples=bootstrap_resamples,
    )
    if bootstrap_resamples:
        result.gain_low, result.gain_high = paired_gain_interval(
            attack_correct=attack_correct, baseline_correct=imputation_correct,
            resamples=bootstrap_resamples, seed=seed,
        )
    inversion_interval = None
    if bootstrap_resamples and result.inversion_accuracy > max(attack_accuracy, imputation_accuracy):
        inversion_interval = paired_gain_interval(
            attack_correct=inversion_correct, baseline_correct=imputation_correct,
            resamples=bootstrap_resamples, seed=seed,
        )
    result.notes.extend(_notes(result, counts=counts, converged=converged, inversion_interval=inversion_interval))
    return result


def member_folds(*, n_members: int, folds: int, seed: int = 0) -> numpy.ndarray:
    """Each member's fold in ``0..folds−1``: a seeded permutation dealt round-robin, so
    fold sizes differ by at most one."""
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError("folds: must be an integer of at least 2")
    if isinstance(n_members, bool) or not isinstance(n_members, int) or n_members < folds:
        raise ValueError(f"n_members: cannot split {n_members} members into {folds} folds")
    rng = numpy.random.default_rng(numpy.random.SeedSequence([seed, _FOLD_STREAM]))
    assignment = numpy.empty(n_members, dtype=numpy.int64)
    assignment[rng.permutation(n_members)] = numpy.arange(n_members) % folds
    return assignment


def paired_gain_interval(
    *,
    attack_correct,
    baseline_correct,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> tuple[float, float]:
    """Percentile-bootstrap interval of ``mean(attack_correct) − mean(baseline_correct)``.

    Paired: each resample draws members with replacement and scores both guesses on the
    same draw, so what the two get right together cancels and the interval is as narrow
    as their disagreement allows.
    """
    a = numpy.asarray(attack_correct, dtype=numpy.float64).ravel()
    b = numpy.asarray(baseline_correct, dtype=numpy.float64).ravel()
    if len(a) == 0 or len(a) != len(b):
        raise ValueError("attack_correct: needs one outcome per member, as many as baseline_correct")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise ValueError("resamples: must be a positive integer")
    difference = a - b
    n = len(difference)
    rng = numpy.random.default_rng(numpy.random.SeedSequence([seed, _BOOTSTRAP_STREAM]))
    gains = []
    for start in range(0, resamples, _BOOTSTRAP_CHUNK):
        draws = rng.integers(0, n, size=(min(_BOOTSTRAP_CHUNK, resamples - start), n))
        gains.append(difference[draws].mean(axis=1))
    tail = (1 - confidence) / 2
    low, high = numpy.quantile(numpy.concatenate(gains), [tail, 1 - tail])
    return float(low), float(high)


# ------------------------------------------------------------------------------- helpers


def _candidate_losses(models: list, X: numpy.ndarray, y: numpy.ndarray, cols: list[int], cands: numpy.ndarray) -> numpy.ndarray:
    """``[N, k]``: every row's float64 loss of its true label with the sensitive columns set to each candidate."""
    out = numpy.empty((len(X), len(cands)))
    for j, value in enumerate(cands):
        queried = X.copy()
        queried[:, cols] = value
        out[:, j] = per_example_losses(models=list(models), X=queried, y=y)
    return out


def _log_losses(losses: numpy.ndarray) -> numpy.ndarray:
    logs = numpy.log(numpy.maximum(losses, _LOSS_FLOOR))
    return logs - logs.mean(axis=1, keepdims=True)


def _inversion_guess(losses: numpy.ndarray, counts: numpy.ndarray) -> numpy.ndarray:
    """Lowest-loss candidate; exact ties go to the population's most frequent candidate."""
    tied = losses == losses.min(axis=1, keepdims=True)
    return numpy.where(tied, counts[None, :], -1).argmax(axis=1)


def _true_candidates(block: numpy.ndarray, cands: numpy.ndarray, *, name: str, feature_name: str) -> numpy.ndarray:
    """Index of the candidate each row's sensitive columns hold."""
    # One candidate at a time: [rows × columns] memory, not [rows × candidates × columns].
    matches = numpy.stack(
        [numpy.isclose(block, value, rtol=_MATCH_RTOL, atol=_MATCH_ATOL).all(axis=1) for value in cands], axis=1
    )
    unmatched = numpy.flatnonzero(~matches.any(axis=1))
    if len(unmatched):
        raise ValueError(
            f"{name}: in {len(unmatched)} row{'' if len(unmatched) == 1 else 's'} the value of {feature_name} is "
            f"none of the candidates (first: row {int(unmatched[0])}); a missing category encodes as all zeros "
            "and cannot be attacked"
        )
    return matches.argmax(axis=1)


def _notes(
    result: AttributeInferenceResult,
    *,
    counts: numpy.ndarray,
    converged: bool,
    inversion_interval: tuple[float, float] | None,
) -> list[str]:
    name = result.feature_name
    notes = []
    if result.gain_low is None:
        notes.append("The gain has no interval (bootstrap_resamples=0): it cannot be told apart from chance.")
    elif result.gain_low > 0:
        notes.append(
            f"The gain interval lies above 0: querying the model reveals {name} of its members beyond what their "
            f"other features and label do ({result.attack_accuracy:.1%} vs {result.imputation_accuracy:.1%} by "
            "imputation)."
        )
    elif result.gain_high < 0:
        notes.append(
            f"The gain interval lies below 0: the attack with the model did worse than imputation, so the model "
            f"reveals no more about {name} than the other features do (its extra inputs only over-fitted the "
            "attacker's population)."
        )
    elif inversion_interval is not None and inversion_interval[0] > 0:
        notes.append(
            "The gain interval includes 0, but the plain inversion guess beats imputation (next note): the model "
            f"does leak {name}; this trained attack failed to use it."
        )
    else:
        notes.append(
            f"The gain interval includes 0: the model reveals no more about {name} than the other features do. "
            "That is weak evidence of privacy; a stronger attack may still find leakage."
        )
    if inversion_interval is not None and inversion_interval[0] > 0:
        low, high = inversion_interval
        notes.append(
            f"The plain inversion guess (lowest loss) beat imputation: {result.inversion_accuracy:.1%} vs "
            f"{result.imputation_accuracy:.1%} (difference {result.inversion_accuracy - result.imputation_accuracy:+.3f}, "
            f"95% CI {low:+.3f} to {high:+.3f}), so the gain understates the risk."
        )
    if result.known_member_folds == 0:
        notes.append(
            "The attacker knew no member's value: calibrated on non-members only, it cannot learn how the model "
            "treats its members, and such attacks rarely beat imputation (Jayaraman & Evans 2022). "
            "known_member_folds ≥ 2 measures an attacker who knows some members."
        )
    missing = int((counts == 0).sum())
    if missing:
        notes.append(
            f"{missing} of {len(counts)} candidate values of {name} never occur in the attacker's population: "
            "neither classifier can learn to guess them."
        )
    if not converged:
        notes.append("A classifier's L-BFGS fit stopped at its iteration limit before converging.")
    return notes


def _check_columns(columns) -> list[int]:
    if isinstance(columns, str | bytes) or not isinstance(columns, Sequence | numpy.ndarray):
        raise ValueError("columns: must be a list of column indices")
    cols = list(columns)
    if not cols:
        raise ValueError("columns: the sensitive feature occupies no columns")
    for c in cols:
        if isinstance(c, bool) or not isinstance(c, int | numpy.integer) or c < 0:
            raise ValueError("columns: must be non-negative integer column indices")
    if len(set(cols)) != len(cols):
        raise ValueError("columns: a column is listed twice")
    return [int(c) for c in cols]


def _check_candidates(candidates, *, width: int) -> numpy.ndarray:
    try:
        cands = numpy.asarray(candidates, dtype=numpy.float64)
    except (TypeError, ValueError):
        raise ValueError("candidates: must be a 2-D array of numbers [n_candidates, len(columns)]")
    if cands.ndim != 2 or cands.shape[1] != width:
        raise ValueError(f"candidates: must be a 2-D array [n_candidates, {width}] (one value per sensitive column)")
    if len(cands) < 2:
        raise ValueError("candidates: give at least two candidate values")
    if not numpy.isfinite(cands).all():
        raise ValueError("candidates: must be finite numbers")
    _check_distinct(cands)
    return cands


def _check_distinct(cands: numpy.ndarray) -> None:
    same = numpy.isclose(cands[:, None, :], cands[None, :, :], rtol=_MATCH_RTOL, atol=_MATCH_ATOL).all(axis=2)
    if same.sum() != len(cands):
        raise ValueError("values: candidate values must be distinct" if cands.shape[1] == 1 else
                         "candidates: candidate values must be distinct")


def _check_matrix(X, *, name: str) -> numpy.ndarray:
    if hasattr(X, "detach"):
        X = X.detach().cpu().numpy()
    X = numpy.asarray(X, dtype=numpy.float64)
    if X.ndim != 2:
        raise ValueError(f"{name}: must be a 2-D array [examples, features]")
    if len(X) == 0:
        raise ValueError(f"{name}: has no rows")
    if not numpy.isfinite(X).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return X


def _check_labels(y, *, n: int, n_classes: int, name: str) -> numpy.ndarray:
    if hasattr(y, "detach"):
        y = y.detach().cpu().numpy()
    y = numpy.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"{name}: must be a 1-D array with one label per row")
    if y.dtype.kind == "f":
        if not numpy.isfinite(y).all() or not numpy.array_equal(y, numpy.round(y)):
            raise ValueError(f"{name}: labels must be integers")
    elif y.dtype.kind not in "iu":
        raise ValueError(f"{name}: labels must be integers")
    y = y.astype(numpy.int64)
    if len(y) and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"{name}: labels must lie in 0..{n_classes - 1}")
    return y


def _check_n_classes(n_classes) -> None:
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
        raise ValueError("n_classes: must be an integer of at least 2")
