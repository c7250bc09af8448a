"""Model remediation after an erasure: retrain from scratch, or unlearn a SISA model's
affected shards exactly (Bourtoule et al. 2021).

Retraining goes through mlops's own services (``training_run_queue`` without enqueueing,
then ``training_run_execute`` outside any transaction), so the new run is validated,
charged to the dataset's privacy budget and registered like any other.

SISA unlearning reuses the original run's placement of people (its SisaAssignment rows,
which say exactly who trained in which shard and slice; the new run points at them through
``sisa_placements_from`` instead of copying them, and the erased person's rows go with
their subject row): the shards that held the person
are retrained from the checkpoint taken before the first slice that contained them, on
the amended snapshot, with the shard's original noise multiplier and seeds. Every other
shard keeps its weights. Retraining such a shard from scratch with the same
configuration gives the same weights, because each stage is seeded from (seed, shard,
stage) alone.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import numpy as np
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from governance.services import ServiceError, audit_event_record


def _train_config(run):
    from mlops.services import _train_config

    return _train_config(run)


def shard_config(*, run, shard: int):
    """The configuration a shard of ``run`` trains with, its noise multiplier fixed to
    the one it was trained with, so retraining it reproduces the original procedure."""
    config = _train_config(run)
    if not config.private:
        return config
    sigmas = getattr(run, "shard_noise_multipliers", None)
    if sigmas:
        return replace(config, noise_multiplier=float(sigmas[shard]), target_epsilon=None)
    history = (run.accountant_history or {}).get(str(shard)) or []
    if not history:
        raise ServiceError(f"Training run {run.pk} has no accountant history for shard {shard}.", field="model_version")
    return replace(config, noise_multiplier=float(history[-1][0]), target_epsilon=None)


def shard_rows(*, run, shard: int):
    """(X, y, slice_of_row) of the rows ``run`` trained ``shard`` on, as the amended
    snapshot holds them now (erased people are gone from it).

    Only the shard's people are read (about 1/S of the snapshot), encoded with the run's
    recorded encoding exactly as ``mlops.data.snapshot_tensors`` encodes the whole
    snapshot (``test_shard_rows_equal_the_shard_of_the_full_snapshot`` holds them equal).
    """
    from mlops import data
    from mlops.models import SisaAssignment
    from mlops.selectors import sisa_placement_run_id

    features = (run.encoding or {}).get("features")
    if not features:
        placed = dict(
            SisaAssignment.objects.filter(training_run_id=sisa_placement_run_id(run=run), shard=shard)
            .values_list("subject_id", "slice")
        )
        return _shard_rows_from_full_snapshot(run=run, placed=placed)
    slices, feature_texts, label_texts = _shard_record_texts(
        placement_run_id=sisa_placement_run_id(run=run), snapshot_id=run.snapshot_id, shard=shard
    )
    # One C-speed parse of the whole shard instead of a JSON decode per row and column:
    # this read is most of an unlearning's cost outside training.
    X, y, _ = data.encode_rows(
        record_features=json.loads("[" + ",".join(feature_texts) + "]"),
        labels=json.loads("[" + ",".join(label_texts) + "]"),
        schema={"features": features}, classes=run.encoding["classes"],
    )
    keep = y >= 0
    slice_of_row = np.asarray(slices, dtype=np.int64)
    return X[keep], y[keep], slice_of_row[keep]


def _shard_record_texts(*, placement_run_id: int, snapshot_id: int, shard: int) -> tuple[list, list, list]:
    """(slice, features JSON, label JSON) of every snapshot row of the shard's people, in
    record order, the order ``snapshot_tensors`` reads a snapshot in."""
    from django.db import connection

    from mlops.models import SisaAssignment
    from provenance.models import DataRecord, SnapshotMembership

    sql = f"""
        SELECT a.slice, CAST(r.features AS TEXT), COALESCE(CAST(r.label AS TEXT), 'null')
        FROM {SisaAssignment._meta.db_table} a
        JOIN {SnapshotMembership._meta.db_table} m ON m.subject_id = a.subject_id AND m.snapshot_id = %s
        JOIN {DataRecord._meta.db_table} r ON r.id = m.record_id
        WHERE a.training_run_id = %s AND a.shard = %s
        ORDER BY m.record_id
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, [snapshot_id, placement_run_id, shard])
        rows = cursor.fetchall()
    if not rows:
        return [], [], []
    slices, feature_texts, label_texts = zip(*rows, strict=True)
    return list(slices), list(feature_texts), list(label_texts)


def _shard_rows_from_full_snapshot(*, run, placed: dict[int, int]):
    from mlops import data
    from mlops.services import _schema_for

    tensors = data.snapshot_tensors(
        snapshot_id=run.snapshot_id, schema=_schema_for(run, run.snapshot.dataset.schema), classes=run.encoding["classes"]
    )
    in_shard = np.fromiter((s in placed for s in tensors.subject_ids.tolist()), dtype=bool, count=len(tensors.subject_ids))
    rows = in_shard & (tensors.y >= 0)
    slice_of_row = np.fromiter(
        (placed[s] for s in tensors.subject_ids[rows].tolist()), dtype=np.int64, count=int(rows.sum())
    )
    return tensors.X[rows], tensors.y[rows], slice_of_row


@transaction.atomic
def sisa_unlearn(
    *, model_version, subject_id: int, shards: dict[int, int], erased_rows: int, erasure_request_id: int
) -> dict[str, Any]:
    """Unlearn one person from a SISA ensemble; ``shards`` maps shard → first slice that
    held them. Registers a new run and model version that supersede the old ones."""
    import torch

    from mlops import artifacts
    from mlops.engine import accounting, sisa
    from mlops.models import ModelStatus, ModelVersion, RunStatus, SisaCheckpoint, TrainingRun
    from mlops.selectors import sisa_placement_run_id

    old_run = TrainingRun.objects.select_related("snapshot__dataset").get(pk=model_version.training_run_id)
    old_state = artifacts.load_weights(relative=model_version.artifact_path, expected_sha256=model_version.artifact_sha256)
    config = _train_config(old_run)
    slices = old_run.sisa["slices"]
    new_run = TrainingRun.objects.create(
        **{
            f.name: getattr(old_run, f.name)
            for f in TrainingRun._meta.concrete_fields
            if f.name not in ("id", "created_at", "started_at", "finished_at", "celery_task_id", "attempts",
                              "sisa_placements_from",
                              "progress", "epoch_metrics", "status", "error", "requested_by")
        },
        status=RunStatus.RUNNING, started_at=timezone.now(), attempts=1,
        # Everyone the old run trained on, except the erased person, keeps their place.
        sisa_placements_from_id=sisa_placement_run_id(run=old_run),
    )
    run_dir = artifacts.run_dir_relative(new_run.pk)
    history = {k: list(v) for k, v in (old_run.accountant_history or {}).items()}
    state = dict(old_state)
    checkpoints: list[SisaCheckpoint] = []
    retrained: dict[str, Any] = {}
    new_spending: list[list] = []
    old_checkpoints = {
        (c.shard, c.slice): c for c in SisaCheckpoint.objects.filter(training_run=old_run)
    }
    for shard in range(old_run.sisa["shards"]):
        first = shards.get(shard)
        keep_until = slices if first is None else first  # checkpoints before this slice are clean
        for slice_ in range(keep_until):
            old = old_checkpoints[(shard, slice_)]
            # A clean checkpoint carries over unchanged, with its recorded hash: a file
            # altered since would fail the hash check when it is loaded.
            relative = f"{run_dir}/shard-{shard}-slice-{slice_}.safetensors"
            artifacts.link_or_copy(source=old.artifact_path, target=relative)
            checkpoints.append(SisaCheckpoint(
                training_run=new_run, shard=shard, slice=slice_, artifact_path=relative,
                artifact_sha256=old.artifact_sha256,
                n_records=old.n_records, epsilon=old.epsilon,
            ))
        if first is None:
            continue
        X, y, slice_of_row = shard_rows(run=old_run, shard=shard)
        init_state = None
        if first > 0:
            prev = old_checkpoints[(shard, first - 1)]
            init_state = artifacts.load_weights(relative=prev.artifact_path, expected_sha256=prev.artifact_sha256)
        result = sisa.train_shard(
            X=torch.from_numpy(X), y=torch.from_numpy(y), slice_of_row=slice_of_row, slices=slices,
            n_classes=old_run.n_classes, config=shard_config(run=old_run, shard=shard), shard=shard,
            start_slice=first, init_state=init_state,
        )
        for offset, weights in enumerate(result.checkpoints):
            slice_ = first + offset
            relative = f"{run_dir}/shard-{shard}-slice-{slice_}.safetensors"
            digest = artifacts.save_weights(relative=relative, state_dict=artifacts.strip_wrapper_prefix(weights))
            checkpoints.append(SisaCheckpoint(
                training_run=new_run, shard=shard, slice=slice_, artifact_path=relative, artifact_sha256=digest,
                n_records=int((slice_of_row <= slice_).sum()),
            ))
        final = artifacts.strip_wrapper_prefix(result.result.state_dict)
        state.update({f"shard{shard}.{k}": v for k, v in final.items()})
        history[str(shard)] = result.result.accountant_history
        # The stages before ``first`` are re-derived in the history, not trained again: only
        # the retrained stages are new privacy spending.
        skipped = sum(1 for r in range(first) if (slice_of_row <= r).any())
        new_spending.append(result.result.accountant_history[skipped:])
        checkpoints[-1].epsilon = result.result.epsilon if config.private else None
        retrained[str(shard)] = {
            "from_slice": first, "rows": len(X),
            "epsilon": result.result.epsilon if config.private else None,
        }
    SisaCheckpoint.objects.bulk_create(checkpoints)
    epsilon = None
    rdp = None
    if config.private:
        curves = [np.asarray(accounting.rdp_curve_of_history(history=h)) for h in history.values()]
        rdp = np.max(np.vstack(curves), axis=0)
        epsilon = max(
            accounting.epsilon_of_history(history=h, delta=config.target_delta, accountant=config.accountant)
            for h in history.values()
        )
    relative = f"{run_dir}/model.safetensors"
    digest = artifacts.save_weights(
        relative=relative, state_dict=state, metadata={"training_run": str(new_run.pk), "format": "sisa-ensemble"}
    )
    charged = _ledger_charge(run=new_run, histories=new_spending, config=config)
    metrics = {**(model_version.metrics or {}), "unlearned_from": model_version.pk, "retrained_shards": retrained}
    metrics.pop("val_accuracy", None)  # measured on the old ensemble, not this one
    TrainingRun.objects.filter(pk=new_run.pk).update(
        status=RunStatus.SUCCEEDED, finished_at=timezone.now(), accountant_history=history, epsilon=epsilon,
        rdp_curve=rdp.tolist() if rdp is not None else None,
        n_train=max(0, old_run.n_train - erased_rows),
        progress={"unlearning": {"erasure_request": erasure_request_id, "shards": sorted(shards)}},
    )
    number = (ModelVersion.objects.filter(name=model_version.name).aggregate(m=Max("version"))["m"] or 0) + 1
    new_version = ModelVersion.objects.create(
        training_run=new_run, name=model_version.name, version=number, artifact_path=relative, artifact_sha256=digest,
        metrics=metrics, epsilon=epsilon, delta=model_version.delta, non_private=model_version.non_private,
        is_sisa_ensemble=True, supersedes=model_version,
        status_reason=f"SISA unlearning for erasure request {erasure_request_id}",
    )
    ModelVersion.objects.filter(pk=model_version.pk).update(
        status=ModelStatus.SUPERSEDED,
        status_reason=f"superseded by version {number} after erasure request {erasure_request_id} (SISA unlearning)",
    )
    audit_event_record(
        actor=None, action="model_version.registered", object_type="model_version", object_id=new_version.pk,
        details={"name": new_version.name, "version": number, "training_run": new_run.pk,
                 "supersedes": model_version.pk, "unlearning": {"erasure_request": erasure_request_id,
                                                                "shards": sorted(shards)}},
    )
    return {
        "new_model_version": new_version.pk, "new_version": number, "new_training_run": new_run.pk,
        "retrained_shards": retrained, "epsilon": epsilon, "artifact_sha256": digest,
        "privacy_ledger_epsilon_charged": charged,
    }


def _ledger_charge(*, run, histories: list[list], config) -> float | None:
    """Charge the retrained stages to the dataset's privacy ledger as spent.

    Shards hold disjoint people, so the charge is the maximum over retrained shards (as for
    any SISA release). Never refused: erasure is a legal obligation, and a cap overrun
    shows in the ledger for the DPO to see.
    """
    from mlops import ledger
    from mlops.engine import accounting
    from mlops.models import LedgerState, PrivacyLedgerEntry

    rdp = None
    epsilon = None
    if config.private and histories:
        curves = [np.asarray(accounting.rdp_curve_of_history(history=h)) for h in histories if h]
        if curves:
            rdp = np.max(np.vstack(curves), axis=0)
            epsilon = max(
                accounting.epsilon_of_history(history=h, delta=config.target_delta, accountant=config.accountant)
                for h in histories if h
            )
    dataset_id = run.snapshot.dataset_id
    total = ledger.ledger_total_locked(dataset_id=dataset_id)
    PrivacyLedgerEntry.objects.create(
        dataset_id=dataset_id, training_run=run, state=LedgerState.SPENT, non_private=not config.private,
        planned_epsilon=epsilon, planned_rdp=ledger.curve_to_json(rdp), epsilon=epsilon,
        rdp_curve=ledger.curve_to_json(rdp), delta=config.target_delta if config.private else None,
    )
    ledger.ledger_total_recompute(total=total)
    return epsilon


def retrain_queue(*, model_version, erasure_request_id: int) -> int:
    """Register the retraining run (validated and charged like any run); returns its id.

    Not enqueued: the erasure task trains it itself, outside any transaction, so neither the
    audit chain's head nor a database transaction is held while the model trains.
    """
    from mlops.services import training_run_queue

    run = model_version.training_run
    new_run = training_run_queue(
        snapshot=run.snapshot_id, name=run.name, task=run.task, model_spec=run.model_spec, optimizer=run.optimizer,
        learning_rate=run.learning_rate, epochs=run.epochs, batch_size=run.batch_size, seed=run.seed,
        validation_split=run.validation_split, holdout_fraction=run.holdout_fraction,
        target_epsilon=run.target_epsilon, noise_multiplier=run.requested_noise_multiplier,
        target_delta=run.target_delta, max_grad_norm=run.max_grad_norm, accountant=run.accountant,
        allow_non_private=run.allow_non_private, sisa=run.sisa, requested_by=None, enqueue=False,
    )
    return new_run.pk


def retrain_train(*, run_id: int) -> None:
    """Train the registered run; idempotent (a finished run is left alone, a half-trained one restarts)."""
    from mlops.services import training_run_execute

    training_run_execute(run_id=run_id)


@transaction.atomic
def retrain_register(*, model_version, run_id: int, erasure_request_id: int) -> dict[str, Any]:
    """Let the retrained model supersede the old one once its run has succeeded."""
    from mlops.models import ModelStatus, ModelVersion, RunStatus, TrainingRun

    finished = TrainingRun.objects.filter(pk=run_id).first()
    if finished is None or finished.status != RunStatus.SUCCEEDED:
        raise ServiceError(
            f"Retraining run {run_id} did not succeed ({getattr(finished, 'status', 'missing')}): "
            f"{getattr(finished, 'error', '')}",
            field="model_version",
        )
    new_version = ModelVersion.objects.get(training_run=finished)
    ModelVersion.objects.filter(pk=new_version.pk).update(
        supersedes=model_version, status_reason=f"retrained for erasure request {erasure_request_id}"
    )
    ModelVersion.objects.filter(pk=model_version.pk).update(
        status=ModelStatus.SUPERSEDED,
        status_reason=f"superseded by version {new_version.version} after erasure request {erasure_request_id} (retrained)",
    )
    return {
        "new_model_version": new_version.pk, "new_version": new_version.version, "new_training_run": finished.pk,
        "epsilon": new_version.epsilon, "artifact_sha256": new_version.artifact_sha256,
    }
