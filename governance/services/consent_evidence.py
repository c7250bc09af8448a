"""Consent evidence: the closed set of keys a consent event may carry, each with its own
rule, decoded before the identifier scan (issue 14).

A source system's evidence (the form's URL, the client's address, its user agent, its own
name, a note) is proof of how consent was given; it must never smuggle in an identifier of a
person. Every value is decoded (invisible code points, NFKC, percent-encoding, HTML entities,
repeatedly) before it is scanned, URLs lose their query string and fragment, and addresses are
truncated.
"""

from __future__ import annotations

import functools
import html
import re
import unicodedata
import urllib.parse
from typing import Any

from governance.pseudonymisation import invisible_strip

# The closed set of evidence keys, each with its own rule (_evidence_value_clean) and bound.
CONSENT_EVIDENCE_KEYS = ("form_url", "ip", "user_agent", "source_system", "note")
CONSENT_EVIDENCE_MAX_LENGTH = {"form_url": 1000, "ip": 100, "user_agent": 1000, "source_system": 100, "note": 1000}


@functools.lru_cache(maxsize=65536)
def ip_truncate(value: str) -> str:
    """Zero the host part of an address: the last octet of IPv4, the last 80 bits of IPv6.

    Enough to show the network a consent came from, not enough to single out a device.
    Cached: a batch from one source system repeats few networks.
    """
    import ipaddress

    address = ipaddress.ip_address(value.strip())
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:203.0.113.57 is an IPv4 address: keep its /24
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False).network_address)


# Decoding rounds before a value is refused as encoded too many times over: real clients
# encode once, maybe twice (a URL inside a URL); more is an attempt to hide something.
_MAX_DECODING_ROUNDS = 6
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
# Nine to fifteen digits (E.164 allows 15) with the usual separators; free text only, where a
# run of digits that long is a phone or another person's number rather than a version.
_PHONE = re.compile(r"(?<![\w.])\+?\d(?:[ ().-]{0,2}\d){8,14}(?![\w.])")
_SOURCE_SYSTEM = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._:/-]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_IDENTIFIER_REFUSAL = "identifiers of people are never stored (Art. 4(5)); remove it"


def evidence_decoded(value: str) -> str:
    """``value`` as a reader would see it, for the identifier scan: invisible code points
    removed, NFKC, percent-encoding and HTML entities undone until nothing changes, case folded.

    "bob%2540example.com", "bob&#64;example.com", "ｂｏｂ＠ｅｘａｍｐｌｅ．ｃｏｍ" and
    "bob\u200b@example.com" all decode to "bob@example.com".
    """
    text = value
    if not text.isascii() or "%" in text or "&" in text:
        for _ in range(_MAX_DECODING_ROUNDS):
            # NFKC inside the loop: full-width "％４０" only becomes "%40" after it.
            decoded = html.unescape(urllib.parse.unquote(unicodedata.normalize("NFKC", invisible_strip(text))))
            if decoded == text:
                break
            text = decoded
        else:
            raise ValueError(f"encoded more than {_MAX_DECODING_ROUNDS - 1} times over; send it decoded once")
    # U+3002 (ideographic full stop) is not folded by NFKC, and reads as a dot in an address.
    return text.replace("\u3002", ".").casefold()


def _identifiers_refuse(decoded: str, *, phone: bool = False) -> None:
    if _EMAIL.search(decoded):
        raise ValueError(f"contains an e-mail address (after decoding); {_IDENTIFIER_REFUSAL}.")
    if phone and _PHONE.search(decoded):
        raise ValueError(f"contains what looks like a phone number (after decoding); {_IDENTIFIER_REFUSAL}.")


def _form_url_clean(value: str) -> tuple[str, str, bool]:
    if _CONTROL.search(value) or any(c.isspace() for c in value):
        raise ValueError("a URL has no spaces or control characters; percent-encode them.")
    try:
        parts = urllib.parse.urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not a URL ({exc}).") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError("expected an http or https URL, e.g. https://portal.example/consent.")
    if not parts.hostname:
        raise ValueError("the URL has no host, e.g. https://portal.example/consent.")
    if "@" in parts.netloc:
        raise ValueError(f"the URL names a user before its host; {_IDENTIFIER_REFUSAL}.")
    decoded = evidence_decoded(value)
    # The whole URL is scanned, query included: a source system that puts identifiers in its
    # URLs is told so. What is stored is the page without its query string and fragment,
    # which carry session and tracking values as often as identifiers.
    _identifiers_refuse(decoded)
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc = host if port is None else f"{host}:{port}"
    stored = urllib.parse.urlunsplit((scheme, netloc, parts.path, "", ""))
    return stored, decoded, bool(parts.query or parts.fragment or value.endswith(("?", "#")))


# A batch repeats a few form URLs and user agents thousands of times; bounded because values
# run to 1,000 characters and a worker lives long.
@functools.lru_cache(maxsize=4096)
def _evidence_value_clean(key: str, value: str) -> tuple[str, str, bool]:
    """One evidence value by its key's rule: (value to store, decoded text for the scan of the
    person's identifier, whether a part of it was dropped). Raises ValueError("<reason>").

    Cached on (key, value), so the rules cost little on the repeated values of a bulk batch.
    """
    if key == "form_url":
        return _form_url_clean(value)
    if key == "ip":
        try:
            stored = ip_truncate(value)
        except ValueError:
            raise ValueError(
                "not an IPv4 or IPv6 address, e.g. 203.0.113.0 (the host part is zeroed on arrival)."
            ) from None
        return stored, stored, False
    if key == "source_system":
        if not _SOURCE_SYSTEM.fullmatch(value):
            raise ValueError(
                "expected the name of a system: letters, digits, spaces and . _ : / -, starting with a letter or digit."
            )
        decoded = value.casefold()
        _identifiers_refuse(decoded)
        return value, decoded, False
    if key == "user_agent":
        if _CONTROL.search(value):
            raise ValueError("a user agent has no control characters.")
        decoded = evidence_decoded(value)
        _identifiers_refuse(decoded)
        return value, decoded, False
    # note: free text from the source system, where people write whatever they like.
    decoded = evidence_decoded(value)
    _identifiers_refuse(decoded, phone=True)
    return value, decoded, False


def consent_evidence_clean(evidence_in: Any, *, normalised_subject: str) -> tuple[dict[str, str], bool]:
    """Validate a consent event's evidence: (what is stored, whether a URL lost its query string
    or fragment). Raises ValueError("evidence.<key>: <reason>").

    Each value is decoded before the identifier scan (see evidence_decoded), so an identifier
    hidden by percent-encoding, HTML entities, full-width forms or invisible characters is
    found; the person's own identifier is refused in every key.
    """
    if evidence_in in (None, ""):
        return {}, False
    if not isinstance(evidence_in, dict):
        raise ValueError("evidence: expected an object.")
    evidence: dict[str, str] = {}
    trimmed = False
    for key, value in evidence_in.items():
        max_length = CONSENT_EVIDENCE_MAX_LENGTH.get(key)
        if max_length is None:
            raise ValueError(f"evidence.{key}: unknown; allowed: {', '.join(CONSENT_EVIDENCE_KEYS)}.")
        if value is None:
            continue
        if not isinstance(value, str):
            raise ValueError(f"evidence.{key}: expected a string of at most {max_length} characters.")
        value = value.strip()
        if not value:
            continue
        if len(value) > max_length:
            raise ValueError(f"evidence.{key}: expected a string of at most {max_length} characters.")
        try:
            stored, decoded, dropped = _evidence_value_clean(key, value)
        except ValueError as exc:
            raise ValueError(f"evidence.{key}: {exc}") from None
        if normalised_subject in decoded:
            raise ValueError(
                f"evidence.{key}: contains the person's identifier, which is never stored (Art. 4(5)); remove it."
            )
        evidence[key] = stored
        trimmed = trimmed or dropped
    return evidence, trimmed
