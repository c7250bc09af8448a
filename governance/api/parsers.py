"""Request bodies the database can actually store.

JSON may carry two kinds of string PostgreSQL refuses: the NUL character (``\\u0000``, which
neither text nor jsonb columns hold) and lone UTF-16 surrogates (``\\ud800`` with no partner,
which have no UTF-8 encoding). Letting them through ends in a server error deep in a service,
after validation. They are refused here instead, with the JSON path of the first one, for
every endpoint at once.
"""

from __future__ import annotations

import re
from typing import Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser, get_encoding
from rest_framework.utils import json

# Only a body that spells one of these escapes can hold such a string, so most bodies are
# checked with one scan of their bytes rather than a walk over every value.
_SUSPECT_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})")


def unstorable_reason(text: str) -> str | None:
    """Why PostgreSQL could not store ``text``, or None."""
    if "\x00" in text:
        return "contains a NUL character (\\u0000), which cannot be stored"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains an unpaired UTF-16 surrogate, which is not valid Unicode"
    return None


def first_unstorable(data: Any) -> tuple[str, str] | None:
    """(JSON path, reason) of the first string in ``data``, key or value, that cannot be stored."""
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            reason = unstorable_reason(value)
            if reason:
                return path or "(body)", reason
        elif isinstance(value, dict):
            for key, item in reversed(list(value.items())):
                reason = unstorable_reason(key)
                if reason:
                    return (f"{path}.{key!a}" if path else f"{key!a}"), f"a key that {reason}"
                stack.append((f"{path}.{key}" if path else key, item))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", item) for i, item in reversed(list(enumerate(value))))
    return None


class StorableJSONParser(JSONParser):
    """DRF's JSON parser, refusing strings the database cannot hold with a 400 that names them."""

    def parse(self, stream, media_type=None, parser_context=None) -> Any:
        encoding = get_encoding(parser_context or {})
        raw = stream.read() if stream is not None else b""
        try:
            data = json.loads(raw.decode(encoding), parse_constant=json.strict_constant if self.strict else None)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ParseError(f"JSON parse error - {exc}") from None
        if _SUSPECT_ESCAPE.search(raw):
            found = first_unstorable(data)
            if found:
                path, reason = found
                raise ParseError({path: [f"This value {reason}."]})
        return data
