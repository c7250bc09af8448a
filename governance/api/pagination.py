"""Pagination for every list endpoint."""

from __future__ import annotations

from typing import Any

from rest_framework.exceptions import ValidationError
from rest_framework.pagination import LimitOffsetPagination


class BoundedLimitOffsetPagination(LimitOffsetPagination):
    """Limit/offset pages with bounds, so no query string can overflow the database's integers.

    ``limit`` is 1 to MAX_LIMIT and ``offset`` 0 to MAX_OFFSET, each given once as a whole
    number; anything else is a 400 naming the parameter rather than silently serving the first
    page, which a client paging through a ledger would take for the whole answer. The schema
    states the same bounds, so a generated client cannot send what is refused.
    """

    max_limit = 1000
    MAX_OFFSET = 10**12

    def _bounded(self, request, name: str, *, low: int, high: int) -> int | None:
        values = request.query_params.getlist(name)
        if not values:
            return None
        if len(values) > 1:
            raise ValidationError({name: [f"Give {name} once; it was given {len(values)} times."]})
        raw = values[0].strip()
        if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
            raise ValidationError({name: [f"{name} must be a whole number from {low} to {high:,}; got {values[0][:40]!r}."]})
        return int(raw)

    def get_limit(self, request) -> int:
        limit = self._bounded(request, self.limit_query_param, low=1, high=self.max_limit)
        return self.default_limit if limit is None else limit

    def get_offset(self, request) -> int:
        return self._bounded(request, self.offset_query_param, low=0, high=self.MAX_OFFSET) or 0

    def get_schema_operation_parameters(self, view) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        bounds = {self.limit_query_param: (1, self.max_limit), self.offset_query_param: (0, self.MAX_OFFSET)}
        for parameter in parameters:
            if parameter["name"] in bounds:
                low, high = bounds[parameter["name"]]
                parameter["schema"] = {**parameter["schema"], "minimum": low, "maximum": high}
        return parameters
