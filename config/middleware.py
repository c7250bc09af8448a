"""HTTP hardening that applies to every response or every /api/ request, whatever the view.

- ``ResponseHeadersMiddleware``: Permissions-Policy on every response; ``Cache-Control:
  no-store`` on every API answer and every download (consent ledger pages, erasure requests,
  certificates, exports, the admin's PDF downloads), which hold personal data that no browser
  or proxy cache should keep.
- ``HealthzMiddleware``: ``/healthz`` answers before the Host header is validated.
- ``ApiRequestLimitsMiddleware``: a body over DATA_UPLOAD_MAX_MEMORY_SIZE and a query string
  over API_MAX_QUERY_STRING_LENGTH are answered with JSON on /api/ before any view reads them.
"""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.utils.cache import patch_cache_control

API_PREFIX = "/api/"


def is_api_path(request: HttpRequest) -> bool:
    return request.path_info.startswith(API_PREFIX)


class ResponseHeadersMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        response.setdefault("Permissions-Policy", settings.PERMISSIONS_POLICY)
        # Every download names itself with Content-Disposition (FileResponse does so for any
        # file it serves). Static files are left alone: WhiteNoise's hashed names are meant to be
        # cached for ever, and they hold no personal data.
        is_download = response.has_header("Content-Disposition")
        is_static = request.path_info.startswith("/" + settings.STATIC_URL.lstrip("/"))
        if (is_api_path(request) or is_download) and not is_static:
            patch_cache_control(response, no_store=True)
        return response


class HealthzMiddleware:
    """Answers /healthz before CommonMiddleware validates the Host header.

    A container's health check calls 127.0.0.1 (or its own name), which is not one of the
    public ALLOWED_HOSTS; listing it there would let any Host through to every page. The
    health answer holds nothing a visitor could misuse, so it is the one path exempted.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        if request.path_info == "/healthz":
            from config.views import healthz

            return healthz(request)
        return self.get_response(request)


def _too_large(limit: int) -> JsonResponse:
    return JsonResponse(
        {"detail": f"The request body is larger than the limit of {limit} bytes (DATA_UPLOAD_MAX_MEMORY_SIZE)."},
        status=413,
    )


class ApiRequestLimitsMiddleware:
    """JSON answers for requests over the size limits, on /api/ only.

    DRF's parsers read the request stream directly, so without this check Django's
    DATA_UPLOAD_MAX_MEMORY_SIZE never applied to API bodies at all.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        if is_api_path(request):
            refusal = self._refusal(request)
            if refusal is not None:
                return refusal
        return self.get_response(request)

    def _refusal(self, request: HttpRequest) -> HttpResponse | None:
        query_limit = settings.API_MAX_QUERY_STRING_LENGTH
        query_length = len(request.META.get("QUERY_STRING", ""))
        if query_limit is not None and query_length > query_limit:
            return JsonResponse(
                {"detail": f"The query string is {query_length} characters long; the limit is {query_limit} "
                           "(API_MAX_QUERY_STRING_LENGTH)."},
                status=414,
            )
        body_limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if body_limit is None:
            return None
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return JsonResponse({"detail": "The Content-Length header is not a number."}, status=400)
        if length > body_limit:
            return _too_large(body_limit)
        return None


class AdminCspMiddleware:
    """The admin's Content-Security-Policy additions, on /admin/ only (inside CSPMiddleware).

    The admin theme (django-unfold) drives its menus, tabs and dialogs with Alpine.js, whose
    standard build evaluates its ``x-data`` expressions (so ``'unsafe-eval'``), and positions
    elements with ``style`` attributes (so ``'unsafe-inline'`` for styles). Neither extends to
    inline ``<script>`` blocks, and every script is still served from this site: a page still
    cannot run a script an attacker injected as markup. The API and its docs keep the strict
    policy.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        if request.path_info.startswith("/admin/") or request.path_info == "/":
            response._csp_update = {"script-src": ["'unsafe-eval'"]}
            # Replaced, not extended: next to the hashes of the strict policy a browser would
            # ignore 'unsafe-inline'.
            response._csp_replace = {"style-src": ["'self'", "'unsafe-inline'"]}
        return response
