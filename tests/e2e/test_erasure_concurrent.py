"""Concurrent erasures against shared models leave a true state.

Five people who trained a DP model and a SISA ensemble (one snapshot) ask for erasure at
once; their requests execute on a real Celery worker with two concurrent slots, so their
remediations of the same two model lineages overlap. Afterwards, everything is checked
against the database itself, never against the erasure plan or step log: one clean active
version per model (trained on data that no longer held anyone erased, checked through the
records the version was trained on), no duplicate remediation or double ledger charge,
exact snapshot accounting and Merkle roots, intact artifacts, and certificates whose
claims hold. The second test does the same with the worker process SIGKILLed while a
remediation trains, then a fresh worker and a DPO's re-sent executions.

PostgreSQL and a broker only: SQLite serialises every writer, and without a broker tasks
run in-process one after another, so nothing would be concurrent.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from unittest import mock

import pytest
from django.conf import settings
from django.db import connection, connections
from django.utils import timezone

from governance.models import ConsentEvent, DataSubject
from governance.selectors import audit_chain_verify
from mlops import artifacts
from mlops import services as mlops_services
from mlops.models import (
    LedgerState,
    ModelVersion,
    PrivacyLedgerEntry,
    PrivacyLedgerTotal,
    SisaAssignment,
    SisaCheckpoint,
    TrainingRun,
)
from provenance.merkle import merkle_root
from provenance.models import DataRecord, Snapshot, SnapshotAmendment, SnapshotMembership
from provenance.services import snapshot_merkle_root
from rights import services
from rights.models import ErasureRequest, ErasureStep
from tests.mlops.helpers import wait_for
from tests.rights import helpers as h

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(settings.CELERY_EMBEDDED, reason="needs a broker and a real Celery worker (CELERY_BROKER_URL)"),
    pytest.mark.skipif(
        connection.vendor != "postgresql", reason="needs PostgreSQL: concurrent erasures need concurrent writers"
    ),
]

ROOT = Path(__file__).resolve().parent.parent.parent
QUEUE = "erasure-concurrent-test"
N_PEOPLE = 200
N_ERASED = 5
SISA = {"shards": 4, "slices": 2}
SETTLE_TIMEOUT = 240.0  # bounded: a hung execution fails the test instead of hanging it
QUIET_SECONDS = 20.0  # nothing moved for this long: the open executions are dead, stop waiting
LIVE = ("active", "tainted")
# A run's started_at is stamped when it is claimed, its data are read a moment later; an
# amendment stamped inside that gap may or may not have been read. Only a run that started
# more than this before an amendment certainly read the person; inside the gap the records
# the version reports having trained on decide (see erased_people_held in _assert_true_state).
CLAIM_TO_READ_SLACK = timedelta(seconds=0.5)


# --- The world ------------------------------------------------------------------------


@dataclass
class World:
    tag: str
    dataset_id: int
    snapshot_id: int
    dp_name: str
    sisa_name: str
    sisa_run_id: int
    erased_identifiers: list[str]
    erased_subject_ids: list[int]
    erased_record_ids: list[int]
    # Where the original SISA run placed each erased person: subject id -> (shard, slice).
    erased_placements: dict[int, tuple[int, int]]
    request_ids: list[int] = field(default_factory=list)
    last_run_before: int = 0  # the highest training run id before execution started

    @property
    def names(self) -> list[str]:
        return [self.dp_name, self.sisa_name]


def _train(*, snapshot, name: str, sisa: dict | None):
    """Queue through mlops's service and train in this process (small and quick: ~1 s)."""
    run = mlops_services.training_run_queue(
        snapshot=snapshot, name=name, epochs=6, batch_size=16, noise_multiplier=1.0, seed=3,
        model_spec={"hidden_sizes": [16]}, validation_split=0.0, holdout_fraction=0.0, sisa=sisa, enqueue=False,
    )
    mlops_services.training_run_execute(run_id=run.pk)
    run.refresh_from_db()
    assert run.status == "succeeded", f"world: training {name} failed: {run.error}"
    return run


def _build_world() -> World:
    tag = uuid.uuid4().hex[:8]
    act = h.activity()
    identifiers = [f"conc-{tag}-{i}@example.org" for i in range(N_PEOPLE)]
    people = [h.subject_for(identifier) for identifier in identifiers]
    ds = h.people_dataset(act=act, people=people, seed=11, d=4)
    snap = h.snapshot_of(ds)
    dp_run = _train(snapshot=snap, name=f"conc-dp-{tag}", sisa=None)
    sisa_run = _train(snapshot=snap, name=f"conc-sisa-{tag}", sisa=SISA)
    # Everyone trained both models: no validation or hold-out split.
    assert dp_run.n_train == sisa_run.n_train == N_PEOPLE and dp_run.n_holdout == dp_run.n_validation == 0

    # Five people spread over the shards (one per shard, then a second one from shard 0,
    # preferably in another slice), each placed by the SISA run, so in its training data.
    placements = {
        sid: (shard, slice_)
        for sid, shard, slice_ in SisaAssignment.objects.filter(training_run=sisa_run)
        .order_by("subject_id").values_list("subject_id", "shard", "slice")
    }
    assert len(placements) == N_PEOPLE
    chosen: list[int] = []
    for shard in range(SISA["shards"]):
        chosen.append(next(sid for sid, (k, _) in placements.items() if k == shard))
    first_slice = placements[chosen[0]][1]
    extra = [sid for sid, (k, s) in placements.items() if k == 0 and sid not in chosen]
    chosen.append(next((sid for sid in extra if placements[sid][1] != first_slice), extra[0]))
    assert len(set(chosen)) == N_ERASED
    by_subject = {p.pk: identifier for p, identifier in zip(people, identifiers, strict=True)}

    purpose = act.purposes.first()
    for sid in chosen:
        ConsentEvent.objects.create(
            event_id=f"conc-{tag}-{sid}", subject_id=sid, purpose=purpose, action="given",
            occurred_at=timezone.now(), notice_version="v1", notice_sha256="0" * 64, method="web",
            evidence={"ip": "192.0.2.0"},
        )
    world = World(
        tag=tag, dataset_id=ds.pk, snapshot_id=snap.pk, dp_name=dp_run.name, sisa_name=sisa_run.name,
        sisa_run_id=sisa_run.pk,
        erased_identifiers=[by_subject[sid] for sid in chosen],
        erased_subject_ids=chosen,
        erased_record_ids=list(DataRecord.objects.filter(subject_id__in=chosen).values_list("pk", flat=True)),
        erased_placements={sid: placements[sid] for sid in chosen},
    )
    assert len(world.erased_record_ids) == N_ERASED
    assert SnapshotMembership.objects.filter(snapshot=snap, subject_id__in=chosen).count() == N_ERASED
    for identifier in world.erased_identifiers:
        request = services.erasure_request_receive(identifier=identifier, ground="17_1_a")
        assert request.subject_id in chosen
        services.erasure_request_verify(erasure_request=request, method="e-mail link")
        world.request_ids.append(request.pk)
    world.last_run_before = TrainingRun.objects.order_by("-pk").values_list("pk", flat=True).first()
    return world


def _start_all_at_once(request_ids: list[int]) -> None:
    """Start every execution through the service, from threads released together."""
    barrier = threading.Barrier(len(request_ids))

    def start(pk: int) -> None:
        try:
            barrier.wait(timeout=30)
            services.erasure_request_execute_start(erasure_request=pk)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=len(request_ids)) as pool:
        list(pool.map(start, request_ids))  # re-raises a refusal


def _fingerprint(request_ids: list[int]) -> tuple:
    """Everything that moves while executions make progress (steps, runs, epochs, versions)."""
    return (
        tuple(ErasureRequest.objects.filter(pk__in=request_ids).order_by("pk").values_list("pk", "status")),
        tuple(ErasureStep.objects.filter(request_id__in=request_ids).order_by("pk").values_list("pk", "status", "attempts")),
        tuple((pk, status, str(progress)) for pk, status, progress in
              TrainingRun.objects.order_by("pk").values_list("pk", "status", "progress")),
        tuple(ModelVersion.objects.order_by("pk").values_list("pk", "status")),
        SnapshotAmendment.objects.count(),
    )


def _wait_until_settled(request_ids: list[int], *, timeout: float = SETTLE_TIMEOUT) -> str:
    """Wait until no request is in progress. Stop early when nothing has moved for
    QUIET_SECONDS: every execution still open has died (a task that raised is not retried)."""
    deadline = time.monotonic() + timeout
    last, quiet_since = None, time.monotonic()
    while time.monotonic() < deadline:
        open_ids = list(ErasureRequest.objects.filter(pk__in=request_ids, status="in_progress").values_list("pk", flat=True))
        if not open_ids:
            return "settled"
        now = _fingerprint(request_ids)
        if now != last:
            last, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since > QUIET_SECONDS:
            return f"gave up: requests {sorted(open_ids)} stay in_progress and nothing moved for {QUIET_SECONDS:.0f} s"
        time.sleep(0.25)
    return f"timed out after {timeout:.0f} s with requests {sorted(open_ids)} in_progress"


# --- The invariants -------------------------------------------------------------------


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _amendment_order() -> list[str]:
    names = {f.name for f in SnapshotAmendment._meta.concrete_fields}
    return ["sequence", "id"] if "sequence" in names else ["id"]


def _certificate_text(path: Path) -> str:
    """The certificate's text with all whitespace removed (table cells wrap long hashes)."""
    from pypdf import PdfReader

    text = "".join(page.extract_text() or "" for page in PdfReader(str(path)).pages)
    return re.sub(r"\s+", "", text)


class _Checker:
    def __init__(self) -> None:
        self.violations: list[str] = []

    def check(self, invariant: str, ok: bool, detail: str) -> None:
        if not ok:
            self.violations.append(f"[{invariant}] {detail}")

    def section(self, invariant: str, fn) -> None:
        try:
            fn()
        except Exception as exc:  # a crash while checking is itself a violation of that invariant
            self.violations.append(f"[{invariant}] crashed while checking: {type(exc).__name__}: {exc}")


def _assert_true_state(world: World, *, waited: str, context: str = "") -> None:
    """Every invariant of a true state after the world's erasures, computed from the database.

    Collects every violation and fails once, listing each with the invariant it breaks
    (``context``, e.g. a worker's log, goes after the list).
    """
    c = _Checker()
    erased = set(world.erased_subject_ids)
    c.check("settled", waited == "settled", f"the executions did not settle: {waited}")

    # When, and in which order, each request amended the snapshot: its person left the data.
    snap = Snapshot.objects.get(pk=world.snapshot_id)
    chain = list(SnapshotAmendment.objects.filter(snapshot=snap).order_by(*_amendment_order()))
    amendments = [a for a in chain if a.erasure_request_id in world.request_ids]
    person_of = dict(zip(world.request_ids, world.erased_subject_ids, strict=True))
    request_of = {sid: pk for pk, sid in person_of.items()}
    amended_at: dict[int, datetime] = {a.erasure_request_id: a.created_at for a in amendments}
    last_amended_at = max(amended_at.values(), default=None)
    members = dict(SnapshotMembership.objects.filter(snapshot=snap).values_list("record_id", "subject_id"))
    member_subjects = set(members.values())

    def started_long_before(run: TrainingRun, moment: datetime | None) -> bool:
        """The run started so long before ``moment`` that it read the data as they were then."""
        return moment is not None and (run.started_at is None or run.started_at < moment - CLAIM_TO_READ_SLACK)

    def erased_people_held(v: ModelVersion) -> set[int]:
        """The erased people whose records ``v`` was trained on, from the records it counts.

        Each person had one record and the snapshot only ever lost records since, so a DP
        version that trained on n records read the snapshot after its first N − n removals;
        a SISA shard whose last checkpoint counts m records more than the shard's people
        still in the snapshot holds the m of them removed last. Anything that does not add
        up is taken as holding every erased person.
        """
        run = v.training_run
        if run.snapshot_id != snap.pk:
            return set()
        order = [person_of[a.erasure_request_id] for a in chain if a.erasure_request_id in person_of]
        order += [sid for sid in world.erased_subject_ids if sid not in order]  # never amended: still held
        if not run.sisa:
            n_train = (v.metrics or {}).get("n_train")
            if not isinstance(n_train, int):
                return set(erased)
            removed, seen = snap.included_count - n_train, 0
            for a in chain:
                if removed <= 0:
                    break
                removed -= a.records_removed
                seen += 1
            if removed != 0:
                return set(erased)
            seen_people = {person_of[a.erasure_request_id] for a in chain[:seen] if a.erasure_request_id in person_of}
            return erased - seen_people
        trained = dict(
            SisaCheckpoint.objects.filter(training_run=run, slice=run.sisa["slices"] - 1).values_list("shard", "n_records")
        )
        placed_now = Counter(
            SisaAssignment.objects.filter(training_run_id=run.sisa_placements_from_id or run.pk,
                                          subject_id__in=member_subjects).values_list("shard", flat=True)
        )
        if (run.sisa_placements_from_id or run.pk) != world.sisa_run_id:
            # Placed afresh: the erased people's placements went with their subject rows.
            clean = all(trained.get(k) == placed_now.get(k, 0) for k in range(run.sisa["shards"]))
            return set() if clean else set(erased)
        held: set[int] = set()
        for shard in range(run.sisa["shards"]):
            in_shard = [sid for sid in order if world.erased_placements[sid][0] == shard]
            extra = (trained[shard] - placed_now.get(shard, 0)) if shard in trained else len(in_shard)
            if extra < 0 or extra > len(in_shard):
                return set(erased)
            held |= set(in_shard[len(in_shard) - extra:]) if extra else set()
        return held

    def requests_of(people: set[int]) -> list[int]:
        return sorted(request_of[sid] for sid in people)

    versions = list(ModelVersion.objects.filter(name__in=world.names).select_related("training_run").order_by("name", "version"))
    held_by: dict[int, set[int]] = {}
    for v in versions:
        held_by[v.pk] = set(erased)  # what cannot be read counts as holding everyone
        c.section("live version trained without erased people", lambda v=v: held_by.update({v.pk: erased_people_held(v)}))

    # 1. Every request completed, with its certificate on disk matching its recorded hash.
    def requests_completed() -> None:
        for request in ErasureRequest.objects.filter(pk__in=world.request_ids).order_by("pk"):
            if request.status != "completed":
                steps = ", ".join(
                    f"{s.name}={s.status}" + (f" ({s.error[:300]})" if s.error else "")
                    for s in ErasureStep.objects.filter(request=request).order_by("pk")
                )
                c.check("request completed", False, f"erasure request {request.pk} is {request.status}; steps: {steps}")
                continue
            c.check("request completed", bool(request.certificate_sha256 and request.certificate_path),
                    f"erasure request {request.pk} is completed without a certificate")
            c.check("request completed", request.subject_id is None,
                    f"erasure request {request.pk} is completed but still points at subject {request.subject_id}")
            path = Path(settings.REPORT_ROOT) / request.certificate_path
            c.check("certificate on disk", path.is_file(), f"certificate of request {request.pk} missing: {path}")
            if path.is_file():
                c.check("certificate on disk", _sha256(path) == request.certificate_sha256,
                        f"certificate of request {request.pk} does not match its recorded SHA-256")

    c.section("request completed", requests_completed)

    # 2. Nothing of the erased people is left, anywhere they were.
    def people_erased() -> None:
        left = {
            "DataSubject": DataSubject.objects.filter(pk__in=erased).count(),
            "DataRecord": DataRecord.objects.filter(subject_id__in=erased).count()
            + DataRecord.objects.filter(pk__in=world.erased_record_ids).exclude(subject_id__in=erased).count(),
            "SnapshotMembership": SnapshotMembership.objects.filter(subject_id__in=erased).count()
            + SnapshotMembership.objects.filter(record_id__in=world.erased_record_ids).count(),
            "ConsentEvent": ConsentEvent.objects.filter(subject_id__in=erased).count(),
            "SisaAssignment": SisaAssignment.objects.filter(subject_id__in=erased).count(),
        }
        for table, n in left.items():
            c.check("person erased", n == 0, f"{n} {table} row(s) of erased people remain")

    c.section("person erased", people_erased)

    # 3. One lineage per model name: numbered 1..N, one chain of supersession, one active tip.
    def lineages() -> None:
        for name in world.names:
            mine = [v for v in versions if v.name == name]
            numbers = sorted(v.version for v in mine)
            c.check("version numbering", numbers == list(range(1, len(mine) + 1)),
                    f"{name}: version numbers are {numbers}, not unique and consecutive from 1")
            active = [v for v in mine if v.status == "active"]
            c.check("one active version", len(active) == 1,
                    f"{name}: {len(active)} active versions {[(v.pk, v.version) for v in active]} (statuses "
                    f"{[(v.version, v.status, v.supersedes_id) for v in mine]})")
            superseded = Counter(v.supersedes_id for v in mine if v.supersedes_id is not None)
            doubled = {pk: n for pk, n in superseded.items() if n > 1}
            c.check("no duplicate remediation", not doubled,
                    f"{name}: versions superseded by more than one version: {doubled} (version id: count)")
            by_pk = {v.pk: v for v in mine}
            for v in mine:
                if v.supersedes_id is None:
                    continue
                old = by_pk.get(v.supersedes_id)
                c.check("supersession chain", old is not None and old.version < v.version,
                        f"{name} v{v.version} supersedes version {v.supersedes_id}, not an earlier version of its name")
            roots = [v.version for v in mine if v.supersedes_id is None]
            c.check("supersession chain", roots == [1], f"{name}: versions superseding nothing: {roots} (only v1 may)")
            for v in active:
                c.check("supersession chain", v.pk not in superseded,
                        f"{name}: active v{v.version} is itself superseded by another version")
            new = len(mine) - 1
            c.check("no duplicate remediation", new <= len(world.request_ids),
                    f"{name}: {new} new versions for {len(world.request_ids)} erasure requests")
            per_run = Counter(v.training_run_id for v in mine)
            c.check("no duplicate remediation", max(per_run.values(), default=0) <= 1,
                    f"{name}: a training run registered several versions: {dict(per_run)}")

    c.section("one active version", lineages)

    # 4. Every live version was trained on data that held none of the erased people: by the
    #    records it reports having trained on, and by time (its run started after the last
    #    erasure left its snapshot).
    def live_versions_clean() -> None:
        for v in versions:
            if v.status not in LIVE:
                continue
            run = v.training_run
            c.check("live version trained without erased people", not held_by[v.pk],
                    f"{v.name} v{v.version} ({v.status}, run {run.pk}) was trained on the records of the people of "
                    f"erasure requests {requests_of(held_by[v.pk])}")
            c.check("live version trained without erased people", not started_long_before(run, last_amended_at),
                    f"{v.name} v{v.version} ({v.status}) comes from run {run.pk} started {run.started_at}, before "
                    f"the last erasure amendment of its snapshot ({last_amended_at})")
            c.check("live version trained without erased people", run.snapshot_id == snap.pk,
                    f"{v.name} v{v.version} was trained on snapshot {run.snapshot_id}, not the world's snapshot")
            if not run.sisa:
                n_train = (v.metrics or {}).get("n_train")
                c.check("live version trained without erased people", n_train == len(members),
                        f"{v.name} v{v.version} (DP) trained on {n_train} records; its snapshot now holds {len(members)}")
                continue
            placement_run = run.sisa_placements_from_id or run.pk
            placed = dict(SisaAssignment.objects.filter(training_run_id=placement_run).values_list("subject_id", "shard"))
            c.check("live version trained without erased people", not (set(placed) & erased),
                    f"{v.name} v{v.version}: placement run {placement_run} still places erased people")
            c.check("live version trained without erased people", set(placed) == member_subjects,
                    f"{v.name} v{v.version}: placement run {placement_run} places {len(placed)} people, the snapshot "
                    f"holds {len(member_subjects)}; differing: {len(set(placed) ^ member_subjects)}")
            expected = Counter(placed.get(sid) for sid in member_subjects)
            trained = dict(
                SisaCheckpoint.objects.filter(training_run=run, slice=run.sisa["slices"] - 1).values_list("shard", "n_records")
            )
            for shard in range(run.sisa["shards"]):
                c.check("live version trained without erased people", trained.get(shard) == expected.get(shard, 0),
                        f"{v.name} v{v.version} (SISA run {run.pk}): shard {shard} was trained on {trained.get(shard)} "
                        f"records; the snapshot holds {expected.get(shard, 0)} of that shard's people")

    c.section("live version trained without erased people", live_versions_clean)

    # 5. No artifact of a model trained on an erased person's data is left on disk, and every
    #    active version's artifacts are there, intact.
    def artifacts_on_disk() -> None:
        for v in versions:
            run = v.training_run
            if v.status == "active":
                path = artifacts.absolute(v.artifact_path)
                c.check("active artifact intact", path.is_file(), f"{v.name} v{v.version}: artifact missing ({path})")
                if path.is_file():
                    c.check("active artifact intact", artifacts.sha256_of(path) == v.artifact_sha256,
                            f"{v.name} v{v.version}: artifact does not match ModelVersion.artifact_sha256")
                for cp in SisaCheckpoint.objects.filter(training_run=run):
                    cp_path = artifacts.absolute(cp.artifact_path)
                    c.check("active artifact intact", cp_path.is_file() and artifacts.sha256_of(cp_path) == cp.artifact_sha256,
                            f"{v.name} v{v.version}: checkpoint shard {cp.shard} slice {cp.slice} missing or altered")
            held = held_by[v.pk]
            if held or started_long_before(run, last_amended_at):
                c.check("no artifact of erased data", not artifacts.absolute(v.artifact_path).exists(),
                        f"{v.name} v{v.version} ({v.status}) was trained on the people of erasure requests "
                        f"{requests_of(held) or 'amended after it started'} and its artifact is still on disk")
            if not run.sisa or (run.sisa_placements_from_id or run.pk) != world.sisa_run_id:
                continue
            for sid in sorted(held):
                shard, slice_ = world.erased_placements[sid]
                for cp in SisaCheckpoint.objects.filter(training_run=run, shard=shard, slice__gte=slice_):
                    c.check("no artifact of erased data", not artifacts.absolute(cp.artifact_path).exists(),
                            f"{v.name} v{v.version}: checkpoint shard {shard} slice {cp.slice} holds the person of "
                            f"erasure request {request_of[sid]} and is still on disk")

    c.section("artifacts on disk", artifacts_on_disk)

    # 6. The privacy ledger: one entry per run that released a model, spent; nothing reserved
    #    or charged twice; the dataset's total agrees with the entries.
    def ledger() -> None:
        entries = list(PrivacyLedgerEntry.objects.filter(dataset_id=world.dataset_id))
        per_run = Counter(e.training_run_id for e in entries)
        c.check("ledger: no double charge", all(n == 1 for n in per_run.values()),
                f"runs with several ledger entries: {[r for r, n in per_run.items() if n > 1]}")
        reserved = [e.training_run_id for e in entries if e.state == LedgerState.RESERVED]
        c.check("ledger: nothing reserved", not reserved, f"entries still reserved for runs {reserved}")
        state_of = {e.training_run_id: e.state for e in entries}
        with_version = set(ModelVersion.objects.filter(training_run__snapshot__dataset_id=world.dataset_id)
                           .values_list("training_run_id", flat=True))
        for run_id in sorted(with_version):
            c.check("ledger: one spent entry per released model", state_of.get(run_id) == LedgerState.SPENT,
                    f"run {run_id} released a model version; its ledger entry is {state_of.get(run_id, 'missing')}")
        spent_without_model = sorted(r for r, s in state_of.items() if s == LedgerState.SPENT and r not in with_version)
        c.check("ledger: no double charge", not spent_without_model,
                f"spent entries for runs that released no model version: {spent_without_model}")
        for run in TrainingRun.objects.filter(snapshot__dataset_id=world.dataset_id, status__in=("failed", "cancelled")):
            c.check("ledger: no double charge", state_of.get(run.pk) in (None, LedgerState.RELEASED),
                    f"{run.status} run {run.pk} still has a {state_of.get(run.pk)} ledger entry")
        total = PrivacyLedgerTotal.objects.filter(dataset_id=world.dataset_id).first()
        n_spent = sum(1 for e in entries if e.state == LedgerState.SPENT)
        c.check("ledger: total agrees", total is not None and total.spent_runs == n_spent and total.reserved_runs == 0,
                f"ledger total says spent_runs={getattr(total, 'spent_runs', None)}, "
                f"reserved_runs={getattr(total, 'reserved_runs', None)}; the entries: {n_spent} spent, {len(reserved)} reserved")

    c.section("ledger", ledger)

    # 7. No training run is left half-done.
    def runs_finished() -> None:
        unfinished = list(TrainingRun.objects.filter(status__in=("queued", "running")).values_list("pk", "name", "status"))
        c.check("no run left unfinished", not unfinished, f"training runs left unfinished: {unfinished}")

    c.section("no run left unfinished", runs_finished)

    # 8. Snapshot accounting: members = included − removed; one amendment per erased person;
    #    the roots chain from the original root to the root of the current members.
    def snapshots() -> None:
        removed = sum(a.records_removed for a in chain)
        c.check("snapshot accounting", len(members) == snap.included_count - removed,
                f"snapshot {snap.pk} holds {len(members)} members; included {snap.included_count} − removed {removed} "
                f"= {snap.included_count - removed}")
        c.check("snapshot accounting", len(members) == N_PEOPLE - N_ERASED,
                f"snapshot {snap.pk} holds {len(members)} members, expected {N_PEOPLE - N_ERASED}")
        per_request = Counter(a.erasure_request_id for a in chain)
        for pk in world.request_ids:
            c.check("snapshot accounting", per_request.get(pk) == 1,
                    f"snapshot {snap.pk} has {per_request.get(pk, 0)} amendments for erasure request {pk}")
        for a in chain:
            c.check("snapshot accounting", a.records_removed == 1 and a.subjects_removed == 1,
                    f"amendment {a.pk} (request {a.erasure_request_id}) removed {a.records_removed} records of "
                    f"{a.subjects_removed} people; each person had one record")
        previous = snap.merkle_root
        for a in chain:
            c.check("snapshot root chain", a.previous_root == previous,
                    f"amendment {a.pk} (request {a.erasure_request_id}) starts from root {a.previous_root[:12]}…, "
                    f"the root before it was {previous[:12]}… (a lost update)")
            previous = a.new_root
        recomputed = snapshot_merkle_root(snapshot_id=snap.pk)
        rows = SnapshotMembership.objects.filter(snapshot=snap).order_by("record_id").values_list("record_id", "record__content_hash")
        independent = merkle_root(rows)
        c.check("snapshot root chain", recomputed == independent,
                "snapshot_merkle_root disagrees with the Merkle root computed here from the members")
        c.check("snapshot root chain", bool(chain) and chain[-1].new_root == recomputed,
                f"snapshot {snap.pk}: the latest amendment's new_root is not the root of the current members")

    c.section("snapshot accounting", snapshots)

    # 9. What each certificate claims is true: the root it gives for its snapshot amendment,
    #    the new versions it names (trained after the person left), the old ones it says
    #    were deleted (gone from disk).
    def certificates() -> None:
        for request in ErasureRequest.objects.filter(pk__in=world.request_ids, status="completed").order_by("pk"):
            path = Path(settings.REPORT_ROOT) / request.certificate_path
            if not path.is_file():
                continue  # reported above
            text = _certificate_text(path)
            own = [a for a in amendments if a.erasure_request_id == request.pk]
            for a in own:
                c.check("certificate claims true", a.new_root in text,
                        f"certificate of request {request.pk} does not give the root after its amendment of snapshot "
                        f"{a.snapshot_id} ({a.new_root[:12]}…)")
            claimed_old = {int(pk) for pk in re.findall(r"v\d+\(#(\d+)\)", text)}
            claimed_new = {(int(pk), int(n)) for pk, n in re.findall(r"#(\d+)\(v(\d+)\)", text)}
            c.check("certificate claims true", bool(claimed_old),
                    f"certificate of request {request.pk} names no model version, yet both models trained on the person")
            for pk in sorted(claimed_old):
                old = ModelVersion.objects.filter(pk=pk).select_related("training_run").first()
                if old is None:
                    c.check("certificate claims true", False, f"certificate of request {request.pk} names unknown version #{pk}")
                    continue
                c.check("certificate claims true", old.status not in LIVE,
                        f"certificate of request {request.pk} says {old.name} v{old.version} was remediated; it is {old.status}")
                c.check("certificate claims true", not artifacts.absolute(old.artifact_path).exists(),
                        f"certificate of request {request.pk} says the artifact of {old.name} v{old.version} was deleted; "
                        "it is on disk")
            for pk, number in sorted(claimed_new):
                new = ModelVersion.objects.filter(pk=pk).select_related("training_run").first()
                if new is None or new.version != number:
                    c.check("certificate claims true", False,
                            f"certificate of request {request.pk} names new version #{pk} (v{number}), which does not exist")
                    continue
                held = held_by[new.pk] if new.pk in held_by else erased_people_held(new)
                left_at = amended_at.get(request.pk)
                c.check("certificate claims true",
                        person_of[request.pk] not in held and not started_long_before(new.training_run, left_at),
                        f"certificate of request {request.pk} names {new.name} v{new.version} as the model without the "
                        f"person, but it was trained on their records (run {new.training_run.pk} started "
                        f"{new.training_run.started_at}; the person left the snapshot {left_at})")

    c.section("certificate claims true", certificates)

    def audit_chain() -> None:
        result = audit_chain_verify()
        c.check("audit chain verifies", result.ok, f"audit chain broken: {result}")

    c.section("audit chain verifies", audit_chain)

    if c.violations:
        state = _state_table(world, versions=versions, held_by=held_by, chain=chain, request_of=request_of)
        context = f"{state}\n{context}" if context else state
    assert not c.violations, (
        f"{len(c.violations)} invariant violation(s) after {len(world.request_ids)} concurrent erasures:\n  - "
        + "\n  - ".join(c.violations)
        + f"\n{context}"
    )


def _state_table(world: World, *, versions, held_by, chain, request_of) -> str:
    """What the database holds, to read a failure by."""
    lines = ["State at the end (versions; amendments in order; runs with their ledger entry):"]
    for v in versions:
        run = v.training_run
        lines.append(
            f"  {v.name} v{v.version} #{v.pk} {v.status} supersedes={v.supersedes_id} run={run.pk} "
            f"started={run.started_at and run.started_at.time()} holds requests "
            f"{sorted(request_of[sid] for sid in held_by.get(v.pk, ()))}"
        )
    for a in chain:
        lines.append(f"  amendment #{a.pk} request={a.erasure_request_id} at {a.created_at.time()} "
                     f"{a.previous_root[:8]}→{a.new_root[:8]}")
    entries = dict(PrivacyLedgerEntry.objects.filter(dataset_id=world.dataset_id).values_list("training_run_id", "state"))
    for pk, name, status in TrainingRun.objects.filter(snapshot_id=world.snapshot_id).order_by("pk").values_list(
        "pk", "name", "status"
    ):
        lines.append(f"  run {pk} {name} {status} ledger={entries.get(pk)}")
    return "\n".join(lines)


# --- Test 1: a real worker with two slots ---------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_five_concurrent_erasures_leave_one_clean_active_version_per_model(celery_worker):
    world = _build_world()
    _start_all_at_once(world.request_ids)
    waited = _wait_until_settled(world.request_ids)
    _assert_true_state(world, waited=waited)


# --- Test 2: the worker process killed mid-remediation ---------------------------------


def _database_url() -> str:
    cfg = connection.settings_dict
    auth = cfg["USER"] + (f":{cfg['PASSWORD']}" if cfg["PASSWORD"] else "")
    return f"postgres://{auth}@{cfg['HOST'] or '127.0.0.1'}:{cfg['PORT'] or 5432}/{cfg['NAME']}"


def _start_worker(log) -> subprocess.Popen:
    env = {
        **os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "DEBUG": "1",
        "DATABASE_URL": _database_url(), "STORAGE_ROOT": str(settings.STORAGE_ROOT),
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        # Killed work is taken over once its lease lapses: seconds here, a minute by default.
        "TASK_LEASE_SECONDS": "5",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", QUEUE, "--pool=threads", "--concurrency=2",
         "-l", "WARNING", "--without-heartbeat", "--without-gossip", "--without-mingle"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
    )


def _kill(worker: subprocess.Popen) -> None:
    if worker.poll() is None:
        os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(timeout=30)


def _purge_queue() -> None:
    from config.celery import app

    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(QUEUE)


_LOG_NOISE = ("SecurityWarning", "superuser privileges", "absolutely not recommended", "--uid option",
              "User information: uid=", "_warn_or_raise_security_error")


def _log_tail(log) -> str:
    log.flush()
    log.seek(0)
    lines = log.read().decode(errors="replace").splitlines()
    kept = [line for line in lines if line.strip() and not any(noise in line for noise in _LOG_NOISE)]
    return "\n".join(kept)[-2500:]


@pytest.mark.django_db(transaction=True)
def test_concurrent_erasures_survive_a_killed_worker():
    from config.celery import app
    from rights.tasks import execute_erasure_request

    world = _build_world()
    _purge_queue()
    task = app.tasks[execute_erasure_request.name]

    send = task.apply_async

    def apply_async(*args, **kwargs):
        # The service's own dispatch (after the commit), routed to the worker process's queue.
        return send(*args, **{**kwargs, "queue": QUEUE})

    with tempfile.TemporaryFile() as log:
        worker = _start_worker(log)
        try:
            with mock.patch.object(task, "apply_async", apply_async):
                _start_all_at_once(world.request_ids)

            def remediation_training_or_all_done() -> bool:
                return TrainingRun.objects.filter(pk__gt=world.last_run_before, status="running").exists() or not (
                    ErasureRequest.objects.filter(pk__in=world.request_ids, status="in_progress").exists()
                )

            try:
                wait_for(remediation_training_or_all_done, timeout=120, what="a remediation run to be training on the worker")
            except AssertionError as exc:
                raise AssertionError(f"{exc}; worker log:\n{_log_tail(log)}") from None
        finally:
            _kill(worker)  # SIGKILL to the process group: no task gets to finish or clean up
        time.sleep(0.5)

        unfinished = list(ErasureRequest.objects.filter(pk__in=world.request_ids, status="in_progress").values_list("pk", flat=True))
        assert unfinished, "every erasure finished before the worker was killed; the test proves nothing"
        left_running = list(TrainingRun.objects.filter(pk__gt=world.last_run_before, status="running").values_list("pk", flat=True))

        # A fresh worker; the DPO re-sends execution of every request still in progress.
        fresh = _start_worker(log)
        try:
            for pk in unfinished:
                execute_erasure_request.apply_async(args=[pk], queue=QUEUE)
            waited = _wait_until_settled(world.request_ids)
        finally:
            _kill(fresh)
        _purge_queue()
        context = (
            f"The worker was killed with requests {unfinished} in progress and runs {left_running} training. "
            f"Workers' log (tail):\n{_log_tail(log)}"
        )
    _assert_true_state(world, waited=waited, context=context)
