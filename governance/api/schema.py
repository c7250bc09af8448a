"""OpenAPI post-processing: the error answers every endpoint can give, documented once.

drf-spectacular documents what a view returns on success. A client generated from the schema
also needs the failures: every endpoint needs credentials (401) and a role (403); one that takes
input can refuse it (400, naming the field); one with an id in its path can find nothing (404); a write can meet a record in a state that
refuses it (409). Every endpoint is throttled (429, with Retry-After) and bounded: a query
string over the limit is a 414, a body over the limit a 413.
The answers the views declare themselves (409 conflicts, say) are left as they are.
"""

from __future__ import annotations

from typing import Any

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": (
        'Either {"detail": "reason"} or, for refused input, the field (a JSON path such as '
        '"events[3].occurred_at") mapped to its reasons.'
    ),
    # Nested input (a list of rules, one item of a batch) gets nested reasons, hence object and array.
    "additionalProperties": {"oneOf": [{"type": "string"}, {"type": "array"}, {"type": "object"}]},
    "example": {"purpose": ["Unknown purpose code 'ml.nope'."]},
}

_DESCRIPTIONS = {
    "400": "The input was refused: the body names each field and the reason. Nothing was written.",
    "401": "No valid API key or session.",
    "403": "The caller's role may not do this.",
    "404": "No such object.",
    "409": "The current state of a record does not allow this (already signed, not yet verified, a "
           "duplicate, …); nothing changed.",
    "413": "The body is larger than the server accepts (DATA_UPLOAD_MAX_MEMORY_SIZE); nothing was read.",
    "414": "The query string is longer than the server accepts (API_MAX_QUERY_STRING_LENGTH).",
    "429": "Too many requests from this key, or too many failed authentications from this address; "
           "retry after the number of seconds in the Retry-After header.",
}


def add_error_responses(result: dict, generator: Any, request: Any, public: bool) -> dict:
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    reference = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path, operations in result.get("paths", {}).items():
        for method, operation in operations.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            codes = ["401", "403", "414", "429"]
            if operation.get("requestBody"):
                codes.append("413")
            if operation.get("requestBody") or any(p.get("in") == "query" for p in operation.get("parameters", [])):
                codes.append("400")
            if "{" in path:
                codes.append("404")
            if method in ("post", "put", "patch", "delete"):
                # Services refuse an action in the wrong state, and every write goes through one.
                codes.append("409")
            for code in codes:
                operation["responses"].setdefault(code, {"description": _DESCRIPTIONS[code], "content": reference})
    return result
