"""Liveness and readiness for load balancers and compose healthchecks."""

from __future__ import annotations

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, HttpResponsePermanentRedirect, JsonResponse
from django.urls import Resolver404, resolve
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET


def _database_state() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:  # any driver error means "down"; the message says why
        return f"down: {exc.__class__.__name__}"
    return "up"


def _broker_state() -> str:
    from kombu import Connection

    try:
        # A fresh connection, not the app's pool: the check must see the broker as it is now.
        with Connection(settings.CELERY_BROKER_URL, connect_timeout=2) as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
    except Exception as exc:
        return f"down: {exc.__class__.__name__}"
    return "up"


@never_cache
@require_GET
def healthz(request):
    checks = {"database": _database_state()}
    if not settings.CELERY_EMBEDDED:
        checks["broker"] = _broker_state()
    else:
        checks["broker"] = "embedded (tasks run in-process)"
    down = sorted(name for name, state in checks.items() if state.startswith("down"))
    body = {"status": "ok" if not down else "unavailable", "checks": checks}
    if down:
        body["down"] = down
    return JsonResponse(body, status=503 if down else 200)


@csrf_exempt
def api_not_found(request: HttpRequest) -> HttpResponse:
    """A path under /api/ that no endpoint matches: a JSON 404, like every other API error.

    Django's own 404 page is HTML, which API clients cannot read. Being a catch-all route, this
    also takes over from APPEND_SLASH, so a GET without the trailing slash is still redirected,
    and other methods are told where the endpoint is.
    """
    if not request.path.endswith("/"):
        with_slash = request.path + "/"
        try:
            match = resolve(with_slash)
        except Resolver404:
            match = None
        if match is not None and match.func is not api_not_found:
            if request.method in ("GET", "HEAD"):
                query = request.META.get("QUERY_STRING", "")
                return HttpResponsePermanentRedirect(with_slash + (f"?{query}" if query else ""))
            return JsonResponse({"detail": f"No endpoint at {request.path}; did you mean {with_slash} (with a "
                                           "trailing slash)?"}, status=404)
    return JsonResponse({"detail": f"No endpoint at {request.path}. The endpoints are listed in the OpenAPI "
                                   "schema at /api/schema/ and /api/docs/."}, status=404)
