"""What apps above governance hold about a person, gathered for the access answer (Art. 15).

An app on top (decisions) keeps data about people that another app on top (rights) must
put into a person's access answer, yet neither may import the other. The app holding the
data registers a provider here in its ``ready``; rights asks here for every provider's
part. A provider receives the person's pseudonym and returns JSON-ready values about that
person only, never another's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Provider = Callable[[str], dict[str, Any]]

_PROVIDERS: dict[str, Provider] = {}


def subject_data_provider_register(key: str, provider: Provider) -> None:
    """Register ``provider`` under ``key`` (the answer's key for its part); once per key."""
    _PROVIDERS[key] = provider


def subject_data_from_providers(*, pseudonym: str) -> dict[str, dict[str, Any]]:
    """Every registered provider's part about the person with ``pseudonym``, by key."""
    return {key: provider(pseudonym) for key, provider in sorted(_PROVIDERS.items())}
