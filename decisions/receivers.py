"""Decisions' reactions to what the layers below announce (connected in DecisionsConfig.ready)."""

from __future__ import annotations

from typing import Any


def forget_erased_subject(*, pseudonym: str, **_: Any) -> None:
    """An erasure is deleting the person (governance.signals.subject_erasing, inside its
    transaction): their decisions stop naming them and inputs kept for those decisions go,
    in the same commit."""
    from decisions.services import decisions_subject_forget

    decisions_subject_forget(pseudonyms=[pseudonym])
