"""Erasure certificates as report jobs.

The erasure workflow writes its certificate with this toolkit when an execution completes
(rights.certificate); a report job for it hands out that very file, checked
against its SHA-256, so an auditor downloads the certificate the subject was given.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from django.conf import settings

from governance.reports.toolkit import file_sha256


def erasure_certificate_path(*, erasure_request_id: int) -> Path | None:
    """The certificate written for a completed erasure request, or None if there is none yet."""
    from rights.models import ErasureRequest

    relative = ErasureRequest.objects.filter(pk=erasure_request_id).values_list("certificate_path", flat=True).first()
    if not relative:
        return None
    return Path(settings.REPORT_ROOT) / relative


def erasure_certificate_report_render(*, object_id: Any, path: Path) -> str:
    """Copy erasure request ``object_id``'s certificate to ``path``; returns its SHA-256."""
    source = erasure_certificate_path(erasure_request_id=int(object_id))
    if source is None or not source.is_file():
        raise FileNotFoundError(f"Erasure request {object_id} has no certificate: it is written when execution completes.")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    shutil.copyfile(source, partial)
    partial.replace(path)
    return file_sha256(path)


def erasure_certificate_precheck(*, object_id: int) -> str:
    if erasure_certificate_path(erasure_request_id=object_id) is None:
        return f"Erasure request {object_id} has no certificate yet: it is written when execution completes."
    return ""
