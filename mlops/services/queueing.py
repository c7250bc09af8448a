"""Queueing training runs: validated, planned and reserved against the dataset's budget.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import numpy as np
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from governance.dispatch import task_dispatch_on_commit, tasks_redispatch, unsent_cutoff, unstarted_cutoff
from governance.leases import lease_cutoff
from governance.models import Purpose
from governance.services import ServiceConflict, ServiceError, audit_event_record
from mlops import data
from mlops.engine.accounting import MAX_TARGET_EPSILON
from mlops.engine.spec import ACCOUNTANTS, TASKS, TrainConfig
from mlops.models import (
    Executor,
    RunStatus,
    TrainingRun,
)
from mlops.services.budget import _ledger_reserve
from mlops.services.config import (
    MAX_SISA_SHARDS,
    MAX_SISA_SLICES,
    MODEL_SPEC_KEYS,
    _check_number,
    _default_delta,
    _engine_error,
    _plan_single,
    _plan_sisa,
    privacy_arguments_check,
)
from provenance.integrity import snapshot_verify, verification_failed_message
from provenance.models import Dataset, Snapshot

logger = logging.getLogger(__name__)



def snapshot_trainable_check(*, snapshot: Snapshot) -> None:
    """Refuse (409) to train on ``snapshot`` unless it is current and everyone still in it
    is covered for its purpose now (``provenance.services.usable``, the rule the export to
    train elsewhere follows too). Every path that starts training on an existing snapshot
    calls this."""
    from provenance.services.usable import snapshot_use_refuse

    snapshot_use_refuse(snapshot=snapshot, use="train")


def _refuse_rectified(snapshot: Snapshot) -> None:
    """A new run is refused (409) on a snapshot holding records rectified since (Art. 16):
    it would train on values known to be wrong, and its model would be stale on arrival.
    Remediation runs retrain lineages as their policies say and are not stopped here; a
    run queued before a rectification is registered stale (mlops.services.rectification)."""
    from provenance.services.usable import snapshot_rectified_refuse

    snapshot_rectified_refuse(snapshot=snapshot)


def given_snapshot_check(*, snapshot: Snapshot, remediation: bool = False) -> None:
    """Refuse (409) to train on a snapshot the caller named, for internal and external runs
    alike: altered since it was taken, a reconstruction, people in it no longer covered
    now, or (outside a remediation) holding records rectified since."""
    # A given snapshot may have been altered in the database since it was taken: train
    # only on one whose records still hash to its root (one pass over the members). A
    # snapshot taken by the request itself was computed from the records just now.
    verification = snapshot_verify(snapshot_id=snapshot.pk)
    if not verification.ok:
        raise ServiceConflict(
            verification_failed_message(verification), field="snapshot",
            first_difference=verification.first_difference,
        )
    # After the integrity check, whose answer names what was altered: a snapshot taken by
    # the request was computed from the ledger just now and needs neither.
    snapshot_trainable_check(snapshot=snapshot)
    if not remediation:
        _refuse_rectified(snapshot)


def _resolve_snapshot(*, snapshot: Snapshot | int | None, dataset: Dataset | int | None, purpose, requested_by) -> Snapshot:
    if snapshot is not None:
        if isinstance(snapshot, Snapshot):
            return snapshot
        found = Snapshot.objects.select_related("dataset").filter(pk=snapshot).first()
        if found is None:
            raise ServiceError(f"Snapshot {snapshot} does not exist.", field="snapshot")
        return found
    if dataset is None:
        raise ServiceError("Give a snapshot, or a dataset and a purpose to take one now.", field="snapshot")
    if not isinstance(dataset, Dataset):
        found_dataset = Dataset.objects.filter(pk=dataset).first()
        if found_dataset is None:
            raise ServiceError(f"Dataset {dataset} does not exist.", field="dataset")
        dataset = found_dataset
    if purpose is None:
        raise ServiceError("A purpose is required to take a snapshot of the dataset.", field="purpose")
    if not isinstance(purpose, Purpose):
        found_purpose = Purpose.objects.filter(code=purpose).first()
        if found_purpose is None:
            raise ServiceError(f"Unknown purpose {purpose!r}.", field="purpose")
        purpose = found_purpose
    try:
        from provenance.services import snapshot_create
    except ImportError:
        raise ServiceError("Snapshots cannot be taken here yet; give an existing snapshot.", field="snapshot")
    return snapshot_create(dataset=dataset, purpose=purpose, requested_by=requested_by)


@transaction.atomic
def training_run_queue(
    *,
    snapshot: Snapshot | int | None = None,
    dataset: Dataset | int | None = None,
    purpose: Purpose | str | None = None,
    name: str = "",
    task: str = "binary",
    model_spec: dict | None = None,
    optimizer: str = "sgd",
    learning_rate: float = 0.1,
    epochs: int = 5,
    batch_size: int = 256,
    seed: int = 0,
    validation_split: float = 0.1,
    holdout_fraction: float = 0.2,
    target_epsilon: float | None = None,
    noise_multiplier: float | None = None,
    target_delta: float | None = None,
    max_grad_norm: float = 1.0,
    accountant: str = "rdp",
    allow_non_private: bool = False,
    release_training_metrics: bool = True,
    sisa: dict | None = None,
    requested_by: Any = None,
    queue: str | None = None,
    enqueue: bool = True,
    remediates: Any = None,
) -> TrainingRun:
    """Validate a training request, check it against the dataset's budget, queue it.

    Refuses (400, naming the field) what cannot train or would not give the promised
    guarantee, and (409, with cap, spent, reserved and planned ε) what would exceed the
    dataset's privacy budget. Nothing is written when it refuses. ``queue`` routes the
    task to a dedicated Celery queue (e.g. workers with more memory).
    ``release_training_metrics=False``: the run releases no figure computed on its training
    data (those are outside ε), only validation figures.
    """
    if task not in TASKS:
        raise ServiceError(f"task: must be one of {', '.join(TASKS)}", field="task")
    if accountant not in ACCOUNTANTS:
        raise ServiceError(f"accountant: must be one of {', '.join(ACCOUNTANTS)}", field="accountant")
    spec = dict(model_spec or {})
    unknown = sorted(set(spec) - MODEL_SPEC_KEYS)
    if unknown:
        raise ServiceError(f"model_spec: unknown option {unknown[0]!r}", field="model_spec")
    _check_number(validation_split, "validation_split", low=0.0, high=0.5)
    _check_number(holdout_fraction, "holdout_fraction", low=0.0, high=0.5)
    # Bounded before any accounting: the σ search runs inside the request (issue 14). A
    # remediation retrain repeats a run accepted before these bounds existed, and an erasure
    # must not fail on them (the search itself is bounded in the engine either way).
    bounded = remediates is None
    privacy_arguments_check(target_epsilon=target_epsilon, noise_multiplier=noise_multiplier,
                            target_delta=target_delta, max_grad_norm=max_grad_norm,
                            allow_non_private=allow_non_private, bounded=bounded)
    if not isinstance(release_training_metrics, bool):
        raise ServiceError("release_training_metrics: must be true or false", field="release_training_metrics")
    if sisa is not None:
        if not isinstance(sisa, dict) or set(sisa) != {"shards", "slices"}:
            raise ServiceError('sisa: must be {"shards": S, "slices": R}', field="sisa")
        for key, limit in (("shards", MAX_SISA_SHARDS), ("slices", MAX_SISA_SLICES)):
            value = sisa[key]
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
                raise ServiceError(f"sisa: {key} must be an integer from 1 to {limit}", field="sisa")

    snap = _resolve_snapshot(snapshot=snapshot, dataset=dataset, purpose=purpose, requested_by=requested_by)
    labels = data.snapshot_labels(snapshot_id=snap.pk)
    if not labels.labels:
        raise ServiceError(f"Snapshot {snap.pk} has no records: nothing to train on.", field="snapshot")
    classes = data.label_classes(labels.labels)
    if len(classes) < 2:
        raise ServiceError(
            f"Snapshot {snap.pk} has {len(classes)} class(es) only; classification needs at least two.",
            field="snapshot",
        )
    if task == "binary" and len(classes) != 2:
        raise ServiceError(f"task: binary classification needs two classes, the snapshot has {len(classes)}", field="task")
    if snapshot is not None:
        given_snapshot_check(snapshot=snap, remediation=remediates is not None)
    labelled = np.array([v is not None for v in labels.labels])
    split = data.subject_split(
        subject_ids=labels.subject_ids, seed=seed if isinstance(seed, int) else 0,
        validation_split=validation_split, holdout_fraction=holdout_fraction,
    )
    train_mask = labelled & (split == data.SPLIT_TRAIN)
    n_train = int(train_mask.sum())
    n_validation = int((labelled & (split == data.SPLIT_VALIDATION)).sum())
    n_holdout = int((labelled & (split == data.SPLIT_HOLDOUT)).sum())
    if n_train == 0:
        raise ServiceError("No records are left for training after the validation and hold-out split.", field="snapshot")
    max_records_per_person = data.max_records_per_person(subject_ids=labels.subject_ids[train_mask])

    shard_slice_sizes: list[list[int]] = []
    if sisa is not None:
        from mlops.engine import sisa as engine_sisa

        train_subjects = labels.subject_ids[train_mask]
        unique_subjects, counts = np.unique(train_subjects, return_counts=True)
        assignment = engine_sisa.assign_shards(
            subject_ids=[int(s) for s in unique_subjects], shards=sisa["shards"], slices=sisa["slices"], seed=seed
        )
        sizes = np.zeros((sisa["shards"], sisa["slices"]), dtype=np.int64)
        for subject_id, count in zip(unique_subjects.tolist(), counts.tolist(), strict=True):
            shard, slice_ = assignment[subject_id]
            sizes[shard, slice_] += count
        shard_slice_sizes = sizes.tolist()
        smallest = int(sizes.sum(axis=1).min())
        if smallest == 0:
            raise ServiceError("sisa: a shard would receive no records; use fewer shards", field="sisa")

    if target_delta is None:
        target_delta = _default_delta(n_train)
    config_values = {
        "task": task, "hidden_sizes": spec.get("hidden_sizes", [64]), "activation": spec.get("activation", "relu"),
        "dropout": spec.get("dropout", 0.0), "optimizer": optimizer, "learning_rate": learning_rate,
        "epochs": epochs, "batch_size": batch_size, "seed": seed, "max_grad_norm": max_grad_norm,
        "noise_multiplier": noise_multiplier, "target_epsilon": target_epsilon, "target_delta": target_delta,
        "accountant": accountant, "private": not allow_non_private,
    }
    try:
        config = TrainConfig.from_dict(config_values)
        # Each SISA shard is its own DP release, so δ < 1/N must hold for the smallest shard.
        config.validate(min(sum(s) for s in shard_slice_sizes) if shard_slice_sizes else n_train)
        from mlops.engine.models import build_model

        build_model(n_features=max(1, data.n_input_features(snap.dataset.schema)), n_classes=len(classes), config=config)
        if shard_slice_sizes:
            plan = _plan_sisa(config=config, shard_slice_sizes=shard_slice_sizes)
        else:
            plan = _plan_single(config=config, n_train=n_train)
    except ValueError as exc:
        raise _engine_error(exc)
    if bounded and plan.epsilon is not None and plan.epsilon > MAX_TARGET_EPSILON:
        # A given σ that buys almost no privacy: the same bound as for a target ε.
        raise ServiceError(
            f"noise_multiplier: gives ε = {plan.epsilon:.4g} at δ = {target_delta:g}, above the most a private "
            f"run may spend ({MAX_TARGET_EPSILON:g}); add noise, or train with allow_non_private",
            field="noise_multiplier",
        )

    run = TrainingRun.objects.create(
        name=name or snap.dataset.name,
        snapshot=snap,
        task=task,
        model_spec={"hidden_sizes": list(config.hidden_sizes), "activation": config.activation, "dropout": config.dropout},
        optimizer=optimizer,
        learning_rate=learning_rate,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        validation_split=validation_split,
        holdout_fraction=holdout_fraction,
        target_epsilon=target_epsilon,
        requested_noise_multiplier=noise_multiplier,
        target_delta=target_delta,
        max_grad_norm=max_grad_norm,
        accountant=accountant,
        allow_non_private=allow_non_private,
        release_training_metrics=release_training_metrics,
        sisa=sisa,
        requested_by=requested_by if getattr(requested_by, "pk", None) else None,
        remediates=remediates,
        celery_task_id=str(uuid.uuid4()),
        n_train=n_train,
        n_validation=n_validation,
        n_holdout=n_holdout,
        max_records_per_person=max_records_per_person,
        n_classes=len(classes),
        planned_epsilon=plan.epsilon,
        noise_multiplier=plan.noise_multiplier,
        shard_noise_multipliers=plan.shard_noise_multipliers,
        sample_rate=plan.sample_rate,
        steps=plan.steps,
        delta=target_delta,
        encoding={
            "classes": classes,
            "split": data.person_split_rule(validation_split=validation_split, holdout_fraction=holdout_fraction),
        },
    )
    ledger_numbers = _ledger_reserve(run=run, dataset_id=snap.dataset_id, plan=plan)
    audit_event_record(
        actor=requested_by,
        action="training_run.queued",
        object_type="training_run",
        object_id=run.pk,
        details={
            "snapshot": snap.pk, "dataset": snap.dataset_id, "private": not allow_non_private,
            "release_training_metrics": release_training_metrics,
            "planned_epsilon": plan.epsilon, "delta": target_delta, "noise_multiplier": plan.noise_multiplier,
            "accountant": accountant, "sisa": sisa, "n_train": n_train, "n_holdout": n_holdout, **ledger_numbers,
        },
    )
    if enqueue:
        # enqueue=False is for a caller that runs training_run_execute itself (erasure remediation).
        _enqueue_training(run_id=run.pk, task_id=run.celery_task_id, queue=queue)
    return run


def _enqueue_training(*, run_id: int, task_id: str, queue: str | None) -> None:
    # The run row is the outbox entry (governance.dispatch): sent after the commit, and by
    # the redispatch sweeper if the broker was down.
    from mlops.tasks import train_model

    if queue:
        TrainingRun.objects.filter(pk=run_id).update(dispatch_queue=queue)
    task_dispatch_on_commit(
        train_model, args=[run_id], task_id=task_id, queue=queue,
        outbox=TrainingRun.objects.filter(pk=run_id),
    )


def training_runs_redispatch() -> int:
    """The outbox sweep of training runs: queued and never sent, sent long ago and never
    started, or running with a lapsed lease (its worker died) and not re-sent since.
    Erasure remediation runs (on the snapshot of the version they replace) are left out: the
    erasure that trains them resumes them. A rectification's retrain reads a fresh snapshot
    and is sent through the outbox like any run."""
    from mlops.tasks import train_model

    now = timezone.now()
    lapsed = Q(status=RunStatus.RUNNING) & (Q(heartbeat_at__lt=lease_cutoff(now)) | Q(
        heartbeat_at__isnull=True, started_at__lt=lease_cutoff(now)))
    stalled = TrainingRun.objects.filter(
        Q(remediates__isnull=True) | ~Q(snapshot_id=F("remediates__training_run__snapshot_id"))
    ).exclude(
        # Trained elsewhere: nothing to send; an unreported one is released by
        # mlops.services.external.external_runs_expire instead.
        executor=Executor.EXTERNAL
    ).filter(
        Q(status=RunStatus.QUEUED, dispatched_at__isnull=True, created_at__lt=unsent_cutoff(now))
        | Q(status=RunStatus.QUEUED, dispatched_at__lt=unstarted_cutoff(now))
        | (lapsed & (Q(dispatched_at__isnull=True) | Q(dispatched_at__lt=F("heartbeat_at"))
                     | Q(dispatched_at__lt=unstarted_cutoff(now))))
    ).values_list("pk", "celery_task_id", "dispatch_queue")
    return tasks_redispatch(train_model, outbox=TrainingRun.objects, stalled=stalled)
