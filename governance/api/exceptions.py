"""JSON errors that name the field and the reason, for every API error."""

from __future__ import annotations

import logging

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DataError
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from governance.pseudonymisation import IdentifierError
from governance.services import ServiceConflict, ServiceError

logger = logging.getLogger(__name__)


def exception_handler(exc, context):
    if isinstance(exc, DjangoValidationError):
        detail = exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        exc = exceptions.ValidationError(detail=detail)
    elif isinstance(exc, ServiceConflict):
        return Response({"detail": str(exc), **exc.extra}, status=status.HTTP_409_CONFLICT)
    elif isinstance(exc, ServiceError):
        body = {"detail": str(exc), **exc.extra}
        if exc.field:
            body = {exc.field: [str(exc)], **exc.extra}
        return Response(body, status=status.HTTP_400_BAD_REQUEST)
    elif isinstance(exc, IdentifierError):
        # A service that did not catch it itself: the identifier is always the request's
        # ``subject`` (or ``subjects[i]``), named by the pseudonymisation that refused it.
        reason = str(exc)
        return Response({exc.field: [f"{reason[:1].upper()}{reason[1:]}."]}, status=status.HTTP_400_BAD_REQUEST)
    elif isinstance(exc, DataError):
        # The last line of defence: validation should have named the field already, so this
        # is logged as a gap to close, but the client still learns it sent a bad value.
        # Its text is the database's ("integer out of range", "value too long for type …"),
        # not the API's, and may describe the schema: answer in our words, naming the field
        # whose value the database cannot hold when the request shows which one it is.
        logger.exception("The database refused a value that validation let through")
        field = _unstorable_field(context.get("request"))
        if field is not None:
            return Response({field: [f"A whole number this large cannot be stored (at most {DB_INTEGER_MAX})."]},
                            status=status.HTTP_400_BAD_REQUEST)
        return Response({"detail": "A value in this request cannot be stored: a number too large or a text too long "
                                   "for its field."}, status=status.HTTP_400_BAD_REQUEST)
    return drf_exception_handler(exc, context)


# PostgreSQL's integer column; bigint columns hold up to 2**63 - 1.
DB_INTEGER_MAX = 2**31 - 1


def _unstorable_field(request) -> str | None:
    """The first query parameter or body field (dotted path) holding a whole number beyond a
    PostgreSQL integer, the usual cause of "integer out of range"."""
    if request is None:
        return None
    candidates: list[tuple[str, object]] = list(getattr(request, "query_params", {}).items())
    try:
        data = request.data
    except Exception:  # an unparsable body was answered before reaching the database
        data = None
    stack: list[tuple[str, object]] = [("", data)]
    while stack:
        path, value = stack.pop(0)
        if isinstance(value, dict):
            stack.extend((f"{path}.{k}" if path else str(k), v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(value))
        elif path:
            candidates.append((path, value))
    for name, value in candidates:
        if isinstance(value, bool):
            continue
        if isinstance(value, str):
            text = value.strip()
            if not text.lstrip("-").isdigit() or len(text) > 100:
                continue
            value = int(text)
        if isinstance(value, int) and abs(value) > DB_INTEGER_MAX:
            return name
    return None
