"""Signed checkpoints of the audit chain: its head anchored outside the database.

The hash chain alone proves that no event *inside* it was changed, but whoever can write the
database can cut events off its end and rewrite the chain-head row. A checkpoint is the head
(position, hash) signed with an Ed25519 key the database never holds, appended to a
JSON-lines file outside the database. Whoever has the public key can then tell that the
chain still reaches every signed position with the signed hash.

This module is deliberately free of Django (it needs only ``cryptography`` and the standard
library), so an auditor verifies with the public key alone:
``python tools/verify_audit_checkpoint.py --public-key audit.pub --checkpoints audit-checkpoints.jsonl``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from governance import audit

FORMAT_VERSION = 1
CHECKPOINT_FILE_NAME = "audit-checkpoints.jsonl"
# Domain separation: a signature over these bytes can never be mistaken for one over anything else.
_SIGNED_PREFIX = b"privacy-ledger audit-chain checkpoint v1\n"
# The tail read to find the last checkpoint; a line is about 350 bytes.
_TAIL_BYTES = 8192


class CheckpointKeyError(ValueError):
    """A signing or public key that cannot be read."""


# --- Keys --------------------------------------------------------------------------------


def _raw_public(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key: Ed25519PublicKey) -> str:
    """The fingerprint a checkpoint names its key by: SHA-256 of the raw public key, 16 hex digits."""
    return hashlib.sha256(_raw_public(public_key)).hexdigest()[:16]


def public_key_text(public_key: Ed25519PublicKey) -> str:
    """The public key as base64 of its 32 raw bytes (the form the verifier reads)."""
    return base64.b64encode(_raw_public(public_key)).decode()


def public_key_pem(public_key: Ed25519PublicKey) -> str:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def private_key_pem(private_key: Ed25519PrivateKey) -> str:
    return private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def private_key_seed_text(private_key: Ed25519PrivateKey) -> str:
    """The private key as base64 of its 32-byte seed: fits one environment variable line."""
    raw = private_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    return base64.b64encode(raw).decode()


def private_key_load(text: str) -> Ed25519PrivateKey:
    """A private key from PKCS#8 PEM or from base64 of the raw 32-byte seed."""
    text = text.strip()
    if not text:
        raise CheckpointKeyError("the audit signing key is empty")
    if text.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_private_key(text.encode(), password=None)
        except (ValueError, TypeError) as exc:
            raise CheckpointKeyError(f"the audit signing key is not a readable PEM private key: {exc}") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise CheckpointKeyError("the audit signing key is not an Ed25519 key")
        return key
    raw = _b64_32(text, what="the audit signing key")
    return Ed25519PrivateKey.from_private_bytes(raw)


def public_key_load(text: str) -> Ed25519PublicKey:
    """A public key from PEM (SubjectPublicKeyInfo) or from base64 of its 32 raw bytes."""
    text = text.strip()
    if text.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(text.encode())
        except ValueError as exc:
            raise CheckpointKeyError(f"not a readable PEM public key: {exc}") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise CheckpointKeyError("the public key is not an Ed25519 key")
        return key
    return Ed25519PublicKey.from_public_bytes(_b64_32(text, what="the public key"))


def public_keys_load(text: str) -> list[Ed25519PublicKey]:
    """Every public key in a file: PEM blocks and/or base64 lines ('#' starts a comment).

    After a key rotation the file holds the old public keys too, so old checkpoints verify.
    """
    keys: list[Ed25519PublicKey] = []
    pem: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if pem:
            pem.append(stripped)
            if stripped.startswith("-----END"):
                keys.append(public_key_load("\n".join(pem)))
                pem = []
        elif stripped.startswith("-----BEGIN"):
            pem = [stripped]
        elif stripped and not stripped.startswith("#"):
            keys.append(public_key_load(stripped))
    if pem:
        raise CheckpointKeyError("a PEM block of the public key file has no END line")
    return keys


def _b64_32(text: str, *, what: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CheckpointKeyError(f"{what} is neither PEM nor base64: {exc}") from exc
    if len(raw) != 32:
        raise CheckpointKeyError(f"{what} must be 32 bytes (base64 of an Ed25519 key), got {len(raw)}")
    return raw


# --- Checkpoints ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    position: int
    hash: str
    created_at: str  # ISO 8601 UTC with microseconds and "Z"
    key_id: str
    reason: str
    signature: str  # base64 of the 64-byte Ed25519 signature over signed_bytes()
    v: int = FORMAT_VERSION

    def signed_bytes(self) -> bytes:
        return checkpoint_signed_bytes(
            position=self.position, hash=self.hash, created_at=self.created_at, key_id=self.key_id, reason=self.reason
        )

    def as_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        return audit.canonical_json(self.as_dict())


def checkpoint_signed_bytes(*, position: int, hash: str, created_at: str, key_id: str, reason: str) -> bytes:
    """The canonical byte string a checkpoint's signature covers, one field a line."""
    return _SIGNED_PREFIX + (
        f"position={position}\nhash={hash}\ncreated_at={created_at}\nkey_id={key_id}\nreason={reason}\n"
    ).encode()


def checkpoint_sign(*, private_key: Ed25519PrivateKey, position: int, hash: str, reason: str,
                    created_at: datetime | None = None) -> Checkpoint:
    moment = (created_at or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    kid = key_id(private_key.public_key())
    signed = checkpoint_signed_bytes(position=position, hash=hash, created_at=moment, key_id=kid, reason=reason)
    signature = base64.b64encode(private_key.sign(signed)).decode()
    return Checkpoint(position=position, hash=hash, created_at=moment, key_id=kid, reason=reason, signature=signature)


def checkpoint_parse(value: str | dict) -> Checkpoint:
    """A checkpoint from its JSON line (or the parsed object); ValueError names what is wrong."""
    data = json.loads(value) if isinstance(value, str) else value
    if not isinstance(data, dict):
        raise ValueError("a checkpoint is a JSON object")
    try:
        cp = Checkpoint(
            position=data["position"], hash=data["hash"], created_at=data["created_at"], key_id=data["key_id"],
            reason=data.get("reason", ""), signature=data["signature"], v=data.get("v", FORMAT_VERSION),
        )
    except KeyError as exc:
        raise ValueError(f"the checkpoint has no {exc.args[0]!r}") from exc
    if type(cp.position) is not int or cp.position < 0:
        raise ValueError("the checkpoint's position is not a non-negative integer")
    if not all(isinstance(x, str) for x in (cp.hash, cp.created_at, cp.key_id, cp.reason, cp.signature)):
        raise ValueError("the checkpoint's hash, created_at, key_id, reason and signature must be strings")
    if cp.v != FORMAT_VERSION:
        raise ValueError(f"unknown checkpoint format version {cp.v!r}")
    return cp


def checkpoint_signature_problem(cp: Checkpoint, public_keys: Iterable[Ed25519PublicKey]) -> str:
    """'' when the checkpoint's signature verifies with the key it names, else why not."""
    keys = {key_id(k): k for k in public_keys}
    key = keys.get(cp.key_id)
    if key is None:
        return f"it is signed by key {cp.key_id}, which is not a trusted audit signing key"
    try:
        key.verify(base64.b64decode(cp.signature, validate=True), cp.signed_bytes())
    except (InvalidSignature, binascii.Error, ValueError):
        return "its signature does not verify: the checkpoint is forged or was altered"
    return ""


# --- The append-only store -------------------------------------------------------------------


@dataclass
class CheckpointFile:
    """A JSON-lines file of checkpoints, only ever opened for appending (O_APPEND).

    Writers hold an exclusive ``flock`` while they read the head and append, so checkpoints of
    concurrent writers (threads, processes, hosts sharing a POSIX-locking file system) land
    whole and in order.
    """

    path: Path

    @classmethod
    def in_directory(cls, directory: str | os.PathLike) -> CheckpointFile:
        path = Path(directory)
        return cls(path if path.suffix == ".jsonl" else path / CHECKPOINT_FILE_NAME)

    @contextlib.contextmanager
    def locked(self) -> Iterator[CheckpointAppender]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield CheckpointAppender(self, fd)
        finally:
            os.close(fd)  # closing releases the lock

    def append(self, cp: Checkpoint) -> None:
        with self.locked() as appender:
            appender.append(cp)

    def lines(self) -> list[str]:
        try:
            return self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []

    def last(self) -> Checkpoint | None:
        """The last well-formed checkpoint of the file, reading only its tail."""
        try:
            with open(self.path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - _TAIL_BYTES))
                tail = f.read().decode("utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return None
        for line in reversed(tail):
            try:
                return checkpoint_parse(line)
            except ValueError:
                continue
        return None


@dataclass
class CheckpointAppender:
    store: CheckpointFile
    fd: int

    def last(self) -> Checkpoint | None:
        return self.store.last()

    def append(self, cp: Checkpoint) -> None:
        data = (cp.line() + "\n").encode()
        written = os.write(self.fd, data)
        if written != len(data):  # a full disk; the next checkpoint starts on a fresh line
            os.write(self.fd, b"\n")
            raise OSError(f"checkpoint line written partially ({written} of {len(data)} bytes)")
        os.fsync(self.fd)


# --- Verification (no database) ------------------------------------------------------------


@dataclass
class CheckpointReport:
    """The outcome of checking a chain against its checkpoints; ``problems`` is ordered by position."""

    checkpoints: int = 0
    last_position: int | None = None
    problems: list[tuple[int | None, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def first(self) -> tuple[int | None, str]:
        return self.problems[0] if self.problems else (None, "")


def checkpoints_verify(
    *,
    lines: Iterable[str],
    public_keys: Iterable[Ed25519PublicKey],
    head_position: int,
    hash_at: dict[int, str],
    every_events: int = 0,
    slack_events: int = 0,
) -> CheckpointReport:
    """Check a chain (its verified length and the hash at each checkpointed position) against
    the checkpoints' lines.

    Reports, with the first bad position: a signature that does not verify (forged), a
    checkpoint past the end of the chain (truncated), a checkpoint whose position holds
    another hash (rewritten), a head that went backwards between two checkpoints, and, when
    ``every_events`` is set, events past the last checkpoint beyond ``every_events +
    slack_events`` (a checkpoint is missing).
    """
    keys = list(public_keys)
    report = CheckpointReport()
    problems: list[tuple[int | None, str]] = []
    good: list[Checkpoint] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            cp = checkpoint_parse(line)
        except ValueError as exc:
            problems.append((None, f"checkpoint line {number} is not a valid checkpoint ({exc})."))
            continue
        report.checkpoints += 1
        why = checkpoint_signature_problem(cp, keys)
        if why:
            problems.append((cp.position, f"the checkpoint at position {cp.position} (line {number}) is not valid: {why}."))
            continue
        good.append(cp)
    previous: Checkpoint | None = None
    for cp in sorted(good, key=lambda c: (c.created_at, c.position)):
        if previous is not None and cp.position < previous.position:
            problems.append((cp.position + 1, (
                f"the chain went backwards: a checkpoint signed at {previous.created_at} covers position "
                f"{previous.position}, a later one at {cp.created_at} only {cp.position}; events after "
                f"{cp.position} were removed and added again."
            )))
        previous = cp
    last_good = 0
    for cp in sorted(good, key=lambda c: c.position):
        if cp.position > head_position:
            problems.append((head_position + 1, (
                f"truncated: checkpoint at position {cp.position} (signed {cp.created_at}) but the chain ends at "
                f"{head_position}."
            )))
            break
        if cp.position == 0:
            continue
        if hash_at.get(cp.position) != cp.hash:
            problems.append((cp.position, (
                f"rewritten at position {cp.position}: the checkpoint signed {cp.created_at} has hash {cp.hash}, the "
                f"chain {hash_at.get(cp.position)}; an event between positions {last_good + 1} and {cp.position} "
                "was changed and the chain recomputed."
            )))
            break
        last_good = cp.position
    report.last_position = max((c.position for c in good), default=None)
    if every_events > 0:
        anchored = report.last_position or 0
        if head_position - anchored > every_events + slack_events:
            where = f"the last checkpoint is at position {anchored}" if good else "there is no valid checkpoint at all"
            problems.append((anchored + 1, (
                f"missing checkpoint: the chain has {head_position} events but {where}; one is written every "
                f"{every_events} events, so events after {anchored} are not anchored."
            )))
    report.problems = sorted(problems, key=lambda p: (p[0] is None, p[0] or 0))
    return report


def chain_rows_verify(rows: Iterable[dict]) -> tuple[int, dict[int, str], tuple[int | None, str]]:
    """Recompute a chain exported from the API (``GET /api/v1/audit-events/``, every page's
    ``results`` in order): returns (verified length, hash at each position, first problem).
    """
    prev_hash = audit.GENESIS_HASH
    hashes: dict[int, str] = {}
    expected = 1
    for row in rows:
        position = row["position"]
        if position != expected:
            return expected - 1, hashes, (expected, f"expected event #{expected}, found #{position}.")
        if row["prev_hash"] != prev_hash:
            return expected - 1, hashes, (position, "the link to the previous event does not match.")
        fields = audit.event_fields(
            position=position, occurred_at=_parse_moment(row["occurred_at"]), actor=row["actor"],
            action=row["action"], object_type=row["object_type"], object_id=row["object_id"],
            subject_ref=row.get("subject_ref"), details=row.get("details") or {},
        )
        if audit.chain_hash(prev_hash, fields) != row["hash"]:
            return expected - 1, hashes, (position, "the event's content does not match its hash: it was altered.")
        prev_hash = row["hash"]
        hashes[position] = prev_hash
        expected += 1
    return expected - 1, hashes, (None, "")


def _parse_moment(value: str) -> datetime:
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
