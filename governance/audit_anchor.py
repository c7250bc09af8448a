"""Where the audit chain's signed checkpoints come from in this deployment: the signing key
(from the environment or a file, never the database), the trusted public keys, the
checkpoint file, and the verification of the stored chain against it.

The format, signatures and the database-free verifier are in ``governance.checkpoints``;
writing a checkpoint is a service (``governance.services.audit.audit_checkpoint_write``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.conf import settings

from governance import checkpoints
from governance.models import AuditEvent
from governance.selectors import ChainVerification, audit_chain_verify

logger = logging.getLogger(__name__)

class AuditSigningKeyMissing(RuntimeError):
    """No signing key is configured (production) or it cannot be read."""


_cache: dict[str, object] = {}


def _configured_key_text() -> tuple[str, str]:
    """(key text, where it came from); ('', '') when none is configured."""
    if settings.AUDIT_SIGNING_KEY:
        return settings.AUDIT_SIGNING_KEY, "AUDIT_SIGNING_KEY"
    if settings.AUDIT_SIGNING_KEY_FILE:
        path = Path(settings.AUDIT_SIGNING_KEY_FILE)
        if getattr(settings, "AUDIT_SIGNING_KEY_DEVELOPMENT", False):
            return _dev_key_text(path), "the development key file"
        try:
            return path.read_text(), "AUDIT_SIGNING_KEY_FILE"
        except OSError as exc:
            raise AuditSigningKeyMissing(f"AUDIT_SIGNING_KEY_FILE cannot be read: {exc}") from exc
    return "", ""


def _dev_key_text(path: Path) -> str:
    """The development key (DEBUG without AUDIT_SIGNING_KEY), in a file made on first use.

    Like the development SECRET_KEY it protects nothing (it sits next to the database file);
    it lets the quickstart write and verify checkpoints without configuration.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".dev-audit-key-")
        with os.fdopen(fd, "w") as f:
            f.write(checkpoints.private_key_pem(Ed25519PrivateKey.generate()))
        try:
            os.link(temporary, path)  # fails if another process made it first: use theirs
        except FileExistsError:
            pass
        finally:
            os.unlink(temporary)
    if not _cache.get("warned"):
        _cache["warned"] = True
        logger.warning(
            "AUDIT_SIGNING_KEY is not set: audit checkpoints are signed with the development key %s. "
            "Set AUDIT_SIGNING_KEY (manage.py audit_signing_key_generate) outside development.", path,
        )
    return path.read_text()


def signing_key() -> Ed25519PrivateKey:
    """The private key checkpoints are signed with; AuditSigningKeyMissing if there is none."""
    text, source = _configured_key_text()
    if not text:
        raise AuditSigningKeyMissing(
            "AUDIT_SIGNING_KEY (or AUDIT_SIGNING_KEY_FILE) is required when DEBUG is off: audit checkpoints "
            "cannot be signed."
        )
    cached = _cache.get("signing")
    if cached is not None and cached[0] == text:
        return cached[1]
    try:
        key = checkpoints.private_key_load(text)
    except checkpoints.CheckpointKeyError as exc:
        raise AuditSigningKeyMissing(f"{source}: {exc}") from exc
    _cache["signing"] = (text, key)
    return key


def trusted_public_keys() -> list[Ed25519PublicKey]:
    """The current signing key's public half and the earlier keys of AUDIT_PUBLIC_KEYS_FILE."""
    keys: list[Ed25519PublicKey] = []
    # Without a signing key verification still runs with the earlier keys, and reports what it cannot check.
    with contextlib.suppress(AuditSigningKeyMissing):
        keys.append(signing_key().public_key())
    if settings.AUDIT_PUBLIC_KEYS_FILE:
        keys.extend(checkpoints.public_keys_load(Path(settings.AUDIT_PUBLIC_KEYS_FILE).read_text()))
    return keys


def checkpoint_file() -> checkpoints.CheckpointFile:
    return checkpoints.CheckpointFile.in_directory(settings.AUDIT_CHECKPOINT_DIR)


@dataclass(frozen=True)
class AnchoredVerification:
    """The chain's own verification and its check against the signed checkpoints."""

    checked: int
    ok: bool
    broken_position: int | None
    reason: str
    head_hash: str
    checkpoints: int
    last_checkpoint_position: int | None
    problems: list[str]


def audit_chain_anchored_verify(
    *,
    lines: list[str] | None = None,
    public_keys: list[Ed25519PublicKey] | None = None,
) -> AnchoredVerification:
    """Verify the chain as stored, then against every checkpoint (by default this deployment's
    file and keys; an auditor passes their own copy of the file and the public key).

    The first bad position of either check is reported: a link or hash that does not match,
    a checkpoint past the end (truncation), a checkpoint whose position holds another hash
    (rewriting), a forged checkpoint, or too many events past the last checkpoint.
    """
    chain: ChainVerification = audit_chain_verify()
    problems: list[tuple[int | None, str]] = []
    if lines is None:
        lines = checkpoint_file().lines()
    if public_keys is None:
        try:
            public_keys = trusted_public_keys()
        except (OSError, checkpoints.CheckpointKeyError) as exc:
            public_keys = []
            problems.append((None, f"AUDIT_PUBLIC_KEYS_FILE cannot be read: {exc}"))
    if not chain.ok:
        problems.append((chain.broken_position, chain.reason))
    # The stored chain verifies up to `chain.checked`; checkpoints are held against that part.
    positions = set()
    for line in lines:
        try:
            positions.add(checkpoints.checkpoint_parse(line).position)
        except ValueError:
            continue
    hash_at = dict(
        AuditEvent.objects.filter(position__in=[p for p in positions if 0 < p <= chain.checked])
        .values_list("position", "hash")
    )
    report = checkpoints.checkpoints_verify(
        lines=lines, public_keys=public_keys, head_position=chain.checked, hash_at=hash_at,
        every_events=settings.AUDIT_CHECKPOINT_EVERY_EVENTS, slack_events=settings.AUDIT_CHECKPOINT_SLACK_EVENTS,
    )
    if not public_keys and report.checkpoints:
        problems.append((None, "no public key is configured: the checkpoints' signatures cannot be checked."))
    problems.extend(report.problems)
    problems.sort(key=lambda p: (p[0] is None, p[0] or 0))
    broken, reason = problems[0] if problems else (None, "")
    return AnchoredVerification(
        checked=chain.checked, ok=not problems, broken_position=broken, reason=reason, head_hash=chain.head_hash,
        checkpoints=report.checkpoints, last_checkpoint_position=report.last_position,
        problems=[text for _, text in problems],
    )
