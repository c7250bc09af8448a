"""The model registry: versions of a model name (its lineage), numbered once, under one lock.

Two locks per lineage, both keyed by the model name:

- the *registration* lock (``lineage_registration_lock``), taken inside the transaction
  that numbers and registers a version: two runs finishing at once get versions n and
  n + 1, and each new version supersedes every live version of its name, so a name never
  has two live versions;
- the *remediation* lock (``lineage_remediation_lock``), held for as long as a lineage is
  being retrained or unlearned after people's data were removed. It is a session-level
  lock outside any transaction (training runs for minutes and must not hold one); a
  worker that dies releases it with its connection, so a redelivered task can take over.

Whether a version holds people erased since: each run records how many amendments its
snapshot had when its training data were read (``TrainingRun.trained_on_amendment``).
An erasure amendment with a higher sequence number removed people the run trained on.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.db import connection, transaction
from django.db.models import Max

from governance.services import ServiceConflict, audit_event_record
from mlops import artifacts
from mlops.models import ModelStatus, ModelVersion, RunStatus, TrainingRun
from mlops.selectors import read_before
from mlops.services.status import model_version_registered_status_announce, model_versions_status_set
from provenance.models import AmendmentReason, SnapshotAmendment

# The lineage's head, whichever of these: registration keeps it to one, erasure finds it.
# Only ``active`` is served; pending_audit, tainted and stale await their audit or remediation.
LIVE_STATUSES = (ModelStatus.ACTIVE, ModelStatus.PENDING_AUDIT, ModelStatus.TAINTED, ModelStatus.STALE)
# Version rows are locked FOR NO KEY UPDATE: a run being queued to replace a version holds a
# foreign key to it (KEY SHARE, checked at commit), which FOR UPDATE would block; with the
# audit chain's head locked after it, that was a deadlock under concurrent erasures.

# Advisory-lock namespaces (PostgreSQL's two-key form: namespace, crc32 of the name).
_REGISTRATION = 0x504C5201
_REMEDIATION = 0x504C5202
_local_locks: dict[tuple[int, str], threading.RLock] = {}
_local_guard = threading.Lock()


def _key(name: str) -> int:
    # A signed 32-bit key; two names sharing one only serialise a little more.
    return zlib.crc32(name.encode()) - 2**31


def _local_lock(namespace: int, name: str) -> threading.RLock:
    # SQLite (embedded mode) serialises writers itself, but a threaded development server
    # can still run two remediations of one lineage at once: a process-wide lock per name.
    with _local_guard:
        return _local_locks.setdefault((namespace, name), threading.RLock())


def lineage_registration_lock(name: str) -> None:
    """Serialise version numbering of ``name`` until the current transaction ends."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [_REGISTRATION, _key(name)])


@contextmanager
def lineage_remediation_lock(name: str) -> Iterator[None]:
    """Hold the remediation of lineage ``name`` (outside any transaction)."""
    if connection.in_atomic_block:
        raise RuntimeError("the remediation lock is taken outside any transaction")
    if connection.vendor != "postgresql":
        with _local_lock(_REMEDIATION, name):
            yield
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s, %s)", [_REMEDIATION, _key(name)])
    try:
        yield
    finally:
        if connection.connection is not None:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [_REMEDIATION, _key(name)])


# --- What a version was trained on ------------------------------------------------------


def erasure_amendments_after(*, run: TrainingRun) -> list[SnapshotAmendment]:
    """Erasure amendments of the run's snapshot that it had not seen when it read its data."""
    seen = run.trained_on_amendment or 0
    return list(
        SnapshotAmendment.objects.filter(snapshot_id=run.snapshot_id, reason=AmendmentReason.ERASURE, sequence__gt=seen)
        .order_by("sequence")
    )


def run_trained_on_erased_people(*, run: TrainingRun) -> bool:
    return bool(erasure_amendments_after(run=run))


def lineage_head(*, name: str, for_update: bool = False) -> ModelVersion | None:
    """The live (active, pending audit, tainted or stale) version of ``name``; registration keeps it to one."""
    qs = ModelVersion.objects.filter(name=name, status__in=LIVE_STATUSES).select_related("training_run")
    if for_update:
        qs = qs.select_for_update(of=("self",), no_key=True)
    return qs.order_by("-version").first()


# --- Registration -------------------------------------------------------------------


def model_version_register(
    *, run: TrainingRun, artifact_path: str, artifact_sha256: str, metrics: dict, epsilon: float | None,
    delta: float | None, is_sisa_ensemble: bool, status_reason: str = "", details: dict | None = None,
    external: bool = False, description: str = "",
) -> ModelVersion:
    """Number and register the model of a finished run; call inside the run's final transaction.

    The new version supersedes every live version of its name. It is registered
    ``tainted`` when erasures removed people from its snapshot after it read its data,
    so a run that raced an erasure never publishes an active model holding the person.
    """
    if not connection.in_atomic_block:
        raise RuntimeError("model_version_register runs inside the run's final transaction")
    lineage_registration_lock(run.name)
    live = list(ModelVersion.objects.select_for_update(no_key=True).filter(name=run.name, status__in=LIVE_STATUSES).order_by("-version"))
    number = (ModelVersion.objects.filter(name=run.name).aggregate(m=Max("version"))["m"] or 0) + 1
    late = erasure_amendments_after(run=run)
    status, reason = ModelStatus.ACTIVE, status_reason
    from mlops.services.audit_jobs import audit_policies_for_run, model_version_audits_plan

    # An external version's weights are not here: the ledger cannot audit or retrain it.
    policies = [] if external else audit_policies_for_run(run=run)
    if policies:
        status = ModelStatus.PENDING_AUDIT
        reason = "awaiting the privacy audits its audit policy requires"
    from mlops.services.rectification import registration_staleness

    # A run that read a snapshot holding record versions rectified since (queued before the
    # rectification, or on an old snapshot) trained on the old values.
    status, reason, retrain_after = registration_staleness(run=run, status=status, reason=reason)
    retrain_after = retrain_after and not external
    if late:
        retrain_after = False
        status = ModelStatus.TAINTED
        reason = (f"on registration: trained on data read before {len(late)} erasure amendment(s) of snapshot "
                  f"{run.snapshot_id}; awaiting remediation")
    supersedes = run.remediates if run.remediates_id else (live[0] if live else None)
    version = ModelVersion.objects.create(
        training_run=run, name=run.name, version=number, artifact_path=artifact_path, artifact_sha256=artifact_sha256,
        metrics=metrics, epsilon=epsilon, delta=delta, non_private=run.allow_non_private,
        is_sisa_ensemble=is_sisa_ensemble, supersedes=supersedes, status=status, status_reason=reason,
        external=external, description=description,
    )
    if live:
        model_versions_status_set(
            ids=[v.pk for v in live], status=ModelStatus.SUPERSEDED, reason=f"superseded by version {number}"
        )
    model_version_registered_status_announce(version=version)
    audit_event_record(
        actor=None, action="model_version.registered", object_type="model_version", object_id=version.pk,
        details={"name": version.name, "version": number, "training_run": run.pk, "status": status,
                 "supersedes": [v.pk for v in live], "audit_policies": [p.pk for p in policies], **(details or {})},
    )
    if not external:
        model_version_audits_plan(model_version=version)
    if status == ModelStatus.TAINTED:
        _announce_taint([version.pk], reason)
    if retrain_after:
        from mlops.services.rectification import stale_versions_retrain_on_commit

        stale_versions_retrain_on_commit(model_version_ids=[version.pk])
    return version


# --- Status changes -----------------------------------------------------------------


def _announce_taint(ids: list[int], reason: str) -> None:
    from mlops.signals import model_version_tainted, send_on_commit

    send_on_commit(model_version_tainted, model_version_ids=ids, reason=reason)


@transaction.atomic
def model_versions_taint_trained_before(*, amendments: list[dict[str, int]], reason: str) -> dict[str, Any]:
    """Taint every live version whose run read a snapshot before one of ``amendments``
    ([{"snapshot": id, "sequence": n}]) removed people from it; returns the versions
    tainted and the names of the lineages that now hold erased people.

    Non-remediation runs still training on data read before the amendment are cancelled:
    their model would hold the people just removed.
    """
    if not amendments:
        return {"tainted": [], "newly_tainted": [], "lineages": [], "training_runs_cancelled": []}
    live = list(
        ModelVersion.objects.select_for_update(no_key=True)
        .filter(read_before(amendments=amendments, run="training_run__"), status__in=LIVE_STATUSES).order_by("pk")
        .values_list("pk", "name", "status")
    )
    # A stale version holding an erased person is tainted: the erasure's remediation is owed
    # first (and its retrain reads the amended snapshot, not the stale values' one).
    newly = [pk for pk, _, status in live if status in (ModelStatus.ACTIVE, ModelStatus.PENDING_AUDIT, ModelStatus.STALE)]
    model_versions_status_set(ids=newly, status=ModelStatus.TAINTED, reason=reason)
    cancelled = []
    from mlops.services.execution import training_run_cancel

    # An external run is not cancelled: its trainer already holds the data, and its model is
    # registered tainted when it reports, so its owner is told (cancelling would lose it).
    for run in TrainingRun.objects.filter(read_before(amendments=amendments), status=RunStatus.RUNNING, remediates__isnull=True).exclude(executor="external").order_by("pk"):
        training_run_cancel(run=run, actor="erasure-worker")
        cancelled.append(run.pk)
    if newly:
        _announce_taint(newly, reason)
    return {
        "tainted": [pk for pk, _, _ in live], "newly_tainted": newly,
        "lineages": sorted({name for _, name, _ in live}), "training_runs_cancelled": cancelled,
    }


@transaction.atomic
def model_version_retire(*, model_version: ModelVersion, reason: str, actor: Any = None) -> ModelVersion:
    version = ModelVersion.objects.select_for_update(no_key=True).get(pk=model_version.pk)
    if version.status not in LIVE_STATUSES:
        raise ServiceConflict(f"Model version {version.pk} is {version.status}; only a live version is retired.")
    model_versions_status_set(ids=[version.pk], status=ModelStatus.RETIRED, reason=reason)
    version.refresh_from_db(fields=["status", "status_reason", "status_changed_at"])
    audit_event_record(actor=actor, action="model_version.retired", object_type="model_version",
                       object_id=version.pk, details={"reason": reason[:500]})
    return version


def model_version_retire_by(*, model_version: ModelVersion, reason: Any, actor: Any) -> ModelVersion:
    """Retire a live version at a person's request: a DPO, or the ML engineer who asked for
    the run that trained it (its owner: the one who can retrain a model trained outside the
    ledger, and who may instead take it out of service, e.g. while an erasure waits on it)."""
    from django.core.exceptions import PermissionDenied

    from governance.roles import DPO, has_role
    from governance.services import ServiceError

    owner_id = model_version.training_run.requested_by_id
    if not has_role(actor, DPO) and (owner_id is None or owner_id != getattr(actor, "pk", None)):
        raise PermissionDenied(
            f"Only a DPO or the owner of model version {model_version.pk} (who asked for its training run) may "
            "retire it."
        )
    if not isinstance(reason, str) or not reason.strip():
        raise ServiceError("reason: say why the version is retired (kept in the audit trail).", field="reason")
    if len(reason) > 500:
        raise ServiceError("reason: at most 500 characters.", field="reason")
    return model_version_retire(model_version=model_version, reason=f"retired by {actor.get_username()}: "
                                f"{reason.strip()}", actor=actor)


@transaction.atomic
def model_version_keep_on_dp(*, model_version: ModelVersion, accepted_erasure_requests: set[int], reason: str) -> bool:
    """Keep a version on its DP guarantee for the erasures whose DPO accepted that risk.

    It becomes active again only when every erasure it missed is among those accepted;
    otherwise it stays tainted for the other requests to remediate. Returns whether it is active.
    """
    version = (
        ModelVersion.objects.select_for_update(of=("self",), no_key=True).select_related("training_run").get(pk=model_version.pk)
    )
    if version.status not in LIVE_STATUSES:
        return False
    missed = {a.erasure_request_id for a in erasure_amendments_after(run=version.training_run)}
    if missed - accepted_erasure_requests:
        return False
    model_versions_status_set(ids=[version.pk], status=ModelStatus.ACTIVE, reason=reason)
    version.refresh_from_db(fields=["status", "status_reason", "status_changed_at"])
    audit_event_record(actor=None, action="model_version.kept_on_dp", object_type="model_version", object_id=version.pk,
                       details={"reason": reason[:500], "epsilon": version.epsilon})
    return True


def lineage_files_remove(*, name: str) -> list[dict[str, Any]]:
    """Delete the files of versions of ``name`` that are no longer live and were trained on
    erased people. Call under the lineage's remediation lock: nothing live points at them
    (a SISA run's carried-over checkpoints are hard links or copies of their own)."""
    removed = []
    for version in (
        ModelVersion.objects.filter(name=name).exclude(status__in=LIVE_STATUSES).select_related("training_run")
        .order_by("pk")
    ):
        if not run_trained_on_erased_people(run=version.training_run):
            continue
        if not version.artifact_path:
            # The ledger never held this version's weights (trained elsewhere, only their hash
            # reported): nothing of it to delete, so nothing to claim deleted, whatever a folder
            # of the run's number holds.
            continue
        files = artifacts.remove_run_files(version.training_run_id)
        if files:
            removed.append({"model_version": version.pk, "artifact_sha256": version.artifact_sha256, "files": files})
    return removed
