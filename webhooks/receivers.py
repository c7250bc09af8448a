"""What the webhooks app does when mlops announces a status change (after mlops' commit)."""

from __future__ import annotations

from typing import Any


def status_changed_receive(
    *, model_version_ids: list[int], status: str, reason: str, previous: dict[int, str], **_: Any
) -> list[int]:
    from webhooks.services import webhook_deliveries_create

    return webhook_deliveries_create(model_version_ids=model_version_ids, status=status, reason=reason,
                                     previous=previous)
