"""mlops's reactions to what provenance announces (connected in ``MlopsConfig.ready``)."""

from __future__ import annotations

from typing import Any

from django.dispatch import receiver

from provenance.signals import records_rectified


@receiver(records_rectified, dispatch_uid="mlops_stale_on_rectification")
def stale_on_rectification(sender: Any = None, **kwargs: Any) -> dict[str, Any]:
    """Model versions trained on the superseded record versions become stale (Art. 16)."""
    from mlops.services.rectification import records_rectified_receive

    return records_rectified_receive(**kwargs)
