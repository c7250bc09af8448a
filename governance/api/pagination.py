"""Pagination for every list endpoint."""

from __future__ import annotations

from rest_framework.pagination import LimitOffsetPagination


class BoundedLimitOffsetPagination(LimitOffsetPagination):
    """Limit/offset pages with bounds, so no query string can overflow the database's integers.

    ``limit`` above MAX_LIMIT is served as MAX_LIMIT (DRF's own cut-off); an ``offset`` beyond
    any table's size is served as the empty page it would be anyway.
    """

    max_limit = 1000
    MAX_OFFSET = 10**12

    def get_offset(self, request) -> int:
        try:
            offset = int(request.query_params[self.offset_query_param])
        except (KeyError, ValueError):
            return 0
        return min(max(offset, 0), self.MAX_OFFSET)
