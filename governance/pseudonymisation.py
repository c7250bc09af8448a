"""Keyed pseudonymisation of identifiers of people (GDPR Art. 4(5), Art. 32(1)(a)).

Every external identifier (an email, a patient number) is turned into
HMAC-SHA-256(PSEUDONYMISATION_KEY, normalise_identifier(identifier)) on arrival and looked
up the same way; the raw value is never stored.

The normalisation is versioned, because changing it changes pseudonyms: a subject row
records the ``NORMALISATION_VERSION`` its pseudonym was first computed with
(``DataSubject.normalisation_version``), and every lookup uses the current version.

- Version 1: Unicode NFKC, surrounding whitespace removed, case folded.
- Version 2 (current): as version 1, after removing invisible code points first
  (``INVISIBLE_CODE_POINTS``: every format character, category Cf — zero-width space,
  joiners, soft hyphen, BOM, bidi controls, word joiner, Mongolian vowel separator — and the
  other default-ignorable code points — variation selectors, combining grapheme joiner,
  Hangul fillers). "alice\\u200b@example.org" and "alice@example.org" are then one person.

An identifier without invisible code points has the same pseudonym under both versions (it
is normalised to the same text), so subjects recorded under version 1 are still found. Only
an identifier that did contain one now maps to the pseudonym of its visible text; its
version-1 row (if any) can be found with ``pseudonymise(identifier, version=1)``.
"""

from __future__ import annotations

import hashlib
import hmac
import unicodedata

from django.conf import settings

PSEUDONYM_LENGTH = 64
NORMALISATION_VERSION = 2
NORMALISATION_VERSIONS = (1, 2)

# Fixed here rather than derived from unicodedata at run time: a Python upgrade with a newer
# Unicode database must not change pseudonyms silently. tests/governance/test_pseudonymisation.py
# fails when the running Unicode version has a format character missing from this list, which
# calls for a new NORMALISATION_VERSION, not an edit of this one.
_INVISIBLE_RANGES = (
    (0x00AD, 0x00AD),  # soft hyphen
    (0x034F, 0x034F),  # combining grapheme joiner
    (0x0600, 0x0605), (0x061C, 0x061C), (0x06DD, 0x06DD), (0x070F, 0x070F),  # Arabic/Syriac format marks, ALM
    (0x0890, 0x0891), (0x08E2, 0x08E2),
    (0x115F, 0x1160),  # Hangul fillers
    (0x17B4, 0x17B5),  # Khmer inherent vowels
    (0x180B, 0x180F),  # Mongolian variation selectors, vowel separator
    (0x200B, 0x200F),  # zero-width space, ZWNJ, ZWJ, LRM, RLM
    (0x202A, 0x202E),  # bidi embeddings and overrides
    (0x2060, 0x206F),  # word joiner, invisible operators, bidi isolates, deprecated format controls
    (0x3164, 0x3164),  # Hangul filler
    (0xFE00, 0xFE0F),  # variation selectors
    (0xFEFF, 0xFEFF),  # BOM / zero-width no-break space
    (0xFFA0, 0xFFA0),  # half-width Hangul filler
    (0xFFF0, 0xFFFB),  # interlinear annotation controls (and the reserved default-ignorables before them)
    (0x110BD, 0x110BD), (0x110CD, 0x110CD),  # Kaithi number signs
    (0x13430, 0x1343F),  # Egyptian hieroglyph format controls
    (0x1BCA0, 0x1BCA3),  # shorthand format controls
    (0x1D173, 0x1D17A),  # musical symbol format controls
    (0xE0000, 0xE0FFF),  # tags, variation selectors supplement
)
INVISIBLE_CODE_POINTS = frozenset(cp for start, end in _INVISIBLE_RANGES for cp in range(start, end + 1))
_INVISIBLE_TABLE = dict.fromkeys(INVISIBLE_CODE_POINTS)


class IdentifierError(ValueError):
    """An identifier that cannot stand for a person (not a string, or nothing visible in it).

    ``field`` names the offending input for the API's 400 (``subject``, or ``subjects[3]``
    from ``pseudonymise_many``); callers with their own field names catch it as ValueError.
    """

    def __init__(self, message: str, *, field: str = "subject"):
        super().__init__(message)
        self.field = field


def invisible_strip(text: str) -> str:
    """``text`` without the code points of ``INVISIBLE_CODE_POINTS`` (none is ASCII)."""
    return text if text.isascii() else text.translate(_INVISIBLE_TABLE)


def normalise_identifier(identifier: str, *, version: int = NORMALISATION_VERSION) -> str:
    """The text an identifier is pseudonymised as, under normalisation ``version``.

    Version 2: invisible code points removed, then NFKC, surrounding whitespace removed, case
    folded. Raises IdentifierError when nothing is left.
    """
    if not isinstance(identifier, str):
        raise IdentifierError("an identifier must be a string")
    if version == 2:
        # Invisible characters go first so that what they separated composes under NFKC
        # ("e" ZWJ U+0301 is "é"). ASCII needs neither step: NFKC leaves it as it is.
        value = identifier if identifier.isascii() else unicodedata.normalize(
            "NFKC", identifier.translate(_INVISIBLE_TABLE)
        )
    elif version == 1:
        value = unicodedata.normalize("NFKC", identifier)
    else:
        raise ValueError(f"unknown normalisation version {version!r}; known: {NORMALISATION_VERSIONS}")
    value = value.strip().casefold()
    if not value:
        raise IdentifierError("an identifier must have a visible character")
    return value


def pseudonymise(identifier: str, *, version: int = NORMALISATION_VERSION) -> str:
    """HMAC-SHA-256 under PSEUDONYMISATION_KEY of the normalised identifier, in hex."""
    key = settings.PSEUDONYMISATION_KEY.encode()
    return hmac.new(key, normalise_identifier(identifier, version=version).encode(), hashlib.sha256).hexdigest()


def pseudonym_candidates(identifier: str) -> list[str]:
    """The identifier's pseudonym under the current version, then under earlier versions
    where those differ: a lookup (consent status, an erasure request, the person search)
    must still find a subject first recorded under an earlier normalisation."""
    out = [pseudonymise(identifier)]
    for version in sorted(NORMALISATION_VERSIONS, reverse=True):
        if version == NORMALISATION_VERSION:
            continue
        try:
            earlier = pseudonymise(identifier, version=version)
        except IdentifierError:
            continue
        if earlier not in out:
            out.append(earlier)
    return out


def pseudonymise_many(identifiers: list[str]) -> list[str]:
    """``pseudonymise`` of each identifier under the current version, in order.

    An identifier that cannot be pseudonymised raises IdentifierError naming ``subjects[i]``.
    """
    key = settings.PSEUDONYMISATION_KEY.encode()
    mac = hmac.new(key, digestmod=hashlib.sha256)
    out = []
    for index, identifier in enumerate(identifiers):
        h = mac.copy()
        try:
            h.update(normalise_identifier(identifier).encode())
        except IdentifierError as exc:
            raise IdentifierError(str(exc), field=f"subjects[{index}]") from None
        out.append(h.hexdigest())
    return out
