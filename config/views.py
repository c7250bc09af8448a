"""Views of the project itself: liveness and readiness, JSON errors under /api/, Swagger UI."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.db import connection
from django.http import HttpRequest, HttpResponse, HttpResponsePermanentRedirect, JsonResponse
from django.urls import Resolver404, resolve, reverse
from django.views import defaults
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET
from drf_spectacular.views import SpectacularSwaggerSplitView
from rest_framework.exceptions import APIException, NotAuthenticated


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


# --- Error handlers (config.urls handler400/403/404/500) ------------------------------------
# Under /api/ every error is JSON, including the ones Django raises before or outside a view:
# a body or a number of fields over Django's limits (RequestDataTooBig, TooManyFieldsSent), a
# disallowed Host, a server error.


def _is_api(request: HttpRequest) -> bool:
    return request.path_info.startswith("/api/")


def _reason(exception: BaseException | None, default: str) -> str:
    message = str(exception) if exception is not None else ""
    if isinstance(exception, RequestDataTooBig):
        return (f"The request body is larger than the limit of {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes "
                "(DATA_UPLOAD_MAX_MEMORY_SIZE).")
    if isinstance(exception, TooManyFieldsSent):
        return (f"The request has more than {settings.DATA_UPLOAD_MAX_NUMBER_FIELDS} parameters "
                "(DATA_UPLOAD_MAX_NUMBER_FIELDS).")
    if isinstance(exception, TooManyFilesSent):
        return f"The request has more than {settings.DATA_UPLOAD_MAX_NUMBER_FILES} files (DATA_UPLOAD_MAX_NUMBER_FILES)."
    return message or default


def error_400(request: HttpRequest, exception: BaseException | None = None) -> HttpResponse:
    if _is_api(request):
        status = 413 if isinstance(exception, RequestDataTooBig) else 400
        return JsonResponse({"detail": _reason(exception, "Bad request.")}, status=status)
    return defaults.bad_request(request, exception)


def error_403(request: HttpRequest, exception: BaseException | None = None) -> HttpResponse:
    if _is_api(request):
        return JsonResponse({"detail": _reason(exception, "You do not have permission to perform this action.")},
                            status=403)
    return defaults.permission_denied(request, exception)


def error_404(request: HttpRequest, exception: BaseException | None = None) -> HttpResponse:
    if _is_api(request):
        return JsonResponse({"detail": f"Not found: {request.path}."}, status=404)
    return defaults.page_not_found(request, exception)


def error_500(request: HttpRequest) -> HttpResponse:
    if _is_api(request):
        # No details: they are in the server's log, and may name data the client should not see.
        return JsonResponse({"detail": "Internal server error; it has been logged."}, status=500)
    return defaults.server_error(request)


class SwaggerUIView(SpectacularSwaggerSplitView):
    """Swagger UI: a person opening it in a browser without a login is sent to the admin's
    login page and brought back, not shown a bare 401. A client that sent credentials (a
    wrong API key) gets the API's JSON 401, like every other answer under /api/."""

    def handle_exception(self, exc: Exception) -> HttpResponse:
        if isinstance(exc, NotAuthenticated) and not self.request.META.get("HTTP_AUTHORIZATION"):
            return redirect_to_login(self.request.get_full_path(), login_url=reverse("admin:login"))
        if isinstance(exc, APIException):
            response = super().handle_exception(exc)
            return JsonResponse({"detail": str(exc.detail)}, status=response.status_code, headers={
                name: value for name, value in response.items() if name in ("WWW-Authenticate", "Retry-After")
            })
        return super().handle_exception(exc)
