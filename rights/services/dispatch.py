"""Starting a request's execution and sending it to a worker through the outbox, and the
sweep that re-sends executions never sent, never started or left by a dead worker."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from governance.dispatch import task_dispatch_on_commit, tasks_redispatch, unsent_cutoff, unstarted_cutoff
from governance.leases import lease_cutoff
from governance.services import ServiceConflict, audit_event_record
from rights.models import ErasureRequest, ErasureStatus, ErasureStepStatus
from rights.services._common import _locked


@transaction.atomic
def erasure_request_execute_start(*, erasure_request: ErasureRequest | int, actor: Any = None) -> ErasureRequest:
    """Move a verified request to in progress and enqueue its execution after the commit.

    A request already in progress is enqueued again: execution resumes from its first
    step not done, so a worker that died half way is recovered by executing again.
    """

    request = _locked(erasure_request)
    if request.status == ErasureStatus.RECEIVED:
        raise ServiceConflict("The requester's identity is not verified yet; verify the request before executing it.")
    if request.status not in (ErasureStatus.VERIFIED, ErasureStatus.IN_PROGRESS):
        raise ServiceConflict(f"A {request.status} request cannot be executed.")
    resumed = request.status == ErasureStatus.IN_PROGRESS
    if not resumed:
        request.status = ErasureStatus.IN_PROGRESS
        request.execution_started_at = timezone.now()
        request.save(update_fields=["status", "execution_started_at", "updated_at"])
    audit_event_record(
        actor=actor, action="erasure_request.execution_resumed" if resumed else "erasure_request.execution_started",
        object_type="erasure_request", object_id=request.pk, subject_ref=request.subject_ref, details={},
    )
    erasure_request_dispatch_on_commit(request_id=request.pk)
    return request


def erasure_request_dispatch_on_commit(*, request_id: int) -> None:
    from rights import tasks

    task_dispatch_on_commit(
        tasks.execute_erasure_request, args=[request_id],
        outbox=ErasureRequest.objects.filter(pk=request_id),
    )


def erasure_requests_redispatch() -> int:
    """The outbox sweep of erasures in progress: execution never sent, sent long ago and
    never started, or left by a worker that died (lease lapsed and not re-sent since).
    A request with a failed step is left for the DPO: it failed for a reason a retry
    would meet again (it is listed as failed in the admin and the API)."""
    from rights import tasks

    now = timezone.now()
    stalled = (
        ErasureRequest.objects.filter(status=ErasureStatus.IN_PROGRESS)
        .filter(
            Q(dispatched_at__isnull=True, execution_started_at__lt=unsent_cutoff(now))
            | Q(heartbeat_at__isnull=True, dispatched_at__lt=unstarted_cutoff(now))
            | Q(heartbeat_at__lt=lease_cutoff(now))
            & (Q(dispatched_at__isnull=True) | Q(dispatched_at__lt=F("heartbeat_at")))
        )
        .exclude(steps__status__in=(ErasureStepStatus.FAILED, ErasureStepStatus.WAITING))
        .values_list("pk", flat=True)
        .distinct()
    )
    pks = sorted({*stalled, *erasure_requests_waiting_resolved()})
    return tasks_redispatch(
        tasks.execute_erasure_request, outbox=ErasureRequest.objects, stalled=[(pk, None, None) for pk in pks]
    )


def erasure_requests_waiting_resolved() -> list[int]:
    """Erasures waiting for a model's owner whose awaited version is tainted no longer (the
    owner reported a retrained version, which superseded it, or it was retired): resumed by
    the sweep in case the signal that resumes them at once was lost with its process."""
    from mlops.models import ModelStatus, ModelVersion
    from rights.models import ErasureStep

    waiting = list(
        ErasureStep.objects.filter(status=ErasureStepStatus.WAITING, request__status=ErasureStatus.IN_PROGRESS,
                                   request__heartbeat_at__isnull=True)
        .values_list("request_id", "details")
    )
    awaited = {d.get("model_version") for _, d in waiting if isinstance(d, dict)}
    still = set(ModelVersion.objects.filter(pk__in=awaited, status=ModelStatus.TAINTED).values_list("pk", flat=True))
    return sorted({rid for rid, d in waiting if isinstance(d, dict) and d.get("model_version") not in still})


def erasure_requests_resume_for_lineage(*, name: str, actor: Any = None) -> list[int]:
    """Resume every erasure waiting for lineage ``name``'s owner (after a version of it was
    registered or changed status); an erasure still waiting finds so and waits again."""
    from rights.models import ErasureStep

    ids = sorted(set(
        ErasureStep.objects.filter(status=ErasureStepStatus.WAITING, request__status=ErasureStatus.IN_PROGRESS,
                                   details__name=name).values_list("request_id", flat=True)
    ))
    for request_id in ids:
        erasure_request_execute_start(erasure_request=request_id, actor=actor or "model-owner")
    return ids
