"""Every URL the admin site answers, with its path converters filled from real objects.

Walks ``admin.site.get_urls()`` (which includes each ModelAdmin's ``get_urls()``), so a page
an admin adds later — a custom view, a download, a dashboard — is visited without anyone
listing it here.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from django.apps import apps
from django.contrib import admin
from django.contrib.contenttypes.models import ContentType
from django.urls import URLPattern, URLResolver
from django.urls.resolvers import RegexPattern, RoutePattern

UNKNOWN_ID = "99999999"
# Route parameters: <name> or <converter:name>.
PARAMETER = re.compile(r"<(?:(?P<converter>\w+):)?(?P<name>\w+)>")
# Named groups of regex routes, e.g. the app index's (?P<app_label>auth|…).
REGEX_GROUP = re.compile(r"\(\?P<(?P<name>\w+)>(?P<body>[^)]*)\)")
# Not pages to look at: logging out ends the session the walk runs in; the catch-all is
# visited once on its own with a path that matches nothing.
SKIPPED_NAMES = {"logout"}
# Django's own pages per object, shared by every ModelAdmin; everything else a ModelAdmin
# answers is one of its custom views.
STANDARD_ROUTES = {"", "add/", "<path:object_id>/", "<path:object_id>/change/", "<path:object_id>/history/",
                   "<path:object_id>/delete/"}


@dataclass(frozen=True)
class AdminRoute:
    """One admin URL pattern: its route below /admin/, its name and the ModelAdmin it belongs to."""

    route: str
    name: str
    model_admin: admin.ModelAdmin | None

    @property
    def parameters(self) -> list[str]:
        return [m["name"] for m in PARAMETER.finditer(self.route)]

    @property
    def is_custom(self) -> bool:
        if self.model_admin is None:
            return True
        own = self.route.removeprefix(_prefix(self.model_admin))
        return own not in STANDARD_ROUTES


def _prefix(model_admin: admin.ModelAdmin) -> str:
    return f"{model_admin.model._meta.app_label}/{model_admin.model._meta.model_name}/"


def _pattern_text(pattern) -> str:
    if isinstance(pattern, RoutePattern):
        return str(pattern)
    if isinstance(pattern, RegexPattern):
        return pattern._regex.lstrip("^").rstrip("$")
    return str(pattern)


def routes(site: admin.AdminSite = admin.site) -> list[AdminRoute]:
    by_prefix = {_prefix(ma): ma for ma in site._registry.values()}

    def walk(patterns, prefix: str, owner) -> Iterator[AdminRoute]:
        for pattern in patterns:
            text = prefix + _pattern_text(pattern.pattern)
            if isinstance(pattern, URLResolver):
                yield from walk(pattern.url_patterns, text, by_prefix.get(text, owner))
            elif isinstance(pattern, URLPattern):
                yield AdminRoute(route=text, name=pattern.name or "", model_admin=owner)

    return [r for r in walk(site.get_urls(), "", None) if r.name not in SKIPPED_NAMES]


def fill(route: AdminRoute, *, object_id: str, related: dict[str, str] | None = None) -> str | None:
    """The route with its parameters filled: the ModelAdmin's object for ``pk``, ``id``,
    ``object_id`` and the like; a field's value for a parameter named after one of the model's
    fields (``kind``); for a parameter named after another model (``erasurestep_id``) an
    object of that model when one exists, else ``object_id``; a stored UUID for a ``uuid``
    parameter (a person's ``reference``); for the
    regex routes of the site (the app index) a real app label. None for the catch-all."""
    related = related or {}
    text = route.route
    if "(?P<url>" in text:
        return None
    for group in REGEX_GROUP.finditer(text):
        choice = group["body"].split("|")[0]
        text = text.replace(group[0], choice)

    def value(match: re.Match) -> str:
        name = match["name"]
        if match["converter"] == "uuid":
            if object_id == UNKNOWN_ID:
                return str(uuid.UUID(int=int(UNKNOWN_ID)))
            return _uuid_named(name) or object_id
        if name == "content_type_id" and route.model_admin is None:
            return str(ContentType.objects.get_for_model(_model_with_objects() or ContentType).pk)
        if name == "object_id" and route.model_admin is None:
            model = _model_with_objects()
            return str(model._default_manager.order_by("pk").values_list("pk", flat=True).first()) if model else object_id
        own_value = _field_value(route, name=name, object_id=object_id)
        if own_value is not None:
            return own_value
        base = re.sub(r"_?(id|pk)$", "", name)
        own = route.model_admin.model._meta.model_name if route.model_admin else ""
        if base and base not in ("object", own) and related.get(base) and object_id != UNKNOWN_ID:
            return related[base]
        return object_id

    return "/admin/" + PARAMETER.sub(value, text)


def _field_value(route: AdminRoute, *, name: str, object_id: str) -> str | None:
    """For a parameter named after a field of the ModelAdmin's model (a report job's ``kind``),
    that field's value on the object."""
    # ``object_id`` is Django's name for the object's key, whatever fields the model has (an
    # audit event's ``object_id`` is the id of what it records).
    if route.model_admin is None or object_id in ("", UNKNOWN_ID) or name in ("object_id", "pk", "id"):
        return None
    model = route.model_admin.model
    field = next((f for f in model._meta.concrete_fields if f.name == name and not f.primary_key), None)
    if field is None or field.is_relation:
        return None
    value = model._default_manager.filter(pk=object_id).values_list(name, flat=True).first()
    return None if value in (None, "") else str(value)


def _uuid_named(name: str) -> str | None:
    """A stored value of a UUID field called ``name`` (a person's ``reference``), preferring
    the models the admin shows."""
    from django.db.models import UUIDField

    models = [ma.model for ma in admin.site._registry.values()] + list(apps.get_models())
    for model in models:
        for field in model._meta.get_fields():
            if isinstance(field, UUIDField) and field.name == name:
                value = model._default_manager.exclude(**{name: None}).values_list(name, flat=True).first()
                if value:
                    return str(value)
    return None


def _model_with_objects():
    for model_admin in admin.site._registry.values():
        if model_admin.model._default_manager.exists():
            return model_admin.model
    return None


def related_ids() -> dict[str, str]:
    """The id of one object of every model that has one, by model name (``erasurestep``), for
    a custom view's parameter named after another model (``<int:erasurestep_id>``)."""
    ids = {}
    for model in apps.get_models():
        pk = model._default_manager.order_by("pk").values_list("pk", flat=True).first()
        if pk is not None:
            ids[model._meta.model_name] = str(pk)
    return ids
