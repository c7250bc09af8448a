"""Faults during an erasure, with real worker processes (issue 13).

1. A manual retry while the erasure is running: the same request executed again (by its
   task sent a second time and by the DPO's POST …/execute/) while one of its remediation
   retrainings trains on another worker process. The duplicates must wait for the lease
   and then be no-ops: one retrain and one ledger charge per lineage, and no file of a
   live version is ever removed (the audit log once showed ``succeeded (model version
   96)`` followed by ``training_run.cancelled … files_removed: 1``, and the new version's
   weights answered 409).
2. A worker SIGKILLed while it unlearns a SISA model: the files it had written for the
   unlearning run must not outlive it. A fresh worker and the redispatch sweeper (how
   production recovers: the killed worker's lease lapses) finish the erasure, and
   afterwards every file under the runs folder belongs to a live version.

PostgreSQL and a broker only (worker subprocesses share the test database).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import pytest
from django.conf import settings
from django.test import override_settings

from governance.models import AuditEvent
from governance.selectors import audit_chain_verify
from mlops import artifacts
from mlops import services as mlops_services
from mlops.models import (
    LedgerState,
    ModelVersion,
    PrivacyLedgerEntry,
    PrivacyLedgerTotal,
    RunStatus,
    SisaAssignment,
    SisaCheckpoint,
    TrainingRun,
)
from rights import services as rights_services
from rights.models import ErasureRequest, ErasureStatus, ErasureStep
from tests import faults
from tests.mlops.helpers import wait_for
from tests.rights import helpers as h

pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.skipif(settings.CELERY_EMBEDDED, reason="faults of workers need a broker and worker processes"),
]
LEASE = 5  # seconds: killed work is taken over quickly here; a minute by default
LIVE = ("active", "tainted")
_LOG_NOISE = ("SecurityWarning", "superuser privileges", "absolutely not recommended", "--uid option",
              "User information: uid=", "_warn_or_raise_security_error")


# --- Helpers ------------------------------------------------------------------------------


def _train(*, snapshot, name: str, epochs: int, hidden: int, sisa: dict | None = None, seed: int = 3) -> TrainingRun:
    """Queue through mlops's service and train here, in the test process."""
    run = mlops_services.training_run_queue(
        snapshot=snapshot, name=name, epochs=epochs, batch_size=32, noise_multiplier=1.0, seed=seed,
        model_spec={"hidden_sizes": [hidden]}, validation_split=0.0, holdout_fraction=0.0, sisa=sisa, enqueue=False,
    )
    mlops_services.training_run_execute(run_id=run.pk)
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, f"world: training {name} failed: {run.error}"
    return run


@contextmanager
def _routed(queue: str, sent: list | None = None) -> Iterator[None]:
    """The erasure task as the services send it (after the commit, through the outbox),
    routed to this test's worker processes; ``sent`` collects the AsyncResults."""
    from config.celery import app
    from rights.tasks import execute_erasure_request

    task = app.tasks[execute_erasure_request.name]
    send = task.apply_async

    def apply_async(*args, **kwargs):
        result = send(*args, **{**kwargs, "queue": queue})
        if sent is not None:
            sent.append(result)
        return result

    with mock.patch.object(task, "apply_async", apply_async):
        yield


def _purge(queue: str) -> None:
    """Empty the test's queue, and forget messages a killed worker left unacknowledged on
    it (Redis would hand them back to a worker of this queue after the visibility timeout)."""
    from config.celery import app

    with app.connection_for_write() as conn:
        channel = conn.default_channel
        channel.queue_purge(queue)
        client = channel.client
        for tag, raw in client.hgetall(channel.unacked_key).items():
            try:
                routing_key = json.loads(raw)[2]
            except (ValueError, IndexError, TypeError):
                continue
            if routing_key == queue:
                client.hdel(channel.unacked_key, tag)
                client.zrem(channel.unacked_index_key, tag)


def _log_tail(log: Path) -> str:
    if not log.exists():
        return "(no worker log)"
    lines = log.read_text(errors="replace").splitlines()
    kept = [line for line in lines if line.strip() and not any(noise in line for noise in _LOG_NOISE)]
    return "\n".join(kept)[-3000:] or "(worker log empty)"


def _intact(relative: str, sha256: str) -> bool:
    path = artifacts.absolute(relative)
    return path.is_file() and artifacts.sha256_of(path) == sha256


def _runs_folder() -> Path:
    return Path(artifacts.absolute("mlops/runs"))


def _files_under_runs() -> set[Path]:
    root = _runs_folder()
    return {p for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def _relative(path: Path) -> str:
    return path.relative_to(Path(settings.ARTIFACT_ROOT).resolve()).as_posix()


def _completed(request_id: int) -> bool:
    return ErasureRequest.objects.filter(pk=request_id, status=ErasureStatus.COMPLETED).exists()


def _one_certificate(request_id: int) -> None:
    request = ErasureRequest.objects.get(pk=request_id)
    assert request.status == ErasureStatus.COMPLETED and request.certificate_sha256
    issued = AuditEvent.objects.filter(action="erasure.certificate_issued", object_id=str(request_id))
    assert issued.count() == 1, list(issued.values_list("position", "details"))
    path = Path(settings.REPORT_ROOT) / request.certificate_path
    assert path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == request.certificate_sha256
    assert not ErasureStep.objects.filter(request_id=request_id).exclude(status="done").exists()


def _run_events(run_ids) -> list[tuple[str, str, dict]]:
    return list(
        AuditEvent.objects.filter(object_type="training_run", object_id__in=[str(pk) for pk in run_ids])
        .order_by("position").values_list("object_id", "action", "details")
    )


# --- 1. A manual retry while the request is running ----------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_manual_retry_while_the_erasure_runs_waits_and_never_removes_a_live_versions_files(dpo_client, tmp_path):
    from rights.tasks import execute_erasure_request

    queue = f"erasure-faults-retry-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "workers.log"
    lease = {"TASK_LEASE_SECONDS": str(LEASE)}
    # Two worker processes: the duplicates are delivered to the one not executing.
    workers = [faults.start_worker(f"efaults-retry-{i}", queue=queue, extra=lease, log=log) for i in range(2)]
    sent: list = []
    seen_states: dict[str, set[str]] = {}
    try:
        tag = uuid.uuid4().hex[:8]
        erin = f"erin-{tag}@example.org"
        snap = h.snapshot_of(h.people_dataset(
            act=h.activity(), people=[h.subject_for(erin), *h.crowd(599, tag)], d=6, seed=5,
        ))
        # Two non-SISA models: remediation retrains each from scratch, a few seconds apiece.
        started = time.monotonic()
        olds = [
            ModelVersion.objects.get(training_run=_train(snapshot=snap, name=f"retry-{tag}-{k}", epochs=12, hidden=64, seed=k))
            for k in range(2)
        ]
        print(f"\nworld: two models trained in {time.monotonic() - started:.1f} s")
        last_run_before = TrainingRun.objects.order_by("-pk").values_list("pk", flat=True).first()
        request = rights_services.erasure_request_receive(identifier=erin, ground="17_1_a")
        rights_services.erasure_request_verify(erasure_request=request)

        with _routed(queue, sent):
            rights_services.erasure_request_execute_start(erasure_request=request.pk)
        assert len(sent) == 1

        def remediation_running() -> bool:
            return TrainingRun.objects.filter(
                pk__gt=last_run_before, remediates__isnull=False, status=RunStatus.RUNNING
            ).exists()

        try:
            wait_for(lambda: remediation_running() or _completed(request.pk), timeout=120,
                     what="a remediation retraining to be training on a worker")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; workers' log:\n{_log_tail(log)}") from None
        assert not _completed(request.pk), "the erasure finished before the retry; the test proves nothing"

        # The manual retry, twice: the task sent again, and the DPO's POST (through the service's own dispatch).
        sent.append(execute_erasure_request.apply_async(args=[request.pk], queue=queue))
        with _routed(queue, sent):
            response = dpo_client.post(f"/api/v1/erasure-requests/{request.pk}/execute/", {}, format="json")
        assert response.status_code == 202, response.content
        assert len(sent) == 3
        # The sweeper leaves a request alone while its lease is live.
        with override_settings(TASK_LEASE_SECONDS=LEASE), _routed(queue, sent):
            assert rights_services.erasure_requests_redispatch() == 0
        assert len(sent) == 3
        assert remediation_running() and not _completed(request.pk), (
            "the retraining ended while the retries were sent; the test proves nothing"
        )

        def all_done() -> bool:
            for result in sent:
                seen_states.setdefault(result.id, set()).add(result.state)
            return all(result.state in ("SUCCESS", "FAILURE") for result in sent)

        try:
            # Every execution has ended: the first completed the request, the duplicates
            # waited for its lease and then found the request completed.
            wait_for(all_done, timeout=180, what="the execution and both retries to finish")
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}; states: {[(r.id, r.state) for r in sent]}; workers' log:\n{_log_tail(log)}"
            ) from None
    finally:
        for worker in workers:
            faults.stop(worker)
        _purge(queue)

    outcomes = [result.result for result in sent]
    assert all(isinstance(o, dict) and o.get("status") == "completed" for o in outcomes), (outcomes, _log_tail(log))
    held = [r.id for r in sent[1:] if "RETRY" in seen_states.get(r.id, set())]
    print(f"retries held by the lease: {len(held)} of 2; states seen: {seen_states}")
    _one_certificate(request.pk)

    # One new version per lineage, trained once, with its files; the old ones superseded.
    new_runs = list(TrainingRun.objects.filter(pk__gt=last_run_before).order_by("pk"))
    assert len(new_runs) == 2, [(r.pk, r.name, r.status) for r in new_runs]
    for old in olds:
        successors = list(ModelVersion.objects.filter(supersedes=old))
        assert len(successors) == 1, f"{old.name}: {len(successors)} versions replace v{old.version}"
        new = successors[0]
        assert new.status == "active" and new.training_run.remediates_id == old.pk
        assert new.training_run.status == RunStatus.SUCCEEDED and new.training_run.attempts == 1
        assert ModelVersion.objects.filter(name=old.name).count() == 2
        old.refresh_from_db()
        assert old.status == "superseded"
        assert not artifacts.run_files(old.training_run_id), f"{old.name} v{old.version}: the erased person's model is on disk"
    live = list(ModelVersion.objects.filter(status__in=LIVE))
    assert {v.training_run_id for v in live} == {r.pk for r in new_runs}
    for version in live:
        assert _intact(version.artifact_path, version.artifact_sha256), (
            f"{version.name} v{version.version} (#{version.pk}) is live and its weights are missing or altered; "
            f"its run's events: {_run_events([version.training_run_id])}"
        )
        answer = dpo_client.get(f"/api/v1/models/{version.pk}/artifact/")
        assert answer.status_code == 200, (version.pk, answer.status_code)
        body = b"".join(answer.streaming_content)
        answer.close()
        assert hashlib.sha256(body).hexdigest() == version.artifact_sha256

    # Nothing was cancelled, failed or had files removed under the new versions.
    events = _run_events(r.pk for r in new_runs)
    actions = [action for _, action, _ in events]
    assert actions.count("training_run.started") == 2 and actions.count("training_run.succeeded") == 2, events
    assert "training_run.cancelled" not in actions and "training_run.failed" not in actions, events
    assert not [e for e in events if (e[2] or {}).get("files_removed")], events

    # The ledger: one spent entry per run (two originals, two retrains), nothing reserved.
    dataset_id = snap.dataset_id
    entries = list(PrivacyLedgerEntry.objects.filter(dataset_id=dataset_id).values_list("training_run_id", "state"))
    assert sorted(entries) == sorted(
        [(old.training_run_id, LedgerState.SPENT) for old in olds] + [(r.pk, LedgerState.SPENT) for r in new_runs]
    ), entries
    total = PrivacyLedgerTotal.objects.get(dataset_id=dataset_id)
    assert total.spent_runs == 4 and total.reserved_runs == 0
    assert audit_chain_verify().ok


# --- 2. A worker killed during SISA unlearning ----------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_while_unlearning_leaves_no_orphan_files(tmp_path):
    queue = f"erasure-faults-unlearn-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "workers.log"
    lease = {"TASK_LEASE_SECONDS": str(LEASE)}
    files_before = _files_under_runs()  # of earlier tests, whose rows are gone
    first = faults.start_worker("efaults-unlearn", queue=queue, extra=lease, log=log)
    fresh = None
    try:
        tag = uuid.uuid4().hex[:8]
        identifiers = [f"unlearn-{tag}-{i}@example.org" for i in range(2400)]
        people = [h.subject_for(identifier) for identifier in identifiers]
        snap = h.snapshot_of(h.people_dataset(act=h.activity(), people=people, d=6, seed=7))
        name = f"unlearn-{tag}"
        started = time.monotonic()
        sisa_run = _train(snapshot=snap, name=name, epochs=48, hidden=64, sisa={"shards": 2, "slices": 2})
        print(f"\nworld: SISA model trained in {time.monotonic() - started:.1f} s")
        head = ModelVersion.objects.get(training_run=sisa_run)
        # The person is in the last shard, first slice: unlearning links shard 0's clean
        # checkpoints into the new run's folder at once, then retrains both stages of shard 1.
        placed = (
            SisaAssignment.objects.filter(training_run=sisa_run, shard=1, slice=0).order_by("subject_id")
            .values_list("subject_id", flat=True).first()
        )
        identifier = identifiers[[p.pk for p in people].index(placed)]
        request = rights_services.erasure_request_receive(identifier=identifier, ground="17_1_a")
        rights_services.erasure_request_verify(erasure_request=request)
        with _routed(queue):
            rights_services.erasure_request_execute_start(erasure_request=request.pk)

        def unlearning_with_files() -> TrainingRun | None:
            run = TrainingRun.objects.filter(remediates=head, status=RunStatus.RUNNING).first()
            return run if run is not None and artifacts.run_files(run.pk) else None

        try:
            wait_for(lambda: unlearning_with_files() is not None or _completed(request.pk), timeout=120,
                     what="the unlearning run to have written files")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; worker log:\n{_log_tail(log)}") from None
        killed = unlearning_with_files()
        os.killpg(first.pid, signal.SIGKILL)  # the whole worker: nothing gets to clean up
        first.wait(timeout=30)
        assert killed is not None and not _completed(request.pk), "unlearning finished before the kill"
        killed.refresh_from_db()
        assert killed.status == RunStatus.RUNNING, "the unlearning run was no longer running when killed"
        left = artifacts.run_files(killed.pk)
        assert left, "the killed unlearning left no files; the test proves nothing"
        assert not ModelVersion.objects.filter(training_run=killed).exists()
        print(f"killed while unlearning: run {killed.pk} left {len(left)} file(s)")

        # Recovery as in production: a worker is up, the lease lapses, the sweeper re-sends.
        killed_at = time.monotonic()
        fresh = faults.start_worker("efaults-unlearn-fresh", queue=queue, extra=lease, log=log)
        with override_settings(TASK_LEASE_SECONDS=LEASE), _routed(queue):
            wait_for(lambda: rights_services.erasure_requests_redispatch() > 0, timeout=60,
                     what="the sweeper to re-send the erasure whose lease lapsed")
        print(f"re-sent {time.monotonic() - killed_at:.1f} s after the kill (lease {LEASE} s)")
        try:
            wait_for(lambda: _completed(request.pk), timeout=180, what="the recovered erasure to complete")
        except AssertionError as exc:
            steps = list(ErasureStep.objects.filter(request=request).values_list("name", "status", "error"))
            raise AssertionError(f"{exc}; steps: {steps}; workers' log:\n{_log_tail(log)}") from None
    finally:
        for worker in (first, fresh):
            faults.stop(worker)
        _purge(queue)

    _one_certificate(request.pk)

    # The killed attempt: failed, its files and checkpoint rows gone, nothing charged.
    killed.refresh_from_db()
    assert killed.status == RunStatus.FAILED, killed.status
    assert not artifacts.run_files(killed.pk), artifacts.run_files(killed.pk)
    assert not SisaCheckpoint.objects.filter(training_run=killed).exists()
    assert not PrivacyLedgerEntry.objects.filter(training_run=killed).exists()

    # The new live version: SISA, unlearned from the head, every file intact.
    live = list(ModelVersion.objects.filter(name=name, status__in=LIVE))
    assert len(live) == 1, live
    new = live[0]
    new_run = new.training_run
    assert new.is_sisa_ensemble and new.supersedes_id == head.pk and new_run.remediates_id == head.pk
    assert new_run.status == RunStatus.SUCCEEDED and new_run.sisa == {"shards": 2, "slices": 2}
    assert set(TrainingRun.objects.filter(remediates=head).values_list("pk", flat=True)) == {killed.pk, new_run.pk}
    assert _intact(new.artifact_path, new.artifact_sha256)
    checkpoints = list(SisaCheckpoint.objects.filter(training_run=new_run))
    assert sorted((c.shard, c.slice) for c in checkpoints) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for c in checkpoints:
        assert _intact(c.artifact_path, c.artifact_sha256), f"checkpoint shard {c.shard} slice {c.slice}"
    assert PrivacyLedgerEntry.objects.filter(training_run=new_run, state=LedgerState.SPENT).count() == 1

    # The old head trained on the person: superseded, its files removed (lineage_files_remove
    # deletes the files of versions no longer live that were trained on erased people).
    head.refresh_from_db()
    assert head.status == "superseded"
    assert not artifacts.run_files(head.training_run_id)

    # Every file under the runs folder (apart from earlier tests') belongs to an existing run
    # that did not fail or get cancelled, and is the weights or a checkpoint of a version's
    # run: exactly the files of the one live version.
    now_files = _files_under_runs() - files_before
    referenced = set(SisaCheckpoint.objects.values_list("artifact_path", flat=True)) | set(
        ModelVersion.objects.values_list("artifact_path", flat=True)
    )
    statuses = dict(TrainingRun.objects.values_list("pk", "status"))
    for path in sorted(now_files):
        run_id = int(path.relative_to(_runs_folder()).parts[0])
        assert run_id in statuses, f"{_relative(path)}: no training run {run_id}"
        assert statuses[run_id] not in (RunStatus.FAILED, RunStatus.CANCELLED), (
            f"{_relative(path)}: a file of {statuses[run_id]} run {run_id}"
        )
        assert _relative(path) in referenced, f"{_relative(path)}: referenced by no checkpoint or version"
    expected = {artifacts.absolute(new.artifact_path)} | {artifacts.absolute(c.artifact_path) for c in checkpoints}
    assert now_files == expected, sorted(_relative(p) for p in now_files ^ expected)
    assert not TrainingRun.objects.filter(status__in=(RunStatus.QUEUED, RunStatus.RUNNING)).exists()
    assert audit_chain_verify().ok
