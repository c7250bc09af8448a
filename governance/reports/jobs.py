"""Report jobs: the machinery every app renders its PDFs through.

A report kind is registered by the app that owns what it describes (``report_kind_register``
in that app's ``AppConfig.ready``): the record of processing here, model lineage and DPIA
reports in ``assessments``, erasure certificates in ``rights``. This module never imports
those apps; a kind whose app is not installed is simply not offered.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.apps import apps
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from governance.dispatch import task_dispatch_on_commit, tasks_redispatch, unsent_cutoff, unstarted_cutoff
from governance.leases import lease_cutoff, lease_heartbeat, lease_refuse_if_held
from governance.models import ReportJob, ReportKind, ReportStatus
from governance.services import SYSTEM_ACTOR, ServiceError, audit_event_record

logger = logging.getLogger(__name__)

# (*, object_id, path) -> SHA-256 of the file written at path
ReportBuilder = Callable[..., str]
# (*, object_id) -> a reason the report cannot be requested yet, or "" when it can
ReportPrecheck = Callable[..., str]


@dataclass(frozen=True)
class ReportKindSpec:
    build: ReportBuilder
    about: tuple[str, str] | None  # (app label, model) of the object described; None: the whole register
    precheck: ReportPrecheck | None = None
    # The builder takes ``erasure_detail``: False when an ML engineer asked for the report, who
    # may learn that data changed and when, never which erasure request or why (issue 14).
    role_aware: bool = False


_KINDS: dict[str, ReportKindSpec] = {}


def report_kind_register(
    *, kind: str, build: ReportBuilder, about: tuple[str, str] | None, precheck: ReportPrecheck | None = None,
    role_aware: bool = False,
) -> None:
    """Offer a kind of report; called once per kind from its app's ``ready``."""
    if kind not in ReportKind.values:
        raise ValueError(f"{kind!r} is not a ReportKind")
    _KINDS[kind] = ReportKindSpec(build=build, about=about, precheck=precheck, role_aware=role_aware)


def report_kinds() -> dict[str, ReportKindSpec]:
    return dict(_KINDS)


def report_object_exists(*, kind: str, object_id: Any) -> bool:
    spec = _KINDS.get(kind)
    if spec is None:
        return False
    if spec.about is None:
        return True
    try:
        model = apps.get_model(*spec.about)
    except LookupError:
        return False
    return model.objects.filter(pk=object_id).exists()


@transaction.atomic
def report_job_request(*, kind: str, actor: Any, object_id: Any = None, enqueue: bool = True) -> ReportJob:
    """Queue a report; the Celery task renders it after the commit."""
    spec = _KINDS.get(kind)
    if spec is None:
        offered = ", ".join(k for k in ReportKind.values if k in _KINDS)
        raise ServiceError(f"Unknown report kind {kind!r}; one of {offered}.", field="kind")
    if spec.about is None:
        object_id = None
    else:
        if object_id is None or object_id == "":
            raise ServiceError(f"A {kind} report needs the id of its object.", field="object_id")
        try:
            object_id = int(object_id)
        except (TypeError, ValueError):
            raise ServiceError(f"{object_id!r} is not an id.", field="object_id")
        if not report_object_exists(kind=kind, object_id=object_id):
            raise ServiceError(f"No {spec.about[1]} with id {object_id}.", field="object_id")
        if spec.precheck is not None:
            reason = spec.precheck(object_id=object_id)
            if reason:
                raise ServiceError(reason, field="object_id")
    job = ReportJob.objects.create(kind=kind, object_id=object_id, requested_by=actor if getattr(actor, "pk", None) else None)
    audit_event_record(
        actor=actor, action="report.requested", object_type="report_job", object_id=job.pk,
        details={"kind": kind, "object_id": object_id},
    )
    if enqueue:
        report_job_dispatch_on_commit(job_id=job.pk)
    return job


def report_job_dispatch_on_commit(*, job_id: int) -> None:
    from governance.reports.tasks import generate_report

    task_dispatch_on_commit(generate_report, args=[job_id], outbox=ReportJob.objects.filter(pk=job_id))


def report_jobs_redispatch() -> int:
    """The outbox sweep of report jobs: queued and never sent, sent long ago and never
    started, or running with a lapsed lease (the worker died)."""
    from governance.reports.tasks import generate_report

    now = timezone.now()
    stalled = ReportJob.objects.filter(
        Q(status=ReportStatus.QUEUED, dispatched_at__isnull=True, created_at__lt=unsent_cutoff(now))
        | Q(status=ReportStatus.QUEUED, dispatched_at__lt=unstarted_cutoff(now))
        | Q(status=ReportStatus.RUNNING, heartbeat_at__lt=lease_cutoff(now))
    ).values_list("pk", flat=True)
    # Report jobs have no task id or queue of their own.
    return tasks_redispatch(generate_report, outbox=ReportJob.objects, stalled=[(pk, None, None) for pk in stalled])


def report_file_path(job: ReportJob) -> Path:
    return Path(settings.REPORT_ROOT) / job.file_path


def report_job_run(*, job_id: int) -> ReportJob:
    """Render a queued report and record its file and SHA-256; running it twice renders it once.

    The rendering happens outside a transaction (it reads through selectors only); the job
    row moves queued → running → succeeded/failed in short transactions around it.
    """
    with transaction.atomic():
        job = ReportJob.objects.select_for_update().get(pk=job_id)
        if job.status == ReportStatus.SUCCEEDED and report_file_path(job).is_file():
            return job
        if job.status == ReportStatus.RUNNING:
            # Another worker may render it now (this is a duplicate or an early redelivery).
            lease_refuse_if_held(job.heartbeat_at, what=f"report job {job.pk}")
        job.status, job.started_at, job.error = ReportStatus.RUNNING, timezone.now(), ""
        job.heartbeat_at = job.started_at
        job.save(update_fields=["status", "started_at", "error", "heartbeat_at"])
    with lease_heartbeat(ReportJob.objects.filter(pk=job.pk, status=ReportStatus.RUNNING)):
        return _report_job_render(job)


def _sees_erasure_detail(job: ReportJob) -> bool:
    from governance.roles import sees_erasure_detail

    # A job with no requester was queued by the system itself (the demo, a beat task).
    return job.requested_by_id is None or sees_erasure_detail(job.requested_by)


def _report_job_render(job: ReportJob) -> ReportJob:
    suffix = f"-{job.object_id}" if job.object_id is not None else ""
    relative = f"{job.kind}/{job.kind}{suffix}-job{job.pk}.pdf"
    spec = _KINDS.get(job.kind)
    try:
        if spec is None:
            raise RuntimeError(f"{job.kind} reports are not available in this installation.")
        extra = {"erasure_detail": _sees_erasure_detail(job)} if spec.role_aware else {}
        sha256 = spec.build(object_id=job.object_id, path=Path(settings.REPORT_ROOT) / relative, **extra)
    except Exception as exc:
        logger.exception("report job %s failed", job.pk)
        with transaction.atomic():
            ReportJob.objects.filter(pk=job.pk).update(
                status=ReportStatus.FAILED, error=f"{type(exc).__name__}: {exc}"[:2000], finished_at=timezone.now(),
                heartbeat_at=None,
            )
            audit_event_record(
                actor=SYSTEM_ACTOR, action="report.failed", object_type="report_job", object_id=job.pk,
                details={"kind": job.kind, "object_id": job.object_id, "error": type(exc).__name__},
            )
        job.refresh_from_db()
        return job
    path = Path(settings.REPORT_ROOT) / relative
    with transaction.atomic():
        job = ReportJob.objects.select_for_update().get(pk=job.pk)
        job.status, job.file_path, job.sha256 = ReportStatus.SUCCEEDED, relative, sha256
        job.size_bytes, job.finished_at, job.heartbeat_at = path.stat().st_size, timezone.now(), None
        job.save(update_fields=["status", "file_path", "sha256", "size_bytes", "finished_at", "heartbeat_at"])
        audit_event_record(
            actor=SYSTEM_ACTOR, action="report.generated", object_type="report_job", object_id=job.pk,
            details={"kind": job.kind, "object_id": job.object_id, "sha256": sha256, "size_bytes": job.size_bytes},
        )
    return job
