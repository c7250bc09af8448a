"""Named signals provenance sends upward (to mlops, rights), always after the commit.

- ``records_rectified``: a rectification (Art. 16) wrote new versions of a person's records.
  kwargs: dataset_id (int), processing_activity_id (int), subject_id (int, internal id),
  old_record_ids (list[int], the versions superseded), new_record_ids (list[int], same
  order), fields (list[str], names corrected, never their values), recipients (list, the
  processing activity's recipients, to be told under Art. 19), actor
"""

from __future__ import annotations

from django.dispatch import Signal

from governance.signals import send_on_commit

records_rectified = Signal()

__all__ = ["records_rectified", "send_on_commit"]
