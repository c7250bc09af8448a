"""Errors of the client: the server's answer, in its own words."""

from __future__ import annotations

from typing import Any


class LedgerError(Exception):
    """An answer of the ledger other than success.

    ``status`` is the HTTP status (409: over budget or the wrong state, 400: a bad value named by
    ``field``, 403: not allowed or a wrong run token, 404: unknown). ``detail`` is the server's
    message; ``body`` the whole JSON answer when it was JSON.
    """

    def __init__(self, status: int, detail: str, field: str | None = None, body: Any = None) -> None:
        self.status = status
        self.detail = detail
        self.field = field
        self.body = body
        where = f" ({field})" if field else ""
        super().__init__(f"{status}{where}: {detail}")


class LedgerIntegrityError(LedgerError):
    """The ledger answered, but what it sent does not match what it promised (an export whose
    headers name another snapshot, a record count that differs from the rows received, a plan
    Opacus would not follow). Raised before anything is trained on the data or reported."""

    def __init__(self, detail: str, field: str | None = None) -> None:
        super().__init__(0, detail, field)


def error_from_body(status: int, body: Any, fallback: str) -> LedgerError:
    """The server names the field in one of two shapes: ``{"detail": "..."}`` (conflicts,
    permissions) or ``{"<field>": ["reason", ...], ...}`` (validation, possibly nested for a
    list or an object); the first field and its first reason are what a caller acts on."""
    if isinstance(body, dict):
        if isinstance(body.get("detail"), str):
            return LedgerError(status, body["detail"], body.get("field") if isinstance(body.get("field"), str) else None,
                               body)
        for key, value in body.items():
            path, reason = _first_reason(str(key), value)
            if reason is not None:
                return LedgerError(status, reason, path, body)
    if isinstance(body, list) and body:
        path, reason = _first_reason("", body)
        if reason is not None:
            return LedgerError(status, reason, path or None, body)
    return LedgerError(status, fallback, None, body)


def _first_reason(path: str, value: Any) -> tuple[str, str | None]:
    if isinstance(value, str):
        return path, value
    if isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, str):
                return path, item
            sub, reason = _first_reason(f"{path}[{index}]", item)
            if reason is not None:
                return sub, reason
    if isinstance(value, dict):
        for key, item in value.items():
            # DRF names list positions by their index as a key: {"history": {"0": [...]}}.
            sub_path = f"{path}[{key}]" if str(key).isdigit() else (f"{path}.{key}" if path else str(key))
            sub, reason = _first_reason(sub_path, item)
            if reason is not None:
                return sub, reason
    return path, None
