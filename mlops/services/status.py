"""The one place a model version's status changes.

Serving systems poll ``GET /models/?changed_since=`` and subscribers get a webhook when a
version becomes tainted, stale, superseded or retired: both rely on ``status_changed_at``
moving with ``status`` and on ``model_version_status_changed`` being sent for every change,
so every status write in mlops goes through ``model_versions_status_set``. The callers keep
their own audit events (they know why); this module only writes and announces.
"""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from mlops.models import ModelStatus, ModelVersion
from mlops.signals import model_version_status_changed, send_on_commit


@transaction.atomic
def model_versions_status_set(*, ids: list[int], status: str, reason: str) -> int:
    """Set ``status`` and ``reason`` on the versions ``ids``; returns how many changed status.

    ``status_changed_at`` moves only for the versions whose status differs from ``status``
    (a new reason on an unchanged status is no status change), and only those are announced,
    after the commit, with the status each had before.
    """
    if status not in ModelStatus.values:
        raise ValueError(f"unknown model status {status!r}")
    # FOR NO KEY UPDATE, as everywhere in the registry: a run being queued to replace a
    # version holds KEY SHARE on it, which FOR UPDATE would wait for.
    rows = ModelVersion.objects.select_for_update(no_key=True).filter(pk__in=list(ids)).order_by("pk")
    previous = dict(rows.values_list("pk", "status"))
    changed = [pk for pk, old in previous.items() if old != status]
    unchanged = [pk for pk, old in previous.items() if old == status]
    if changed:
        ModelVersion.objects.filter(pk__in=changed).update(
            status=status, status_reason=reason, status_changed_at=timezone.now()
        )
    if unchanged:
        ModelVersion.objects.filter(pk__in=unchanged).update(status_reason=reason)
    if changed:
        send_on_commit(
            model_version_status_changed, model_version_ids=changed, status=status, reason=reason,
            previous={pk: previous[pk] for pk in changed},
        )
    return len(changed)


def model_version_registered_status_announce(*, version: ModelVersion) -> None:
    """Announce a version registered straight into a status its subscribers must hear of
    (tainted: it raced an erasure; stale: it read rectified values); ``previous`` is ""."""
    if version.status in (ModelStatus.TAINTED, ModelStatus.STALE):
        send_on_commit(
            model_version_status_changed, model_version_ids=[version.pk], status=version.status,
            reason=version.status_reason, previous={version.pk: ""},
        )
