"""Subscription secrets at rest, and the signature of a delivery.

Secrets are encrypted with Fernet under a key derived by HKDF-SHA-256 from
``WEBHOOK_SECRET_KEY`` (or, when that is empty, from ``SECRET_KEY``): a copy of the database
alone does not let anyone forge deliveries. Changing the key makes the stored secrets
unreadable: subscribers then register again.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings

SIGNATURE_HEADER = "X-Ledger-Signature"


def _fernet() -> Fernet:
    material = (settings.WEBHOOK_SECRET_KEY or settings.SECRET_KEY).encode()
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"privacy-ledger webhook secrets").derive(material)
    return Fernet(base64.urlsafe_b64encode(key))


def secret_new() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def secret_encrypt(secret: str) -> str:
    return _fernet().encrypt(secret.encode()).decode()


def secret_decrypt(token: str) -> str:
    return _fernet().decrypt(token.encode()).decode()


def signature_header(*, secret: str, timestamp: int, body: bytes) -> str:
    """``t=<unix>,v1=<hex HMAC-SHA-256(secret, "<t>.<body>")>``: the timestamp is signed too,
    so a receiver can refuse an old delivery replayed."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def signature_verify(*, secret: str, header: str, body: bytes) -> bool:
    """What a receiver does (docs/webhooks.md shows the same in a few lines)."""
    parts = dict(item.split("=", 1) for item in header.split(",") if "=" in item)
    if "t" not in parts or "v1" not in parts or not parts["t"].isdigit():
        return False
    expected = signature_header(secret=secret, timestamp=int(parts["t"]), body=body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts["v1"])
