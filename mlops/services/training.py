"""Training a claimed run: reading its data, the single-model and SISA procedures, and the
progress reports. No transactions here: ``execution`` claims the run before and registers
its model after (three short transactions around minutes of training).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from mlops import artifacts, data
from mlops.models import RunStatus, SisaAssignment, SisaCheckpoint, TrainingRun
from mlops.services.config import _json_number, _schema_for, _train_config
from mlops.signals import training_run_progress


class _Cancelled(Exception):
    pass


class _Superseded(Exception):
    """Another worker took the run over (this one's lease lapsed): leave everything to it."""


ProgressCallback = Callable[[dict], None]


def _still_ours(run: TrainingRun) -> bool:
    """Still running under this attempt; raises _Superseded if another worker took it over."""
    status, attempts = TrainingRun.objects.filter(pk=run.pk).values_list("status", "attempts").get()
    if attempts != run.attempts:
        # Whatever the status now (running, or already succeeded under the newer attempt).
        raise _Superseded()
    return status == RunStatus.RUNNING


@dataclass
class _Outcome:
    state_dict: dict
    metrics: dict
    epsilon: float | None
    noise_multiplier: float | None
    sample_rate: float | None
    steps: int | None
    history: Any
    rdp: np.ndarray | None
    sisa_assignments: list[SisaAssignment] = field(default_factory=list)
    sisa_checkpoints: list[SisaCheckpoint] = field(default_factory=list)


class _ProgressReporter:
    """Writes progress to the run row and the caller's callback after every epoch."""

    def __init__(self, run: TrainingRun, on_progress: ProgressCallback | None):
        self.run = run
        self.on_progress = on_progress
        self.metrics: list[dict] = []
        self.steps_done = 0
        self._last_check = 0.0
        self._cancelled = False

    def epoch(self, report, *, shard: int | None = None, epochs: int | None = None) -> None:
        self.steps_done = int(report.steps)  # the engine reports cumulative steps
        row = {
            "epoch": report.epoch, "steps": report.steps, "loss": _json_number(report.loss),
            "train_accuracy": report.train_accuracy, "val_accuracy": report.val_accuracy,
            "epsilon": _json_number(report.epsilon),
        }
        if shard is not None:
            row["shard"] = shard
        self.metrics.append(row)
        progress = {"epoch": report.epoch, "epochs": epochs or self.run.epochs, "step": self.steps_done,
                    "epsilon": _json_number(report.epsilon)}
        if shard is not None:
            progress.update(shard=shard, shards=self.run.sisa["shards"])
        TrainingRun.objects.filter(pk=self.run.pk, status=RunStatus.RUNNING, attempts=self.run.attempts).update(
            progress=progress, epoch_metrics=self.metrics
        )
        if self.on_progress is not None:
            self.on_progress({"run_id": self.run.pk, **progress})
        # Robust: a failing watcher must not fail the training (Django logs its error).
        training_run_progress.send_robust(sender=TrainingRun, run_id=self.run.pk, progress=progress)

    def should_stop(self) -> bool:
        # At most one query a second: cancellation need not be instant, training steps are.
        now = time.monotonic()
        if now - self._last_check >= 1.0:
            self._last_check = now
            self._cancelled = not _still_ours(self.run)
        return self._cancelled


def _read_training_data(run: TrainingRun):
    """The run's tensors and split, recording first how many amendments its snapshot had:
    counted before the rows are read, so an amendment committed meanwhile is never taken
    as seen (the run then counts as holding the people it removed, which is the safe side)."""
    from provenance.selectors import snapshot_amendment_count

    seen = snapshot_amendment_count(snapshot_id=run.snapshot_id)
    TrainingRun.objects.filter(pk=run.pk).update(trained_on_amendment=seen)
    run.trained_on_amendment = seen
    return _split_tensors(run)


def _split_tensors(run: TrainingRun):
    dataset = run.snapshot.dataset
    tensors = data.snapshot_tensors(
        snapshot_id=run.snapshot_id, schema=_schema_for(run, dataset.schema), classes=run.encoding["classes"]
    )
    split = data.subject_split(
        subject_ids=tensors.subject_ids, seed=run.seed,
        validation_split=run.validation_split, holdout_fraction=run.holdout_fraction,
    )
    labelled = tensors.y >= 0
    return tensors, split, labelled


def _train_single(run: TrainingRun, reporter: _ProgressReporter) -> _Outcome:
    import torch

    from mlops.engine import accounting, dp_train

    tensors, split, labelled = _read_training_data(run)
    train = labelled & (split == data.SPLIT_TRAIN)
    val = labelled & (split == data.SPLIT_VALIDATION)
    config = _train_config(run)
    result = dp_train.train(
        X_train=torch.from_numpy(tensors.X[train]), y_train=torch.from_numpy(tensors.y[train]),
        X_val=torch.from_numpy(tensors.X[val]) if val.any() else None,
        y_val=torch.from_numpy(tensors.y[val]) if val.any() else None,
        n_classes=run.n_classes, config=config, on_epoch=reporter.epoch, should_stop=reporter.should_stop,
        train_metrics=run.release_training_metrics,
    )
    if result.stopped or not _still_ours(run):
        raise _Cancelled()
    run.encoding = {**run.encoding, **tensors.encoding}  # keeps the split rule recorded at queue time
    last = result.epochs[-1] if result.epochs else None
    state_dict = artifacts.strip_wrapper_prefix(result.state_dict)
    train_accuracy = None
    if run.release_training_metrics and train.any():
        # The model's own figure on its training data, of the final weights as the validation
        # figure is (and as the SISA path computes it): the epochs' figures are running ones,
        # taken as the weights moved, and would understate the gap a DPO reads for memorisation.
        final = dp_train.load_model(state_dict=state_dict, n_features=tensors.X.shape[1], n_classes=run.n_classes,
                                    config=config)
        proba = dp_train.predict_proba(model=final, X=torch.from_numpy(tensors.X[train]))
        train_accuracy = float((proba.argmax(dim=1).numpy() == tensors.y[train]).mean())
    metrics = {
        "loss": _json_number(last.loss) if last else None,
        "train_accuracy": train_accuracy,
        "val_accuracy": last.val_accuracy if last else None,
        "n_train": int(train.sum()), "n_validation": int(val.sum()), "n_holdout": run.n_holdout,
    }
    rdp = None
    if config.private:
        rdp = np.asarray(accounting.rdp_curve_of_history(history=result.accountant_history))
    return _Outcome(
        state_dict=state_dict, metrics=metrics,
        epsilon=result.epsilon if config.private else None, noise_multiplier=result.noise_multiplier,
        sample_rate=result.sample_rate, steps=result.steps, history=result.accountant_history, rdp=rdp,
    )


def _train_sisa(run: TrainingRun, reporter: _ProgressReporter) -> _Outcome:
    import torch

    from mlops.engine import accounting, sisa
    from mlops.engine.models import build_model

    tensors, split, labelled = _read_training_data(run)
    run.encoding = {**run.encoding, **tensors.encoding}  # keeps the split rule recorded at queue time
    train = labelled & (split == data.SPLIT_TRAIN)
    val = labelled & (split == data.SPLIT_VALIDATION)
    shards, slices = run.sisa["shards"], run.sisa["slices"]
    config = _train_config(run)
    subject_ids = tensors.subject_ids[train]
    unique_subjects, inverse = np.unique(subject_ids, return_inverse=True)
    assignment = sisa.assign_shards(subject_ids=[int(s) for s in unique_subjects], shards=shards, slices=slices, seed=run.seed)
    placed = np.array([assignment[int(s)] for s in unique_subjects], dtype=np.int64).reshape(-1, 2)
    shard_of_row, slice_of_row = placed[inverse, 0], placed[inverse, 1]
    X_train, y_train = tensors.X[train], tensors.y[train]

    run_dir = artifacts.run_dir_relative(run.pk)
    ensemble_state: dict = {}
    checkpoints: list[SisaCheckpoint] = []
    histories: dict[str, Any] = {}
    shard_eps: list[float] = []
    curves: list[np.ndarray] = []
    sigmas: list[float] = []
    models = []
    for shard in range(shards):
        rows = shard_of_row == shard
        shard_config = config
        if config.private and run.shard_noise_multipliers:
            # σ was derived per shard at queue time; passing it spares a second bisection.
            shard_config = replace(config, noise_multiplier=run.shard_noise_multipliers[shard], target_epsilon=None)
        result = sisa.train_shard(
            X=torch.from_numpy(X_train[rows]), y=torch.from_numpy(y_train[rows]), slice_of_row=slice_of_row[rows],
            slices=slices, n_classes=run.n_classes, config=shard_config, shard=shard,
            on_epoch=lambda report, shard=shard: reporter.epoch(report, shard=shard),
            should_stop=reporter.should_stop, train_metrics=run.release_training_metrics,
        )
        if result.result.stopped or reporter.should_stop():
            raise _Cancelled()
        for slice_, state in enumerate(result.checkpoints):
            relative = f"{run_dir}/shard-{shard}-slice-{slice_}.safetensors"
            digest = artifacts.save_weights(relative=relative, state_dict=artifacts.strip_wrapper_prefix(state))
            checkpoints.append(SisaCheckpoint(
                training_run=run, shard=shard, slice=slice_, artifact_path=relative, artifact_sha256=digest,
                n_records=int((rows & (slice_of_row <= slice_)).sum()),
            ))
        final = artifacts.strip_wrapper_prefix(result.result.state_dict)
        ensemble_state.update({f"shard{shard}.{k}": v for k, v in final.items()})
        model = build_model(n_features=tensors.X.shape[1], n_classes=run.n_classes, config=config)
        model.load_state_dict(final)
        models.append(model)
        histories[str(shard)] = result.result.accountant_history
        if config.private:
            shard_eps.append(result.result.epsilon)
            curves.append(np.asarray(accounting.rdp_curve_of_history(history=result.result.accountant_history)))
            sigmas.append(result.result.noise_multiplier or 0.0)
        if config.private:
            # ε of checkpoint r is the composition of stages 0..r only.
            stages = sisa.shard_plan(slice_of_row=slice_of_row[rows], slices=slices, config=config)
            sigma = result.result.noise_multiplier
            for checkpoint in checkpoints[len(checkpoints) - len(result.checkpoints):]:
                history = [[sigma, q, steps] for q, steps in stages[: checkpoint.slice + 1]]
                checkpoint.epsilon = accounting.epsilon_of_history(
                    history=history, delta=config.target_delta, accountant=config.accountant
                )
    val_accuracy = None
    if val.any():
        proba = sisa.ensemble_predict_proba(models=models, X=torch.from_numpy(tensors.X[val]))
        val_accuracy = float((proba.argmax(dim=1).numpy() == tensors.y[val]).mean())
    train_accuracy = None
    if run.release_training_metrics:  # a figure on training data, outside ε: only when asked for
        proba_train = sisa.ensemble_predict_proba(models=models, X=torch.from_numpy(X_train))
        train_accuracy = float((proba_train.argmax(dim=1).numpy() == y_train).mean())
    assignments = [
        SisaAssignment(training_run=run, subject_id=int(s), shard=int(p[0]), slice=int(p[1]))
        for s, p in zip(unique_subjects.tolist(), placed.tolist(), strict=True)
    ]
    metrics = {
        "train_accuracy": train_accuracy, "val_accuracy": val_accuracy, "n_train": int(train.sum()),
        "n_validation": int(val.sum()), "n_holdout": run.n_holdout, "shards": shards, "slices": slices,
        "shard_epsilons": shard_eps,
    }
    return _Outcome(
        state_dict=ensemble_state, metrics=metrics,
        epsilon=max(shard_eps) if config.private else None,
        noise_multiplier=min(sigmas) if sigmas else None, sample_rate=None, steps=None, history=histories,
        rdp=np.max(np.vstack(curves), axis=0) if curves else None,
        sisa_assignments=assignments, sisa_checkpoints=checkpoints,
    )


