"""SISA unlearning (Bourtoule et al. 2021) of a lineage's head, for ``remediation``.

The shards that held someone no longer in the snapshot are retrained from the checkpoint
taken before the first slice that contained them, with the shard's original noise
multiplier and seeds, reusing the original run's placement of people (its SisaAssignment
rows, through ``sisa_placements_from``). Retraining such a shard from scratch with the same
configuration gives the same weights, because each stage is seeded from (seed, shard,
stage) alone. Only the retrained stages are charged to the privacy ledger.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from typing import Any

import numpy as np
from django.db import connection, transaction
from django.utils import timezone

from governance.services import ServiceError
from mlops import artifacts, data
from mlops.models import ModelVersion, RunStatus, SisaAssignment, SisaCheckpoint, TrainingRun
from mlops.selectors import sisa_placement_run_id
from mlops.services.config import _schema_for, _train_config
from mlops.services.registry import (
    model_version_register,
)
from provenance.models import DataRecord, SnapshotMembership

logger = logging.getLogger(__name__)


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
    from provenance.models import SnapshotMembership

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

    tensors = data.snapshot_tensors(
        snapshot_id=run.snapshot_id, schema=_schema_for(run, run.snapshot.dataset.schema), classes=run.encoding["classes"]
    )
    in_shard = np.fromiter((s in placed for s in tensors.subject_ids.tolist()), dtype=bool, count=len(tensors.subject_ids))
    rows = in_shard & (tensors.y >= 0)
    slice_of_row = np.fromiter(
        (placed[s] for s in tensors.subject_ids[rows].tolist()), dtype=np.int64, count=int(rows.sum())
    )
    return tensors.X[rows], tensors.y[rows], slice_of_row


def _shards_to_unlearn(*, placement_run_id: int, head_run: TrainingRun) -> dict[int, int]:
    """{shard: first slice} of the people the head trained on who are no longer members of
    its snapshot.

    When every amendment the head has not seen names the people it removed (erasures do),
    only their placements are read. Otherwise (a retention purge, or a run from before runs
    recorded what they read) every placement is checked against the current membership.
    """
    from provenance.models import SnapshotAmendment

    seen = head_run.trained_on_amendment
    missed = list(
        SnapshotAmendment.objects.filter(snapshot_id=head_run.snapshot_id, sequence__gt=seen or 0)
        .values_list("removed_subject_ids", flat=True)
    ) if seen is not None else [None]
    if all(ids is not None for ids in missed):
        people = sorted({i for ids in missed for i in ids})
        rows = (
            SisaAssignment.objects.filter(training_run_id=placement_run_id, subject_id__in=people)
            .values_list("shard", "slice")
        )
        first: dict[int, int] = {}
        for shard, slice_ in rows:
            first[shard] = min(slice_, first.get(shard, slice_))
        return first
    sql = f"""
        SELECT a.shard, MIN(a.slice) FROM {SisaAssignment._meta.db_table} a
        WHERE a.training_run_id = %s AND NOT EXISTS (
            SELECT 1 FROM {SnapshotMembership._meta.db_table} m
            WHERE m.snapshot_id = %s AND m.subject_id = a.subject_id)
        GROUP BY a.shard
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, [placement_run_id, head_run.snapshot_id])
        return {int(shard): int(first) for shard, first in cursor.fetchall()}


_NOT_COPIED = frozenset({
    "id", "created_at", "started_at", "finished_at", "celery_task_id", "attempts", "sisa_placements_from",
    "progress", "epoch_metrics", "status", "error", "requested_by", "remediates", "trained_on_amendment",
})


def _abandon_orphans(*, head: ModelVersion) -> list[int]:
    """SISA remediation runs of ``head`` left 'running' by a worker that died (the lock is
    ours, so nobody else is training them): failed, their files removed."""
    # Unlearning runs are exactly those with placements from another run; a full SISA
    # retraining left by a dead worker is resumed by _retrain instead.
    orphans = list(
        TrainingRun.objects.filter(
            remediates=head, status__in=(RunStatus.QUEUED, RunStatus.RUNNING), sisa_placements_from__isnull=False,
        ).values_list("pk", flat=True)
    )
    for run_id in orphans:
        artifacts.remove_run_files(run_id)
        SisaCheckpoint.objects.filter(training_run_id=run_id).delete()
    TrainingRun.objects.filter(pk__in=orphans).update(
        status=RunStatus.FAILED, finished_at=timezone.now(), error="worker lost during unlearning; started again"
    )
    return orphans


def _sisa_unlearn(*, head: ModelVersion) -> ModelVersion:
    """Unlearn everyone no longer in the snapshot from SISA version ``head``; returns the
    new version, registered in one transaction after the shards were trained outside any."""
    import torch

    from mlops.engine import accounting, sisa
    from provenance.selectors import snapshot_amendment_count

    _abandon_orphans(head=head)
    old_run = TrainingRun.objects.select_related("snapshot__dataset").get(pk=head.training_run_id)
    placement_run_id = sisa_placement_run_id(run=old_run)
    # Counted before anything is read, as for any run (see registry).
    seen = snapshot_amendment_count(snapshot_id=old_run.snapshot_id)
    shards = _shards_to_unlearn(placement_run_id=placement_run_id, head_run=old_run)
    old_state = artifacts.load_weights(relative=head.artifact_path, expected_sha256=head.artifact_sha256)
    config = _train_config(old_run)
    slices = old_run.sisa["slices"]
    new_run = TrainingRun.objects.create(
        **{f.name: getattr(old_run, f.name) for f in TrainingRun._meta.concrete_fields if f.name not in _NOT_COPIED},
        status=RunStatus.RUNNING, started_at=timezone.now(), attempts=1, trained_on_amendment=seen,
        sisa_placements_from_id=placement_run_id, remediates=head,
        progress={"unlearning": {"from_model_version": head.pk, "shards": sorted(shards)}},
    )
    run_dir = artifacts.run_dir_relative(new_run.pk)
    history = {k: list(v) for k, v in (old_run.accountant_history or {}).items()}
    state = dict(old_state)
    checkpoints: list[SisaCheckpoint] = []
    retrained: dict[str, Any] = {}
    new_spending: list[list] = []
    old_checkpoints = {(c.shard, c.slice): c for c in SisaCheckpoint.objects.filter(training_run=old_run)}
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
                artifact_sha256=old.artifact_sha256, n_records=old.n_records, epsilon=old.epsilon,
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
            start_slice=first, init_state=init_state, train_metrics=old_run.release_training_metrics,
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
            "from_slice": first, "rows": len(X), "epsilon": result.result.epsilon if config.private else None,
        }
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
        relative=relative, state_dict=state,
        metadata={"training_run": str(new_run.pk), "format": "sisa-ensemble",
                  **artifacts.reproducibility_metadata(run=new_run)},
    )
    last_slice = {c.shard: c.n_records for c in checkpoints if c.slice == slices - 1}
    metrics = {**(head.metrics or {}), "unlearned_from": head.pk, "retrained_shards": retrained}
    # Measured again on the new ensemble: the old figure described a model that is gone.
    metrics["val_accuracy"] = _ensemble_val_accuracy(run=new_run, state=state)
    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().get(pk=new_run.pk)
        if run.status != RunStatus.RUNNING:
            raise ServiceError(f"Unlearning run {run.pk} was {run.status} while it trained.", field="model_version")
        SisaCheckpoint.objects.bulk_create(checkpoints)
        charged = _ledger_charge(run=run, histories=new_spending, config=config)
        TrainingRun.objects.filter(pk=run.pk).update(
            status=RunStatus.SUCCEEDED, finished_at=timezone.now(), accountant_history=history, epsilon=epsilon,
            rdp_curve=rdp.tolist() if rdp is not None else None, n_train=sum(last_slice.values()),
        )
        run.refresh_from_db()
        version = model_version_register(
            run=run, artifact_path=relative, artifact_sha256=digest, metrics=metrics, epsilon=epsilon,
            delta=head.delta, is_sisa_ensemble=True,
            status_reason=f"SISA unlearning of version {head.version}: {len(retrained)} shard(s) retrained",
            details={"unlearning": {"from_model_version": head.pk, "shards": sorted(shards),
                                    "privacy_ledger_epsilon_charged": charged}},
        )
    return version


def _ensemble_val_accuracy(*, run: TrainingRun, state: dict) -> float | None:
    """Accuracy of a SISA ensemble's mean prediction on the run's validation people."""
    import torch

    from mlops.engine import dp_train, sisa
    from mlops.services.training import _split_tensors

    tensors, split, labelled = _split_tensors(run)
    val = labelled & (split == data.SPLIT_VALIDATION)
    if not val.any():
        return None
    config = _train_config(run)
    models = []
    for shard in range(run.sisa["shards"]):
        prefix = f"shard{shard}."
        models.append(dp_train.load_model(
            state_dict={k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)},
            n_features=tensors.X.shape[1], n_classes=run.n_classes, config=config,
        ))
    proba = sisa.ensemble_predict_proba(models=models, X=torch.from_numpy(tensors.X[val]))
    return float((proba.argmax(1).numpy() == tensors.y[val]).mean())


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
