"""API-key authentication: ``Authorization: Token <key>`` or ``Authorization: Bearer <key>``.

Also the brakes on guessing: a rate per API key, a bound on failed authentications per client
address, and the admin login lockout (django-axes), all counting clients the same way
(``client_address``).
"""

from __future__ import annotations

from axes.backends import AxesStandaloneBackend
from django.conf import settings
from django.http import HttpRequest
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions, throttling
from rest_framework.settings import api_settings

from governance import selectors
from governance.models import ApiKey


def client_address(request: HttpRequest) -> str | None:
    """The client's address: the peer's, or the one TRUSTED_PROXY_COUNT proxies saw.

    None when the request has no peer address (a login made in-process); django-axes stores
    the value in an ``inet`` column on PostgreSQL, which refuses anything but an address.

    Only the entries our own proxies appended to X-Forwarded-For are believed (counted from
    the right); whatever a client puts there itself is ignored, or it could pick a fresh
    address for every guess.
    """
    proxies = settings.TRUSTED_PROXY_COUNT
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    if proxies > 0 and forwarded:
        hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
        if hops:
            return hops[-min(proxies, len(hops))]
    return request.META.get("REMOTE_ADDR") or None


class _RateFromSettings(throttling.SimpleRateThrottle):
    """Reads its rate when used, not at import, so the rate can be changed without a restart of
    the test process (override_settings) and DEFAULT_THROTTLE_RATES stays the one place."""

    def get_rate(self) -> str | None:
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)

    def get_ident(self, request) -> str:
        return client_address(request) or "unknown"


class ApiKeyRateThrottle(_RateFromSettings):
    """API_THROTTLE_RATE requests per API key (or per session user, e.g. the Swagger UI)."""

    scope = "api_key"

    def get_cache_key(self, request, view) -> str | None:
        if isinstance(request.auth, ApiKey):
            ident = f"key-{request.auth.pk}"
        elif request.user and request.user.is_authenticated:
            ident = f"user-{request.user.pk}"
        else:
            return None  # refused by the permission check anyway
        return self.cache_format % {"scope": self.scope, "ident": ident}


class AuthFailureThrottle(_RateFromSettings):
    """API_AUTH_FAILURE_RATE failed authentications per client address.

    DRF authenticates before it throttles, so a throttle class would never see the failures;
    ApiKeyAuthentication records them here instead, and refuses every key (even a good one)
    from an address over the rate until its window has passed.
    """

    scope = "auth_failure"

    def get_cache_key(self, request, view) -> str:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}

    def _load(self, request) -> bool:
        """Fills history and returns whether a rate is configured at all."""
        if self.rate is None:
            return False
        self.key = self.get_cache_key(request, None)
        self.history = self.cache.get(self.key, [])
        self.now = self.timer()
        while self.history and self.history[-1] <= self.now - self.duration:
            self.history.pop()
        return True

    def refusal_wait(self, request) -> float | None:
        """Seconds until this address may try again, or None if it may try now."""
        if not self._load(request) or len(self.history) < self.num_requests:
            return None
        return self.wait()

    def failure_record(self, request) -> None:
        if self._load(request):
            self.history.insert(0, self.now)
            self.cache.set(self.key, self.history, self.duration)


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keywords = ("token", "bearer")

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].decode("latin-1").lower() not in self.keywords:
            return None
        failures = AuthFailureThrottle()
        wait = failures.refusal_wait(request)
        if wait is not None:
            raise exceptions.Throttled(
                wait=max(wait, 1),
                detail=f"Too many failed authentications from this address (the limit is "
                f"{failures.rate}); try again later.",
            )
        try:
            return self._authenticate_key(header)
        except exceptions.AuthenticationFailed:
            failures.failure_record(request)
            raise

    def _authenticate_key(self, header: list[bytes]):
        if len(header) != 2:
            raise exceptions.AuthenticationFailed(
                "Invalid Authorization header: expected 'Token <key>' or 'Bearer <key>'."
            )
        try:
            raw_key = header[1].decode()
        except UnicodeDecodeError as exc:
            raise exceptions.AuthenticationFailed("Invalid API key: not valid text.") from exc
        api_key, reason = selectors.api_key_authenticate(raw_key=raw_key)
        if api_key is None:
            raise exceptions.AuthenticationFailed(reason)
        return api_key.user, api_key

    def authenticate_header(self, request) -> str:
        # Makes DRF answer 401 (not 403) to requests without credentials.
        return 'Token realm="api"'


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "governance.authentication.ApiKeyAuthentication"
    name = "ApiKeyAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "API key as `Token <key>` (or `Bearer <key>`); create one with "
            "`manage.py create_api_key --user NAME --role ROLE`.",
        }


class LoginLockoutBackend(AxesStandaloneBackend):
    """django-axes' lockout for logins made through a request (the admin's login form).

    ``authenticate()`` called without a request (a management command, the shell) is no login
    attempt from a client: there is no address to lock out, so it is let through to the next
    backend instead of failing as AxesStandaloneBackend would.
    """

    def authenticate(self, request, username=None, password=None, **kwargs):
        if request is None:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)
