"""Explanations of a model's decisions and what a decision may reveal (issue 19).

Attributions come from Captum: Integrated Gradients (Sundararajan et al. 2017) against a
documented, data-free baseline, and Shapley value sampling / KernelSHAP for small inputs.
They are always reported per dataset feature, in the dataset's own names: a category's
one-hot columns are summed (IG) or moved together (the Shapley methods' feature mask).

What is explained is the probability the model (or the mean of a SISA ensemble's shards)
gives one class. IG's completeness: the attributions of a row sum to
``output − baseline_output`` up to Captum's convergence delta, which is returned with them.

Django-free: numpy, torch and captum only.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from torch import nn

METHODS = ("integrated_gradients", "shapley_value_sampling", "kernel_shap")
OUTPUT_KINDS = ("full_probabilities", "rounded_probabilities", "label_with_band", "label_only")
# (lowest probability of the predicted label, band): the first that applies is shown.
CONFIDENCE_BANDS = ((0.9, "high"), (0.7, "medium"), (0.0, "low"))
BASELINE_RULE = (
    "Integrated Gradients starts from a baseline fixed by the dataset schema alone, never by the data: "
    "a numeric feature with published bounds sits in the middle of them (0.5 in scaled units), a numeric "
    "feature without bounds at 0, and a category feature spreads evenly over its k categories (1/k in each). "
    "An attribution says how much moving a feature from that reference value to the person's value moved "
    "the probability of the decision."
)
MAX_DIGITS = 6
_PREDICT_BATCH = 8192
# Grid over a bounded numeric feature's scaled range [0, 1] for the counterfactual search
# (steps of 4% of the range: a flip region narrower than that between the person's value and
# the nearest flip seen can be missed). On the 400 rows of `make bench`'s two MLPs, 26 points
# found exactly the hints 101 and 51 points found, feature and value, at 9.5 ms instead of
# 41 / 23 ms for 100 features: what kept one explained decision under 50 ms. The crossing
# found is then refined by bisection to 4% / 2^14 of the range, as fine as before.
_CF_GRID = 26
_CF_BISECTIONS = 14
# Up to this many rows IG goes through Captum's IntegratedGradients itself; above it through
# ``integrated_gradients_bulk`` (the same nodes and formula, one backward pass per chunk:
# Captum's per-point gradients cost ~10 µs of Python each, 5 s for 10,000 rows at 50 steps).
CAPTUM_MAX_ROWS = 64


_F = TypeVar("_F", bound=Callable)


def _single_threaded(fn: _F) -> _F:
    """Run on one intra-op thread, as training does (``dp_train.TRAINING_THREADS``): these
    MLPs' operations cost less than waking a second thread, and on a busy 2-core machine a
    second thread spinning for a core made one row's explanation ~80 ms instead of ~3 ms."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        previous = torch.get_num_threads()
        if previous == 1:
            return fn(*args, **kwargs)
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(previous)

    return wrapper  # type: ignore[return-value]


def feature_columns(encoding: dict) -> list[tuple[str, slice]]:
    """Each dataset feature's name and its columns in the encoded input, in order."""
    out, start = [], 0
    for spec in encoding.get("features") or []:
        width = len(spec.get("categories") or []) if spec.get("type") == "category" else 1
        out.append((spec["name"], slice(start, start + width)))
        start += width
    return out


def _width(encoding: dict) -> int:
    columns = feature_columns(encoding)
    return columns[-1][1].stop if columns else 0


def schema_baseline(encoding: dict) -> np.ndarray:
    """The data-free IG baseline (see ``BASELINE_RULE``), float32 [width]."""
    parts = []
    for spec in encoding.get("features") or []:
        if spec.get("type") == "category":
            k = len(spec.get("categories") or [])
            parts.append(np.full(k, 1.0 / k if k else 0.0, dtype=np.float32))
        elif spec.get("min") is not None and spec.get("max") is not None:
            parts.append(np.array([0.5], dtype=np.float32))
        else:
            parts.append(np.array([0.0], dtype=np.float32))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


class Ensemble(nn.Module):
    """One model or a SISA ensemble's shards as one function: the mean of their softmax
    probabilities (as ``sisa.ensemble_predict_proba`` predicts)."""

    def __init__(self, models: list[nn.Module]):
        super().__init__()
        if not models:
            raise ValueError("models: the ensemble has no models")
        self.shards = nn.ModuleList(models)
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probabilities = torch.softmax(self.shards[0](x), dim=1)
        for model in self.shards[1:]:
            probabilities = probabilities + torch.softmax(model(x), dim=1)
        return probabilities / len(self.shards)


@_single_threaded
def predict_proba(ensemble: nn.Module, X: np.ndarray) -> np.ndarray:
    """Class probabilities [n, n_classes] (float64), in batches, without gradients."""
    X = np.asarray(X, dtype=np.float32)
    if X.ndim == 1:
        X = X[None, :]
    parts = []
    with torch.no_grad():
        for s in range(0, len(X), _PREDICT_BATCH):
            parts.append(ensemble(torch.from_numpy(np.ascontiguousarray(X[s: s + _PREDICT_BATCH]))).double().numpy())
    return np.concatenate(parts) if parts else np.zeros((0, 0))


@dataclass
class Attributions:
    method: str
    features: list[str]
    values: np.ndarray  # [n, n_features] float64, one value per dataset feature
    targets: np.ndarray  # [n] class index explained
    output: np.ndarray  # [n] probability of the target at the row
    baseline_output: np.ndarray  # [n] probability of the target at the baseline
    convergence_delta: np.ndarray | None  # [n] IG only: Captum's completeness error


def _feature_mask(encoding: dict) -> torch.Tensor:
    mask = np.zeros(_width(encoding), dtype=np.int64)
    for index, (_, columns) in enumerate(feature_columns(encoding)):
        mask[columns] = index
    return torch.from_numpy(mask)[None, :]


def _per_feature(values: np.ndarray, encoding: dict) -> np.ndarray:
    return np.stack([values[:, cols].sum(axis=1) for _, cols in feature_columns(encoding)], axis=1)


@_single_threaded
def explain(
    ensemble: nn.Module, X: np.ndarray, *, encoding: dict, targets: np.ndarray | None = None,
    method: str = "integrated_gradients", n_steps: int = 50, n_samples: int = 25, seed: int = 0,
) -> Attributions:
    """Attributions of every row of ``X`` (encoded, [n, width]) to the probability of its
    target class (default: the predicted class), per dataset feature.

    IG runs all rows in one Captum call (Gauss–Legendre), evaluating the path points of
    many rows per forward pass (up to 64k points; one row: ``internal_batch_size`` =
    ``n_steps``); above ``CAPTUM_MAX_ROWS`` rows through ``integrated_gradients_bulk``,
    equal to it (tested), with the convergence delta computed as Captum defines it.
    The Shapley methods draw ``n_samples``
    permutations / coalitions, seeded by ``seed`` (the global torch generator is left as it was).
    """
    from captum.attr import IntegratedGradients, KernelShap, ShapleyValueSampling

    if method not in METHODS:
        raise ValueError(f"method: must be one of {', '.join(METHODS)}")
    X = np.asarray(X, dtype=np.float32)
    if X.ndim == 1:
        X = X[None, :]
    width = _width(encoding)
    if X.shape[1] != width:
        raise ValueError(f"X: expected {width} encoded columns, got {X.shape[1]}")
    names = [name for name, _ in feature_columns(encoding)]
    n = len(X)
    baseline = schema_baseline(encoding)
    probabilities = predict_proba(ensemble, X) if n else np.zeros((0, 0))
    if targets is None:
        targets = probabilities.argmax(axis=1) if n else np.zeros(0, dtype=np.int64)
    targets = np.asarray(targets, dtype=np.int64).reshape(-1)
    if len(targets) != n:
        raise ValueError(f"targets: expected {n} class indices, got {len(targets)}")
    if n == 0:
        empty = np.zeros(0)
        return Attributions(method, names, np.zeros((0, len(names))), targets, empty, empty,
                            empty if method == "integrated_gradients" else None)
    n_classes = probabilities.shape[1]
    if (targets < 0).any() or (targets >= n_classes).any():
        raise ValueError(f"targets: class indices must be in 0..{n_classes - 1}")
    rows = torch.from_numpy(np.ascontiguousarray(X))
    base = torch.from_numpy(baseline)[None, :].expand(n, -1).contiguous()
    target = torch.from_numpy(targets)
    output = probabilities[np.arange(n), targets]
    baseline_output = predict_proba(ensemble, baseline[None, :])[0][targets]
    delta = None
    if method == "integrated_gradients" and n > CAPTUM_MAX_ROWS:
        values = integrated_gradients_bulk(ensemble, X, encoding=encoding, targets=targets, n_steps=n_steps)
        # Captum's convergence delta, by its definition (compute_convergence_delta):
        # the attributions' sum minus the output's difference between the row and the baseline.
        delta = values.sum(axis=1) - (output - baseline_output)
    elif method == "integrated_gradients":
        ig = IntegratedGradients(ensemble)
        # Paths of many rows at once: one forward/backward per chunk of path points.
        chunk = max(int(n_steps), (65536 // max(int(n_steps), 1)) * int(n_steps))
        attributions, deltas = ig.attribute(
            rows, baselines=base, target=target, n_steps=int(n_steps), method="gausslegendre",
            internal_batch_size=min(chunk, n * int(n_steps)), return_convergence_delta=True,
        )
        values = _per_feature(attributions.detach().double().numpy(), encoding)
        delta = deltas.detach().double().numpy().reshape(-1)
    else:
        mask = _feature_mask(encoding)
        with torch.random.fork_rng():
            torch.manual_seed(int(seed))
            if method == "shapley_value_sampling":
                sampled = ShapleyValueSampling(ensemble).attribute(
                    rows, baselines=base, target=target, feature_mask=mask, n_samples=int(n_samples),
                    perturbations_per_eval=max(1, min(len(names), 16)),
                )
                full = sampled.detach().double().numpy()
            else:
                # KernelSHAP fits one surrogate per row (Captum's advice: one example per call).
                kernel = KernelShap(ensemble)
                kernel.interpretable_model = _weighted_linear_model()
                full = np.concatenate([
                    kernel.attribute(rows[i: i + 1], baselines=base[i: i + 1], target=int(targets[i]),
                                     feature_mask=mask, n_samples=int(n_samples)).detach().double().numpy()
                    for i in range(n)
                ])
        # The mask repeats a feature's attribution in each of its columns: take one column each.
        values = np.stack([full[:, cols.start] for _, cols in feature_columns(encoding)], axis=1)
    return Attributions(method=method, features=names, values=values, targets=targets, output=output,
                        baseline_output=baseline_output, convergence_delta=delta)


def _weighted_least_squares(model, dataloader, construct_kwargs: dict, **_: object) -> dict:
    """Captum ``LinearModel`` training function: the closed-form weighted least-squares
    fit KernelSHAP's surrogate is (Lundberg & Lee 2017), with an intercept. Captum's
    default trains it with scikit-learn, which this project does not otherwise need."""
    xs, ys, ws = [], [], []
    for batch in dataloader:
        x, y, *w = batch
        xs.append(x.double().numpy().reshape(len(x), -1))
        ys.append(y.double().numpy().reshape(len(y), -1))
        ws.append(w[0].double().numpy().reshape(-1) if w else np.ones(len(x)))
    x, y, w = np.concatenate(xs), np.concatenate(ys), np.concatenate(ws)
    design = np.hstack([x, np.ones((len(x), 1))]) * np.sqrt(w)[:, None]
    solution, *_ = np.linalg.lstsq(design, y * np.sqrt(w)[:, None], rcond=None)
    model._construct_model_params(
        weight_values=torch.from_numpy(solution[:-1].T.astype(np.float32)),
        bias_value=torch.from_numpy(solution[-1].astype(np.float32)),
    )
    return {}


def _weighted_linear_model():
    from captum._utils.models.linear_model.model import LinearModel

    return LinearModel(train_fn=_weighted_least_squares)


def top_contributions(attr: Attributions, row: int, k: int = 5) -> list[dict]:
    """The ``k`` features that moved row ``row``'s decision most, by |contribution|."""
    values = attr.values[row]
    order = sorted(range(len(values)), key=lambda j: (-abs(values[j]), j))[: max(int(k), 0)]
    return [
        {"feature": attr.features[j], "contribution": float(values[j]),
         "direction": "raises" if values[j] >= 0 else "lowers"}
        for j in order
    ]


@_single_threaded
def integrated_gradients_bulk(ensemble: nn.Module, X: np.ndarray, *, encoding: dict, targets: np.ndarray,
                              n_steps: int = 32) -> np.ndarray:
    """IG attributions per dataset feature for many rows, [n, n_features] float64: Captum's
    Gauss–Legendre nodes and weights (``approximation_parameters("gausslegendre")``) and
    Captum's formula, with one backward pass per chunk of path points. Captum's own
    ``IntegratedGradients`` takes the gradient of each path point's output separately
    (``torch.unbind``), ~10 µs of Python per point: 3 s for the 320,000 points of 10,000
    audit records; rows are independent here (eval mode), so the gradient of the summed
    outputs is every point's own. Equal to ``explain`` (tested); for audits and summaries,
    per-decision explanations go through Captum itself."""
    from captum.attr._utils.approximation_methods import approximation_parameters

    step_sizes_fn, alphas_fn = approximation_parameters("gausslegendre")
    steps = torch.tensor(step_sizes_fn(int(n_steps)), dtype=torch.float32)
    alphas = torch.tensor(alphas_fn(int(n_steps)), dtype=torch.float32)
    X = torch.from_numpy(np.ascontiguousarray(np.asarray(X, dtype=np.float32)))
    targets_t = torch.from_numpy(np.asarray(targets, dtype=np.int64).reshape(-1))
    base = torch.from_numpy(schema_baseline(encoding))[None, :]
    out = []
    rows_per_chunk = max(1, 65536 // int(n_steps))
    for s in range(0, len(X), rows_per_chunk):
        x, t = X[s: s + rows_per_chunk], targets_t[s: s + rows_per_chunk]
        diff = x - base
        points = (base[None, :, :] + alphas[:, None, None] * diff[None, :, :]).reshape(-1, x.shape[1])
        points.requires_grad_(True)
        picked = ensemble(points).gather(1, t.repeat(int(n_steps))[:, None])
        (grads,) = torch.autograd.grad(picked.sum(), points)
        total = (grads.reshape(int(n_steps), len(x), -1) * steps[:, None, None]).sum(dim=0)
        out.append((total * diff).detach().double().numpy())
    full = np.concatenate(out) if out else np.zeros((0, _width(encoding)))
    return _per_feature(full, encoding) if len(full) else np.zeros((0, len(feature_columns(encoding))))


def attribution_norms(ensemble: nn.Module, X: np.ndarray, y: np.ndarray, *, encoding: dict,
                      n_steps: int = 32) -> np.ndarray:
    """L1 norm of each row's IG attributions to the probability of its true label, the
    statistic of the explanation-based membership attack (after Shokri et al. 2021, who
    found training records' explanations smaller and less varied: the model fits them, so
    their path from the baseline moves the true label's probability smoothly one way,
    while an unseen record's, often misjudged, pulls features against each other). The
    attack scores −norm: the smaller the explanation, the more member-like."""
    values = integrated_gradients_bulk(ensemble, X, encoding=encoding, targets=y, n_steps=n_steps)
    return np.abs(values).sum(axis=1)


def global_attributions(ensemble: nn.Module, X: np.ndarray, *, encoding: dict, n_steps: int = 32) -> list[dict]:
    """Mean |attribution| and mean signed attribution of each feature over the rows given
    (IG on each row's predicted class), most influential first."""
    X = np.asarray(X, dtype=np.float32)
    names = [name for name, _ in feature_columns(encoding)]
    if len(X) == 0:
        return [{"feature": name, "mean_abs": 0.0, "mean_signed": 0.0} for name in names]
    predicted = predict_proba(ensemble, X).argmax(axis=1)
    values = integrated_gradients_bulk(ensemble, X, encoding=encoding, targets=predicted, n_steps=n_steps)
    out = [{"feature": name, "mean_abs": float(np.abs(values[:, j]).mean()), "mean_signed": float(values[:, j].mean())}
           for j, name in enumerate(names)]
    return sorted(out, key=lambda r: (-r["mean_abs"], r["feature"]))


def _descale(spec: dict, value: float) -> float:
    lo, hi = float(spec["min"]), float(spec["max"])
    out = lo + float(value) * (hi - lo)
    return float(round(out)) if spec.get("type") == "int" else out


@_single_threaded
def counterfactual_hint(
    ensemble: nn.Module, x: np.ndarray, *, encoding: dict, actionable: list[str] | None = None,
) -> dict | None:
    """The smallest change of ONE actionable feature that flips the predicted class.

    A numeric feature moves only within its published bounds (one without bounds has no
    range to search and is left out), a category to another of its categories. Sizes are
    compared as a share of the feature's range (a category switch counts as 1, the whole
    range). ``from``/``to`` are in the dataset's units (de-scaled; an int rounded away from
    the original, still flipping). None when no single change flips the decision.
    """
    x = np.asarray(x, dtype=np.float32).reshape(-1)
    if len(x) != _width(encoding):
        raise ValueError(f"x: expected {_width(encoding)} encoded columns, got {len(x)}")
    specs = {spec["name"]: spec for spec in encoding.get("features") or []}
    allowed = set(specs) if actionable is None else set(actionable)
    unknown = sorted(allowed - set(specs))
    if unknown:
        raise ValueError(f"actionable: {unknown[0]!r} is not a feature of the model")
    current = int(predict_proba(ensemble, x)[0].argmax())
    # Every candidate is x with one feature changed: its columns, and the deltas from x.
    candidates: list[tuple[str, slice, list]] = []  # name, columns, options (categories or grid values)
    delta_rows: list[np.ndarray] = []
    delta_cols: list[np.ndarray] = []
    delta_values: list[np.ndarray] = []
    offset = 0
    for name, cols in feature_columns(encoding):
        if name not in allowed:
            continue
        spec = specs[name]
        if spec.get("type") == "category":
            k = cols.stop - cols.start
            here = int(np.argmax(x[cols])) if x[cols].max() > 0 else -1
            options = [c for c in range(k) if c != here]
            for r, c in enumerate(options):
                # The row with the category's columns set to the one-hot of option c.
                target = np.zeros(k, dtype=np.float32)
                target[c] = 1.0
                change = target - x[cols]
                nonzero = np.nonzero(change)[0]
                delta_rows.append(np.full(len(nonzero), offset + r))
                delta_cols.append(cols.start + nonzero)
                delta_values.append(change[nonzero])
            candidates.append((name, cols, options))
            offset += len(options)
        elif spec.get("min") is not None and spec.get("max") is not None:
            grid = np.linspace(0.0, 1.0, _CF_GRID, dtype=np.float32)
            delta_rows.append(offset + np.arange(len(grid)))
            delta_cols.append(np.full(len(grid), cols.start))
            delta_values.append(grid - x[cols.start])
            candidates.append((name, cols, list(grid)))
            offset += len(grid)
    if not candidates:
        return None
    predicted = _labels_of_changes(
        ensemble, x, n_rows=offset, rows=np.concatenate(delta_rows), columns=np.concatenate(delta_cols),
        values=np.concatenate(delta_values).astype(np.float32),
    )
    # Pass 1: where each candidate flips on the grid; numeric crossings are refined together.
    flipping: list[tuple[str, slice, list, np.ndarray, np.ndarray]] = []
    to_refine: list[tuple[int, float, float]] = []  # column, origin, nearest flipping grid value
    offset = 0
    for name, cols, options in candidates:
        labels = predicted[offset: offset + len(options)]
        offset += len(options)
        flips = np.nonzero(labels != current)[0]
        if not len(flips):
            continue
        flipping.append((name, cols, options, labels, flips))
        if specs[name].get("type") != "category":
            origin = float(x[cols.start])
            grid = np.asarray(options)
            r = int(flips[np.argmin(np.abs(grid[flips] - origin))])
            to_refine.append((cols.start, origin, float(grid[r])))
    refined = iter(_refine_all(ensemble, x, to_refine, current=current))
    best: tuple[float, dict] | None = None
    for name, cols, options, labels, flips in flipping:
        spec = specs[name]
        if spec.get("type") == "category":
            r = int(flips[0])
            here = int(np.argmax(x[cols])) if x[cols].max() > 0 else None
            hint = {"feature": name, "from": None if here is None else spec["categories"][here],
                    "to": spec["categories"][options[r]], "new_label_index": int(labels[r])}
            size = 1.0
        else:
            origin = float(x[cols.start])
            found = next(refined)
            if found is None:
                continue
            value, label = found
            to = _descale(spec, value)
            if spec.get("type") == "int":
                # Rounded away from the original so the rounded value still crosses the boundary.
                lo, hi = float(spec["min"]), float(spec["max"])
                raw = lo + value * (hi - lo)
                to = float(np.clip(np.ceil(raw) if value > origin else np.floor(raw), lo, hi))
                scaled = (to - lo) / (hi - lo)
                probe = x.copy()
                probe[cols.start] = scaled
                label = int(predict_proba(ensemble, probe)[0].argmax())
                if label == current:
                    continue
                value = scaled
            hint = {"feature": name, "from": _descale(spec, origin), "to": to, "new_label_index": int(label)}
            size = abs(value - origin)
        if best is None or size < best[0]:
            best = (size, hint)
    return None if best is None else best[1]


def _first_linear_layers(ensemble: nn.Module) -> list[tuple[nn.Linear, nn.Module]] | None:
    """Each shard as (its first Linear, the rest), when every shard is an ``nn.Sequential``
    that starts with one (the engine's MLPs); None for any other architecture."""
    shards = list(ensemble.shards) if isinstance(ensemble, Ensemble) else [ensemble]
    out = []
    for shard in shards:
        if not isinstance(shard, nn.Sequential) or not len(shard) or not isinstance(shard[0], nn.Linear):
            return None
        out.append((shard[0], shard[1:]))
    return out


def _labels_of_changes(ensemble: nn.Module, x: np.ndarray, *, n_rows: int, rows: np.ndarray,
                       columns: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The predicted class of ``n_rows`` candidates, each ``x`` plus the sparse deltas
    (``rows``, ``columns``, ``values``).

    A candidate differs from ``x`` in one or two columns, so an MLP's first layer is
    ``W x + b`` plus ``W`` times a sparse delta: computed as such it costs a few columns of
    ``W`` per candidate instead of the whole matrix (a quarter of the grid search for the
    100→256→256→2 MLP). The result is only a search: every hint found is re-checked by a
    plain forward (``_refine_all``), so rounding in this sum cannot make a false hint.
    """
    layers = _first_linear_layers(ensemble)
    if layers is None:
        dense = np.repeat(x[None, :], n_rows, axis=0)
        np.add.at(dense, (rows, columns), values)
        return predict_proba(ensemble, dense).argmax(axis=1)
    at_rows = torch.from_numpy(rows.astype(np.int64))
    at_columns = torch.from_numpy(columns.astype(np.int64))
    deltas = torch.from_numpy(values)[:, None]
    row = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None, :]
    probabilities = None
    with torch.no_grad():
        for first, rest in layers:
            # W·delta as a sum of W's columns, one or two per candidate (index_add_, not a
            # sparse matmul: torch's CPU sparse kernel took ~10 ms for 5,000 candidates).
            change = torch.zeros(n_rows, first.out_features).index_add_(
                0, at_rows, first.weight.t()[at_columns] * deltas)
            p = torch.softmax(rest(first(row) + change), dim=1)
            probabilities = p if probabilities is None else probabilities + p
    return probabilities.argmax(dim=1).numpy()


def _refine_all(ensemble: nn.Module, x: np.ndarray, searches: list[tuple[int, float, float]], *,
                current: int) -> list[tuple[float, int] | None]:
    """For each (column, origin, flipped): bisect between ``origin`` (the current class)
    and ``flipped`` (another class) for the point nearest the origin that still flips;
    (value, its class), or None when a plain forward at ``flipped`` does not flip.

    All searches step together, one forward of one row per search and step (the same
    bisection as one search at a time: each row changes only its own column)."""
    if not searches:
        return []
    k = len(searches)
    columns = np.array([c for c, _, _ in searches])
    near = np.array([o for _, o, _ in searches], dtype=np.float64)
    far = np.array([f for _, _, f in searches], dtype=np.float64)
    probe = np.repeat(np.asarray(x, dtype=np.float32).reshape(1, -1), k, axis=0)
    tensor = torch.from_numpy(probe)  # shares probe's memory: each write below is seen by the forward
    positions = np.arange(k)

    def labels_at(values: np.ndarray) -> np.ndarray:
        probe[positions, columns] = values
        with torch.no_grad():
            return ensemble(tensor).argmax(dim=1).numpy()

    label = labels_at(far)
    found = label != current
    for _ in range(_CF_BISECTIONS):
        middle = (near + far) / 2
        got = labels_at(middle)
        stays = got == current
        near = np.where(stays, middle, near)
        far = np.where(stays, far, middle)
        label = np.where(stays, label, got)
    return [(float(np.float32(far[i])), int(label[i])) if found[i] else None for i in range(k)]


def _band(p: float) -> str:
    return next(band for low, band in CONFIDENCE_BANDS if p >= low)


def present_output(probabilities: np.ndarray, classes: list, *, kind: str, digits: int = 2) -> list[dict]:
    """What a decision shows under an output policy, per row: full or rounded probabilities
    with the label, the label with a confidence band (``CONFIDENCE_BANDS``), or the label alone.
    Label-only and banded outputs carry no probability anywhere."""
    if kind not in OUTPUT_KINDS:
        raise ValueError(f"kind: must be one of {', '.join(OUTPUT_KINDS)}")
    if isinstance(digits, bool) or not isinstance(digits, int) or not 0 <= digits <= MAX_DIGITS:
        raise ValueError(f"digits: must be an integer from 0 to {MAX_DIGITS}")
    P = np.asarray(probabilities, dtype=np.float64)
    if P.ndim != 2 or P.shape[1] != len(classes):
        raise ValueError(f"probabilities: expected [n, {len(classes)}] for the classes given")
    # One argmax and one conversion to Python floats for the whole batch (10,000 rows' numpy
    # scalars converted one by one cost more than their forward pass); the same values.
    tops = P.argmax(axis=1).tolist() if len(P) else []
    names = [str(c) for c in classes]
    if kind == "full_probabilities":
        return [{"label": classes[top], "probabilities": dict(zip(names, row, strict=True))}
                for top, row in zip(tops, P.tolist(), strict=True)]
    if kind == "rounded_probabilities":
        return [{"label": classes[top], "probabilities": {c: round(p, digits) for c, p in zip(names, row, strict=True)}}
                for top, row in zip(tops, P.tolist(), strict=True)]
    if kind == "label_with_band":
        return [{"label": classes[top], "confidence_band": _band(row[top])} for top, row in zip(tops, P.tolist(), strict=True)]
    return [{"label": classes[top]} for top in tops]
