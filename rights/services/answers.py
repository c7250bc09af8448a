"""Building the answers of access (Art. 15) and portability (Art. 20) requests in a task,
keeping them downloadable for RIGHTS_ANSWER_DOWNLOAD_DAYS and purging them afterwards.

Split from rights.services.requests (the intake and decisions of every request) as Zulip
split its actions: this is the part that runs in the worker and touches files.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from governance.services import ServiceConflict, ServiceError, audit_event_record
from rights.models import ErasureStatus, RightsRequest, RightsRequestType

OBJECT_TYPE = "rights_request"
ANSWER_FOLDER = "rights"
# The types whose answer is a file built by a task.
ANSWER_TYPES = (RightsRequestType.ACCESS, RightsRequestType.PORTABILITY)


def answer_folder(request: RightsRequest) -> str:
    return f"{ANSWER_FOLDER}/request-{request.pk}"


def answer_files(request: RightsRequest) -> dict[str, Path]:
    """The downloadable files of a built answer by format, as they are on disk."""
    if not request.answer_path:
        return {}
    folder = Path(settings.REPORT_ROOT) / request.answer_path
    if request.status == ErasureStatus.REJECTED:
        return {"pdf": folder / "refusal-notice.pdf"}
    names = {"json": "answer.json", "pdf": "answer.pdf"} if request.type == RightsRequestType.ACCESS else {
        "json": "export.json", "csv": "export.zip"}
    return {fmt: folder / name for fmt, name in names.items()}


# The stages of building an answer, as the request's progress shows them.
STAGES = {
    RightsRequestType.ACCESS: ("collecting the records, consents and models", "writing the JSON answer",
                               "writing the PDF answer"),
    RightsRequestType.PORTABILITY: ("collecting the records provided by the person", "writing the JSON export",
                                    "writing the CSV files (ZIP)"),
}


def _progress(request: RightsRequest, done: int) -> None:
    """Record how far the build is, committed at once so the API and the admin see it move."""
    stages = STAGES[request.type]
    stage = stages[done] if done < len(stages) else "done"
    RightsRequest.objects.filter(pk=request.pk).update(
        progress={"done": done, "total": len(stages), "stage": stage}, heartbeat_at=timezone.now())


def _write_answer(request: RightsRequest, folder: Path) -> str:
    """Write the answer files into ``folder``; the SHA-256 of the JSON answer."""
    from rights.access import access_answer
    from rights.portability import portability_export, portability_zip
    from rights.reports import access_answer_pdf_write

    folder.mkdir(parents=True, exist_ok=True)
    _progress(request, 0)
    if request.type == RightsRequestType.ACCESS:
        answer = access_answer(subject=request.subject)
        _progress(request, 1)
        content = json.dumps(answer, indent=2, ensure_ascii=False).encode()
        (folder / "answer.json").write_bytes(content)
        _progress(request, 2)
        access_answer_pdf_write(answer=answer, path=folder / "answer.pdf")
    else:
        export = portability_export(subject=request.subject)
        _progress(request, 1)
        content = json.dumps(export, indent=2, ensure_ascii=False).encode()
        (folder / "export.json").write_bytes(content)
        _progress(request, 2)
        (folder / "export.zip").write_bytes(portability_zip(export))
    return hashlib.sha256(content).hexdigest()


def rights_request_answer_build(*, request_id: int) -> dict[str, Any]:
    """Build (once) the answer of an access or portability request in progress, under the
    request's lease; a redelivered task finds it completed and does nothing."""
    from governance.leases import lease_heartbeat, lease_refuse_if_held

    request = RightsRequest.objects.filter(pk=request_id).first()
    if request is None:
        raise ServiceError(f"Rights request {request_id} does not exist.", field="rights_request")
    if request.status == ErasureStatus.COMPLETED:
        return {"request": request_id, "status": request.status, "answer_sha256": request.answer_sha256}
    if request.status != ErasureStatus.IN_PROGRESS or request.type not in ANSWER_TYPES:
        raise ServiceConflict(f"Rights request {request_id} is {request.status}; only an answer in progress is built.")
    with transaction.atomic():
        locked_row = RightsRequest.objects.select_for_update().get(pk=request_id)
        lease_refuse_if_held(locked_row.heartbeat_at, what=f"rights request {request_id}")
        RightsRequest.objects.filter(pk=request_id).update(heartbeat_at=timezone.now())
    try:
        with lease_heartbeat(RightsRequest.objects.filter(pk=request_id, status=ErasureStatus.IN_PROGRESS)):
            return _build(request_id)
    finally:
        RightsRequest.objects.filter(pk=request_id).update(heartbeat_at=None)


def _build(request_id: int) -> dict[str, Any]:
    request = RightsRequest.objects.select_related("subject").get(pk=request_id)
    relative = answer_folder(request)
    folder = Path(settings.REPORT_ROOT) / relative
    try:
        sha256 = _write_answer(request, folder)
    except ServiceConflict as refusal:
        # Art. 20(1): the person's portable data went between execute and the build.
        shutil.rmtree(folder, ignore_errors=True)
        with transaction.atomic():
            RightsRequest.objects.filter(pk=request_id).update(
                status=ErasureStatus.REJECTED, rejected_at=timezone.now(), outcome=str(refusal),
            )
            audit_event_record(actor=None, action=f"{OBJECT_TYPE}.refused", object_type=OBJECT_TYPE,
                               object_id=request_id, subject_ref=request.subject_ref,
                               details={"article": refusal.extra.get("article", "")})
        return {"request": request_id, "status": ErasureStatus.REJECTED}
    now = timezone.now()
    expires = now + timedelta(days=settings.RIGHTS_ANSWER_DOWNLOAD_DAYS)
    with transaction.atomic():
        RightsRequest.objects.filter(pk=request_id).update(
            status=ErasureStatus.COMPLETED, completed_at=now, answer_path=relative, answer_sha256=sha256,
            answer_expires_at=expires, updated_at=now, progress={"done": 3, "total": 3, "stage": "done"},
            outcome=f"The answer was built and is downloadable until {expires:%Y-%m-%d}.",
        )
        audit_event_record(
            actor=None, action=f"{OBJECT_TYPE}.answer_built", object_type=OBJECT_TYPE, object_id=request_id,
            subject_ref=request.subject_ref,
            details={"type": request.type, "sha256": sha256, "expires_at": expires.isoformat()},
        )
    return {"request": request_id, "status": ErasureStatus.COMPLETED, "answer_sha256": sha256}


def rights_answers_purge(*, now: Any = None) -> int:
    """Delete the files of answers whose download period ended (the hash stays); how many."""
    now = now or timezone.now()
    purged = 0
    expired = RightsRequest.objects.filter(answer_expires_at__lte=now).exclude(answer_path="")
    for request in expired:
        shutil.rmtree(Path(settings.REPORT_ROOT) / request.answer_path, ignore_errors=True)
        with transaction.atomic():
            RightsRequest.objects.filter(pk=request.pk).update(answer_path="", updated_at=now)
            audit_event_record(actor=None, action=f"{OBJECT_TYPE}.answer_purged", object_type=OBJECT_TYPE,
                               object_id=request.pk, subject_ref=request.subject_ref,
                               details={"sha256": request.answer_sha256})
        purged += 1
    return purged


def rights_requests_redispatch() -> int:
    """The outbox sweep of answers being built, as for erasures: never sent, sent long ago
    and never started, or left by a worker that died (lease lapsed, not re-sent since)."""
    from django.db.models import F, Q

    from governance.dispatch import tasks_redispatch, unsent_cutoff, unstarted_cutoff
    from governance.leases import lease_cutoff
    from rights import tasks

    now = timezone.now()
    stalled = (
        RightsRequest.objects.filter(status=ErasureStatus.IN_PROGRESS, type__in=ANSWER_TYPES)
        .filter(
            Q(dispatched_at__isnull=True, execution_started_at__lt=unsent_cutoff(now))
            | Q(heartbeat_at__isnull=True, dispatched_at__lt=unstarted_cutoff(now))
            | Q(heartbeat_at__lt=lease_cutoff(now))
            & (Q(dispatched_at__isnull=True) | Q(dispatched_at__lt=F("heartbeat_at")))
        )
        .values_list("pk", flat=True)
    )
    return tasks_redispatch(
        tasks.build_rights_answer, outbox=RightsRequest.objects, stalled=[(pk, None, None) for pk in stalled]
    )
