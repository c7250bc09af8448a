"""Enumerate every route under /api/v1/ with its methods and allowed roles.

The access-matrix test is built from this list, so a new endpoint is covered the
moment it is routed: anonymous → 401, a role not allowed → 403, an allowed role →
neither.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.urls import NoReverseMatch, URLPattern, URLResolver, get_resolver, reverse
from rest_framework.test import APIRequestFactory

from governance.permissions import required_roles

API_PREFIX = "/api/v1/"
SENTINELS = ("999999999", "00000000-0000-0000-0000-000000000000", "unknown")


@dataclass(frozen=True)
class Route:
    name: str
    path: str
    method: str
    action: str
    allowed: frozenset[str]

    @property
    def id(self) -> str:
        return f"{self.method} {self.path}"


def _walk(patterns, namespace=""):
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            ns = f"{namespace}{pattern.namespace}:" if pattern.namespace else namespace
            yield from _walk(pattern.url_patterns, ns)
        elif isinstance(pattern, URLPattern) and pattern.name:
            yield namespace + pattern.name, pattern


def _reverse(name: str, pattern: URLPattern) -> str | None:
    kwargs_names = list(pattern.pattern.regex.groupindex)
    if "format" in kwargs_names:
        return None  # format-suffix duplicates of routes already covered
    for sentinel in SENTINELS:
        try:
            return reverse(name, kwargs=dict.fromkeys(kwargs_names, sentinel))
        except NoReverseMatch:
            continue
    return None


def _methods(callback) -> dict[str, str]:
    actions = getattr(callback, "actions", None)
    if actions:
        return {method.upper(): action for method, action in actions.items()}
    cls = getattr(callback, "cls", None) or getattr(callback, "view_class", None)
    if cls is None:
        return {}
    return {m.upper(): m for m in cls.http_method_names if m not in {"options", "head", "trace"} and hasattr(cls, m)}


def api_routes() -> list[Route]:
    routes: dict[tuple[str, str], Route] = {}
    factory = APIRequestFactory()
    for name, pattern in _walk(get_resolver().url_patterns):
        path = _reverse(name, pattern)
        if path is None or not path.startswith(API_PREFIX):
            continue
        callback = pattern.callback
        cls = getattr(callback, "cls", None)
        for method, action in _methods(callback).items():
            view = cls(**getattr(callback, "initkwargs", {})) if cls else None
            if view is not None:
                view.action = action if getattr(callback, "actions", None) else None
                request = factory.generic(method, path)
                allowed = required_roles(view, request)
            else:
                allowed = frozenset()
            routes[(method, path)] = Route(name, path, method, action, allowed)
    return sorted(routes.values(), key=lambda r: (r.path, r.method))


# The role policy of routes, written apart from the views' role_permissions: a test
# compares what the code enforces with what is meant. Paths as api_routes() reverses them.
_DPO = frozenset({"dpo"})
_DPO_AND_AUDITOR = frozenset({"dpo", "auditor"})
ROLE_POLICY: dict[tuple[str, str], frozenset[str]] = {
    # Processing limits (Art. 18, Art. 21): recorded by the DPO, read by the DPO and auditors.
    ("GET", "/api/v1/restrictions/"): _DPO_AND_AUDITOR,
    ("POST", "/api/v1/restrictions/"): _DPO,
    ("GET", "/api/v1/restrictions/999999999/"): _DPO_AND_AUDITOR,
    ("POST", "/api/v1/restrictions/999999999/lift/"): _DPO,
    ("GET", "/api/v1/objections/"): _DPO_AND_AUDITOR,
    ("POST", "/api/v1/objections/"): _DPO,
    ("GET", "/api/v1/objections/999999999/"): _DPO_AND_AUDITOR,
    ("POST", "/api/v1/objections/999999999/compelling-grounds/"): _DPO,
    # Rectification policies (Art. 16): the DPO decides retrain or accept; every role reads them.
    ("GET", "/api/v1/rectification-policies/"): frozenset({"dpo", "ml_engineer", "auditor"}),
    ("POST", "/api/v1/rectification-policies/"): _DPO,
    ("GET", "/api/v1/rectification-policies/999999999/"): frozenset({"dpo", "ml_engineer", "auditor"}),
    # Access (Art. 15) and portability (Art. 20): the answers hold a person's own data.
    ("POST", "/api/v1/subjects/access/"): _DPO,
    ("POST", "/api/v1/subjects/portability/"): _DPO,
    # Requests of every right (issue 18): the DPO acts; auditors read the metadata, never an answer.
    ("GET", "/api/v1/requests/"): _DPO_AND_AUDITOR,
    ("POST", "/api/v1/requests/"): _DPO,
    ("GET", "/api/v1/requests/999999999/"): _DPO_AND_AUDITOR,
    ("POST", "/api/v1/requests/999999999/verify/"): _DPO,
    ("POST", "/api/v1/requests/999999999/extend/"): _DPO,
    ("POST", "/api/v1/requests/999999999/reject/"): _DPO,
    ("POST", "/api/v1/requests/999999999/execute/"): _DPO,
    ("POST", "/api/v1/requests/999999999/lift/"): _DPO,
    ("POST", "/api/v1/requests/999999999/notified/"): _DPO,
    ("POST", "/api/v1/erasure-requests/999999999/notified/"): _DPO,
    ("GET", "/api/v1/requests/999999999/answer/"): _DPO,
    # Output policies (issue 19): the DPO sets how a model's predictions are shown; every role reads them.
    ("GET", "/api/v1/output-policies/"): frozenset({"dpo", "ml_engineer", "auditor"}),
    ("POST", "/api/v1/output-policies/"): _DPO,
    ("GET", "/api/v1/output-policies/999999999/"): frozenset({"dpo", "ml_engineer", "auditor"}),
    # Decisions (issue 19): the serving system (an ML engineer's API key) and the DPO predict; the
    # DPO contests on a person's behalf and decides reviews; auditors read decisions, reviews,
    # the log and its export, never predict.
    ("POST", "/api/v1/models/999999999/predict/"): frozenset({"dpo", "ml_engineer"}),
    ("GET", "/api/v1/decisions/"): _DPO_AND_AUDITOR,
    ("GET", "/api/v1/decisions/999999999/"): _DPO_AND_AUDITOR,
    ("POST", "/api/v1/decisions/999999999/contest/"): _DPO,
    ("GET", "/api/v1/decisions/log/"): _DPO_AND_AUDITOR,
    ("GET", "/api/v1/decisions/export/"): _DPO_AND_AUDITOR,
    ("GET", "/api/v1/reviews/"): _DPO_AND_AUDITOR,
    ("GET", "/api/v1/reviews/999999999/"): _DPO_AND_AUDITOR,
    ("POST", "/api/v1/reviews/999999999/decide/"): _DPO,
    ("GET", "/api/v1/decision-input-retentions/"): _DPO_AND_AUDITOR,
    ("POST", "/api/v1/decision-input-retentions/"): _DPO,
    ("GET", "/api/v1/decision-input-retentions/999999999/"): _DPO_AND_AUDITOR,
    # Training outside the ledger (issue 20): whoever may train reports; only the DPO approves
    # spending more ε than reserved; every role reads whether a version may be served; a DPO or
    # the engineer who owns a version retires it (the owner check is the service's, per object).
    ("POST", "/api/v1/training-runs/999999999/report/"): frozenset({"dpo", "ml_engineer"}),
    ("POST", "/api/v1/training-runs/999999999/fail/"): frozenset({"dpo", "ml_engineer"}),
    ("POST", "/api/v1/training-runs/999999999/approve-overspend/"): _DPO,
    ("GET", "/api/v1/models/999999999/status/"): frozenset({"dpo", "ml_engineer", "auditor"}),
    ("POST", "/api/v1/models/999999999/retire/"): frozenset({"dpo", "ml_engineer"}),
    # Webhooks (issue 20): whoever trains or serves models (DPO, ML engineer) is told of status changes.
    ("GET", "/api/v1/webhooks/"): frozenset({"dpo", "ml_engineer"}),
    ("POST", "/api/v1/webhooks/"): frozenset({"dpo", "ml_engineer"}),
    ("GET", "/api/v1/webhooks/999999999/"): frozenset({"dpo", "ml_engineer"}),
    ("POST", "/api/v1/webhooks/999999999/deactivate/"): frozenset({"dpo", "ml_engineer"}),
    ("GET", "/api/v1/webhooks/999999999/deliveries/"): frozenset({"dpo", "ml_engineer"}),
}
