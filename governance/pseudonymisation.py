"""Keyed pseudonymisation of identifiers of people (GDPR Art. 4(5), Art. 32(1)(a)).

Every external identifier (an email, a patient number) is turned into
HMAC-SHA-256(PSEUDONYMISATION_KEY, normalised identifier) on arrival and looked up the
same way; the raw value is never stored. Normalisation (Unicode NFKC, surrounding
whitespace removed, case folded) makes "Alice@Example.org " and "alice@example.org" the
same person; identifiers that differ only by case are therefore treated as one.
"""

from __future__ import annotations

import hashlib
import hmac
import unicodedata

from django.conf import settings

PSEUDONYM_LENGTH = 64


def normalise_identifier(identifier: str) -> str:
    if not isinstance(identifier, str):
        raise TypeError("identifier must be a string")
    value = unicodedata.normalize("NFKC", identifier).strip().casefold()
    if not value:
        raise ValueError("identifier must not be empty")
    return value


def pseudonymise(identifier: str) -> str:
    key = settings.PSEUDONYMISATION_KEY.encode()
    return hmac.new(key, normalise_identifier(identifier).encode(), hashlib.sha256).hexdigest()


def pseudonymise_many(identifiers: list[str]) -> list[str]:
    key = settings.PSEUDONYMISATION_KEY.encode()
    mac = hmac.new(key, digestmod=hashlib.sha256)
    out = []
    for identifier in identifiers:
        h = mac.copy()
        h.update(normalise_identifier(identifier).encode())
        out.append(h.hexdigest())
    return out
