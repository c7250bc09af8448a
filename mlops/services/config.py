"""How a run is configured and what its privacy will cost, computed before it is queued.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from governance.services import ServiceError
from mlops.engine.spec import TrainConfig
from mlops.models import (
    TrainingRun,
)

logger = logging.getLogger(__name__)

# Errors the engine raises as "<field>: <reason>" for fields that the API groups.
_ENGINE_FIELD_TO_API = {
    "hidden_sizes": "model_spec",
    "activation": "model_spec",
    "dropout": "model_spec",
    "n_features": "snapshot",
    "n_train": "snapshot",
    "n_classes": "snapshot",
    "plan": "snapshot",
}
MODEL_SPEC_KEYS = frozenset({"hidden_sizes", "activation", "dropout"})
MAX_SISA_SHARDS = 64
MAX_SISA_SLICES = 32


def _engine_error(exc: ValueError) -> ServiceError:
    message = str(exc)
    prefix, _, reason = message.partition(":")
    prefix = prefix.strip()
    if reason and prefix.isidentifier():
        return ServiceError(message, field=_ENGINE_FIELD_TO_API.get(prefix, prefix))
    return ServiceError(message)


@dataclass
class _Plan:
    """The privacy cost a run is expected to have, computed before it is queued."""

    noise_multiplier: float | None
    sample_rate: float | None
    steps: int | None
    epsilon: float | None  # by the run's own accountant at its δ; None = ∞
    rdp: np.ndarray | None  # the ledger's RDP curve; None = non-private
    shard_sizes: list[int] = field(default_factory=list)
    shard_noise_multipliers: list[float] | None = None


def _train_config(run: TrainingRun) -> TrainConfig:
    spec = run.model_spec or {}
    return TrainConfig(
        task=run.task,
        hidden_sizes=list(spec.get("hidden_sizes", [64])),
        activation=spec.get("activation", "relu"),
        dropout=spec.get("dropout", 0.0),
        optimizer=run.optimizer,
        learning_rate=run.learning_rate,
        epochs=run.epochs,
        batch_size=run.batch_size,
        seed=run.seed,
        max_grad_norm=run.max_grad_norm,
        # The engine derives σ from the target itself (per shard for SISA, where shard sizes differ).
        noise_multiplier=run.requested_noise_multiplier if not run.allow_non_private else None,
        target_epsilon=run.target_epsilon if not run.allow_non_private else None,
        target_delta=run.target_delta,
        accountant=run.accountant,
        private=not run.allow_non_private,
    )


def _schema_for(run: TrainingRun, schema: dict) -> dict:
    """The dataset schema, with the category lists the run was trained with once known."""
    features = run.encoding.get("features")
    if not features:
        return schema
    return {"features": features, "label": schema.get("label")}


def _default_delta(n: int) -> float:
    # Well below 1/N, the usual choice (δ ≪ 1/N) so no single record can leak outright.
    return min(1e-5, 0.1 / max(n, 1))


def _plan_single(*, config: TrainConfig, n_train: int) -> _Plan:
    from mlops.engine import accounting

    sample_rate = config.sample_rate(n_train)
    steps = config.total_steps(n_train)
    if not config.private:
        return _Plan(None, sample_rate, steps, None, None)
    sigma = config.noise_multiplier
    if sigma is None:
        sigma = accounting.noise_multiplier_for(
            target_epsilon=config.target_epsilon,
            target_delta=config.target_delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=config.accountant,
        )
    history = [[sigma, sample_rate, steps]]
    epsilon = accounting.epsilon_of_history(history=history, delta=config.target_delta, accountant=config.accountant)
    rdp = np.asarray(accounting.rdp_curve(noise_multiplier=sigma, sample_rate=sample_rate, steps=steps))
    return _Plan(sigma, sample_rate, steps, epsilon, rdp)


def _sisa_stage_plan(*, config: TrainConfig, slice_sizes: list[int]) -> list[tuple[float, int]]:
    """[(sample_rate, steps)] of a shard's stages, exactly as the engine will train them."""
    from mlops.engine import sisa

    slice_of_row = np.repeat(np.arange(len(slice_sizes)), slice_sizes)
    return [tuple(p) for p in sisa.shard_plan(slice_of_row=slice_of_row, slices=len(slice_sizes), config=config)]


def _plan_sisa(*, config: TrainConfig, shard_slice_sizes: list[list[int]]) -> _Plan:
    """Per-shard plans; shards are disjoint by person, so the ensemble's ε is the maximum."""
    from mlops.engine import accounting

    if not config.private:
        return _Plan(None, None, None, None, None, [sum(s) for s in shard_slice_sizes])
    worst_eps, worst_sigma, worst_rdp = 0.0, None, None
    sigmas: list[float] = []
    for slice_sizes in shard_slice_sizes:
        plan = _sisa_stage_plan(config=config, slice_sizes=slice_sizes)
        sigma = config.noise_multiplier
        if sigma is None:
            sigma = accounting.noise_multiplier_for_plan(
                target_epsilon=config.target_epsilon, target_delta=config.target_delta, plan=plan,
                accountant=config.accountant,
            )
        sigmas.append(float(sigma))
        history = [[sigma, q, steps] for q, steps in plan]
        eps = accounting.epsilon_of_history(history=history, delta=config.target_delta, accountant=config.accountant)
        rdp = np.asarray(accounting.rdp_curve_of_history(history=history))
        worst_rdp = rdp if worst_rdp is None else np.maximum(worst_rdp, rdp)
        if eps >= worst_eps:
            worst_eps, worst_sigma = eps, sigma
    return _Plan(worst_sigma, None, None, worst_eps, worst_rdp, [sum(s) for s in shard_slice_sizes], sigmas)


def _check_number(value: Any, name: str, *, low: float | None = None, high: float | None = None,
                  low_inclusive: bool = True, high_inclusive: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ServiceError(f"{name}: must be a number", field=name)
    if low is not None and (value < low or (value == low and not low_inclusive)):
        raise ServiceError(f"{name}: must be {'at least' if low_inclusive else 'above'} {low}", field=name)
    if high is not None and (value > high or (value == high and not high_inclusive)):
        raise ServiceError(f"{name}: must be {'at most' if high_inclusive else 'below'} {high}", field=name)


def privacy_arguments_check(
    *,
    target_epsilon: Any,
    noise_multiplier: Any,
    target_delta: Any,
    max_grad_norm: Any,
    allow_non_private: bool,
    bounded: bool = True,
) -> None:
    """The privacy arguments of a run, internal or external (one rule for both): each a
    number in its range, and non-private training with neither ε nor σ. A 400 naming the
    field otherwise. ``bounded=False`` (a remediation retrain repeating a run accepted
    before the bounds existed) checks only the lower bounds, so an erasure never fails on them.
    Whether ε or σ must be given is the caller's: an internal run may give neither."""
    from mlops.engine.accounting import MAX_SIGMA, MAX_TARGET_DELTA, MAX_TARGET_EPSILON

    if target_epsilon is not None:
        _check_number(target_epsilon, "target_epsilon", low=0.0, low_inclusive=False,
                      high=MAX_TARGET_EPSILON if bounded else None, high_inclusive=True)
    if noise_multiplier is not None:
        _check_number(noise_multiplier, "noise_multiplier", low=0.0, low_inclusive=False,
                      high=MAX_SIGMA if bounded else None, high_inclusive=True)
    if target_delta is not None and bounded:
        _check_number(target_delta, "target_delta", low=0.0, low_inclusive=False,
                      high=MAX_TARGET_DELTA, high_inclusive=True)
    _check_number(max_grad_norm, "max_grad_norm", low=0.0, low_inclusive=False)
    if allow_non_private and (target_epsilon is not None or noise_multiplier is not None):
        raise ServiceError(
            "target_epsilon: non-private training takes no target_epsilon or noise_multiplier", field="target_epsilon"
        )


def _json_number(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value
