"""JSON errors that name the field and the reason, for every API error."""

from __future__ import annotations

import logging

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DataError
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

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
    elif isinstance(exc, DataError):
        # The last line of defence: validation should have named the field already, so this
        # is logged as a gap to close, but the client still learns it sent a bad value.
        logger.exception("The database refused a value that validation let through")
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "a value is out of range"
        return Response({"detail": f"The database refused a value in this request: {reason}."},
                        status=status.HTTP_400_BAD_REQUEST)
    return drf_exception_handler(exc, context)
