"""Named signals mlops sends upward (to assessments, rights), always after the commit.

- ``model_version_registered``: a new version of a model was registered.
  kwargs: model_version_id, name, status
- ``model_version_tainted``: versions were found to hold people whose data were erased.
  kwargs: model_version_ids, reason
"""

from __future__ import annotations

from django.dispatch import Signal

from governance.signals import send_on_commit

model_version_registered = Signal()
model_version_tainted = Signal()

__all__ = ["model_version_registered", "model_version_tainted", "send_on_commit"]
