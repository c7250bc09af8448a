"""SISA training (Sharded, Isolated, Sliced, Aggregated; Bourtoule et al., 2021).

Subjects — not records — are split deterministically into S shards and, within a shard,
into R slices, so erasing a person touches one shard and retrains it only from the
checkpoint taken before that person's slice joined.

Stage r of a shard trains on the rows of slices 0..r, starting from the weights after
stage r−1, for ``max(1, round(2·E / (R + 1)))`` epochs (the paper's rule, so the whole
shard costs about as much as E epochs over it). Every stage starts a fresh optimiser
and seeds its sampler, noise and dropout from (seed, shard, r) alone, so resuming at
stage r from checkpoint r−1 is bit-identical to training from scratch.

Privacy accounting, per shard. Each stage is a DP-SGD run whose sample rate is
``batch_size / N_r`` (N_r rows in slices 0..r); a record of slice 0 takes part in every
stage, so the shard's guarantee is the sequential composition of all stages' accountant
histories. With ``target_epsilon`` one σ is chosen for the whole composed plan. Shards
hold disjoint sets of people, and a person's records only ever influence their own
shard's model, so by parallel composition the aggregated ensemble is
(max over shards ε, max over shards δ)-DP with respect to adding or removing one
person — not the sum.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy
import torch
from torch import nn

from mlops.engine import accounting
from mlops.engine.dp_train import EpochReport, TrainResult, predict_proba, train
from mlops.engine.spec import TrainConfig


@dataclass
class ShardResult:
    shard: int
    checkpoints: list[dict[str, torch.Tensor]]  # checkpoints[k] = weights after slice start_slice + k
    result: TrainResult
    start_slice: int = 0


def assign_shards(*, subject_ids: Sequence[int], shards: int, slices: int, seed: int) -> dict[int, tuple[int, int]]:
    """(shard, slice) for every subject, from sha256(f"{seed}:{subject_id}").

    Depends only on the subject's id and the seed, never on who else is in the snapshot,
    so a person's place does not move when others are added or erased.
    """
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise ValueError("shards: must be a positive integer")
    if isinstance(slices, bool) or not isinstance(slices, int) or slices < 1:
        raise ValueError("slices: must be a positive integer")
    assignment: dict[int, tuple[int, int]] = {}
    for subject_id in subject_ids:
        digest = hashlib.sha256(f"{seed}:{int(subject_id)}".encode()).digest()
        value = int.from_bytes(digest[:8], "big")
        assignment[int(subject_id)] = (value % shards, (value // shards) % slices)
    return assignment


def stage_epochs(*, epochs: int, slices: int) -> int:
    return max(1, round(2 * epochs / (slices + 1)))


def stage_seed(*, seed: int, shard: int, stage: int) -> int:
    digest = hashlib.sha256(f"sisa:{seed}:{shard}:{stage}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def shard_plan(*, slice_of_row: numpy.ndarray, slices: int, config: TrainConfig) -> list[tuple[float, int]]:
    """[(sample_rate, steps), ...] of every stage, for accounting before training."""
    plan = []
    epochs = stage_epochs(epochs=config.epochs, slices=slices)
    for r in range(slices):
        n_r = int(numpy.count_nonzero(slice_of_row <= r))
        if n_r == 0:
            continue
        batch = min(config.batch_size, n_r)
        plan.append((batch / n_r, epochs * max(1, int(n_r / batch))))
    return plan


def train_shard(
    *,
    X: torch.Tensor,
    y: torch.Tensor,
    slice_of_row: numpy.ndarray,
    slices: int,
    n_classes: int,
    config: TrainConfig,
    shard: int,
    start_slice: int = 0,
    init_state: dict | None = None,
    on_epoch: Callable[[EpochReport], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    train_metrics: bool = True,
) -> ShardResult:
    """Train one shard slice-incrementally, checkpointing after each slice.

    ``start_slice=r`` with ``init_state`` = checkpoint r−1 resumes; the accountant history
    of the skipped stages is re-derived from the plan so ε still covers the whole shard.
    To unlearn, pass the original run's σ as ``noise_multiplier`` (not ``target_epsilon``):
    the checkpoints were trained with it, and a σ re-derived from the smaller data would
    differ from it.
    A stage whose rows are fewer than ``batch_size`` trains with the whole stage as the
    expected batch. ``train_metrics=False``: no epoch reports a figure computed on the
    shard's training data (see ``dp_train.train``).
    """
    slice_of_row = numpy.asarray(slice_of_row)
    if slice_of_row.shape != (len(X),):
        raise ValueError("slice_of_row: must give one slice per row of X")
    if isinstance(slices, bool) or not isinstance(slices, int) or slices < 1:
        raise ValueError("slices: must be a positive integer")
    if len(slice_of_row) and (slice_of_row.min() < 0 or slice_of_row.max() >= slices):
        raise ValueError(f"slice_of_row: slices must lie in 0..{slices - 1}")
    if not 0 <= start_slice < slices:
        raise ValueError(f"start_slice: must lie in 0..{slices - 1}")
    if start_slice > 0 and init_state is None:
        raise ValueError("init_state: resuming at a later slice needs the previous slice's checkpoint")
    if len(X) == 0:
        raise ValueError("X: the shard holds no records")
    config.validate(len(X))
    if torch.unique(y).numel() < 2:
        raise ValueError("y: the shard holds a single class; a classifier needs at least two")

    plan = shard_plan(slice_of_row=slice_of_row, slices=slices, config=config)
    noise_multiplier: float | None = None
    if config.private:
        if config.noise_multiplier is not None:
            noise_multiplier = float(config.noise_multiplier)
        else:
            noise_multiplier = accounting.noise_multiplier_for_plan(
                target_epsilon=float(config.target_epsilon),
                target_delta=config.target_delta,
                plan=plan,
                accountant=config.accountant,
            )
    epochs = stage_epochs(epochs=config.epochs, slices=slices)
    row_index = torch.from_numpy(numpy.arange(len(X)))
    slice_tensor = torch.from_numpy(slice_of_row.astype(numpy.int64))

    history: list[list[float]] = []
    if noise_multiplier is not None:
        # Stages before start_slice ran in the original training; their cost still counts.
        for r in range(start_slice):
            n_r = int(numpy.count_nonzero(slice_of_row <= r))
            if n_r:
                batch = min(config.batch_size, n_r)
                history.append([noise_multiplier, batch / n_r, epochs * max(1, int(n_r / batch))])

    checkpoints: list[dict[str, torch.Tensor]] = []
    reports: list[EpochReport] = []
    state = init_state
    last: TrainResult | None = None
    stopped = False
    steps = 0
    for r in range(start_slice, slices):
        rows = row_index[slice_tensor <= r]
        if len(rows) == 0:
            # Nothing to learn yet: the checkpoint is the incoming state (or none).
            checkpoints.append({k: v.clone() for k, v in state.items()} if state is not None else {})
            continue
        stage_config = replace(
            config,
            epochs=epochs,
            batch_size=min(config.batch_size, len(rows)),
            seed=stage_seed(seed=config.seed, shard=shard, stage=r),
            noise_multiplier=noise_multiplier,
            target_epsilon=None,
        )
        offset = len(reports)
        prior_steps = steps

        def report(epoch: EpochReport, offset: int = offset, prior_steps: int = prior_steps) -> None:
            shifted = replace(epoch, epoch=offset + epoch.epoch, steps=prior_steps + epoch.steps)
            reports.append(shifted)
            if on_epoch is not None:
                on_epoch(shifted)

        last = train(
            X_train=X.index_select(0, rows),
            y_train=y.index_select(0, rows),
            X_val=None,
            y_val=None,
            n_classes=n_classes,
            config=stage_config,
            on_epoch=report,
            init_state=state,
            should_stop=should_stop,
            history_prefix=history,
            require_two_classes=False,
            train_metrics=train_metrics,
        )
        history = history + last.accountant_history
        steps += last.steps
        if last.stopped:
            # A half-trained stage is no checkpoint: resuming from it would not reproduce
            # training from scratch.
            stopped = True
            break
        state = last.state_dict
        checkpoints.append({k: v.clone() for k, v in state.items()})
    if last is None:
        raise ValueError("slice_of_row: no slice from start_slice on holds any record")

    epsilon = (
        accounting.epsilon_of_history(history=history, delta=config.target_delta, accountant=config.accountant)
        if config.private
        else float("inf")
    )
    return ShardResult(
        shard=shard,
        checkpoints=checkpoints,
        start_slice=start_slice,
        result=replace(
            last,
            epochs=reports,
            noise_multiplier=noise_multiplier,
            steps=steps,
            accountant_history=history,
            epsilon=epsilon,
            delta=config.target_delta,
            stopped=stopped,
        ),
    )


def ensemble_epsilon(*, shard_epsilons: Sequence[float]) -> float:
    """Parallel composition: shards are disjoint by person, so the ensemble's ε is the maximum."""
    if not shard_epsilons:
        raise ValueError("shard_epsilons: the ensemble has no shards")
    return float(max(shard_epsilons))


def ensemble_predict_proba(*, models: list[nn.Module], X: torch.Tensor) -> torch.Tensor:
    """Mean of the shard models' class probabilities."""
    if not models:
        raise ValueError("models: the ensemble has no shard models")
    return torch.stack([predict_proba(model=m, X=X) for m in models]).mean(0)
