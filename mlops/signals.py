"""Named signals mlops sends upward (to assessments, rights), always after the commit.

- ``model_version_registered``: a new version of a model was registered.
  kwargs: model_version_id, name, status
- ``model_version_tainted``: versions were found to hold people whose data were erased.
  kwargs: model_version_ids, reason
- ``model_version_status_changed``: versions' status changed (tainted, stale, superseded,
  retired, active again, ...), from ``mlops.services.status.model_versions_status_set``, the
  one place a version's status changes; also sent for a version registered tainted or stale.
  kwargs: model_version_ids (list[int]), status (str), reason (str),
  previous (dict[int, str]: each version's status before; "" for a version just registered)
- ``training_run_progress``: a run finished an epoch. Sent at once, not after the commit
  (progress is for watching, the run row keeps it too), in the process that trains.
  kwargs: run_id, progress (the dict written to ``TrainingRun.progress``)
"""

from __future__ import annotations

from django.dispatch import Signal

from governance.signals import send_on_commit

model_version_registered = Signal()
model_version_tainted = Signal()
model_version_status_changed = Signal()
training_run_progress = Signal()

__all__ = [
    "model_version_registered", "model_version_status_changed", "model_version_tainted", "send_on_commit",
    "training_run_progress",
]
