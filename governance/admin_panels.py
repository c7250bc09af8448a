"""Panels on the workspace's detail pages: tables, charts, linked chains and buttons beside
an admin change form, so a page reads as a page for people rather than a dump of fields.

An admin that derives from ``PanelsAdminMixin`` returns ``Panel`` objects from
``get_panels``; the template ``admin/workspace/panels.html`` renders them above the form.
Charts are drawn by the Chart.js that django-unfold ships (``canvas.chart`` elements are
rendered by unfold's own script), so no page carries a script of its own.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.http import Http404
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

# Brand-neutral colours that read in light and dark mode.
SERIES_COLOURS = ["#2563eb", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#64748b"]


def header(text: str) -> SafeString:
    """A column header or field label kept as written: the admin capitalises the first
    letter of a header, and a capital ε (``Ε``) reads as the Latin letter E."""
    return format_html('<span class="normal-case">{}</span>', text)


def rounded(value: Any, digits: int = 4) -> float | None:
    """A chart value rounded to ``digits`` significant digits (tooltips show the value)."""
    if value is None:
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(x):
        return None
    if x == 0:
        return 0.0
    return round(x, digits - 1 - math.floor(math.log10(abs(x))))


@dataclass
class Series:
    label: str
    values: Sequence[Any]
    kind: str = ""  # "line" or "bar" inside a mixed chart; empty: the chart's kind


@dataclass
class Chart:
    """A Chart.js chart: ``kind`` is "line" or "bar"; ``horizontal`` lays bars along x;
    ``stacked`` stacks the series (a budget spent, in progress and left)."""

    kind: str
    labels: Sequence[Any]
    series: Sequence[Series]
    x_title: str = ""
    y_title: str = ""
    horizontal: bool = False
    stacked: bool = False
    x_max: float | None = None
    height_rem: int = 14

    def data_json(self) -> str:
        datasets = []
        for i, s in enumerate(self.series):
            colour = SERIES_COLOURS[i % len(SERIES_COLOURS)]
            item: dict[str, Any] = {
                "label": s.label, "data": [rounded(v) for v in s.values],
                "borderColor": colour, "backgroundColor": colour,
            }
            if s.kind:
                item["type"] = s.kind
            if (s.kind or self.kind) == "line":
                item.update({"pointRadius": 3, "borderWidth": 2, "fill": False})
            datasets.append(item)
        return json.dumps({"labels": [str(label) for label in self.labels], "datasets": datasets})

    def options_json(self) -> str:
        axis = {"ticks": {"color": "#9ca3af"}, "grid": {"display": False}}
        x: dict[str, Any] = {**axis, "stacked": self.stacked}
        y: dict[str, Any] = {**axis, "stacked": self.stacked, "beginAtZero": True}
        if self.x_title:
            x["title"] = {"display": True, "text": self.x_title, "color": "#9ca3af"}
        if self.y_title:
            y["title"] = {"display": True, "text": self.y_title, "color": "#9ca3af"}
        if self.x_max is not None:
            (x if self.horizontal else y)["max"] = rounded(self.x_max)
        values = [v for s in self.series for v in s.values if v is not None]
        if values and all(float(v).is_integer() for v in values):
            # Counts (decisions, requests): whole-number ticks, never 0.5 of a decision.
            value_axis = x if self.horizontal else y
            value_axis["ticks"] = {**value_axis["ticks"], "precision": 0}
        options: dict[str, Any] = {
            "animation": False, "responsive": True, "maintainAspectRatio": False,
            "plugins": {"legend": {"display": len(self.series) > 1, "position": "bottom",
                                   "labels": {"color": "#9ca3af", "boxWidth": 10}}},
            "scales": {"x": x, "y": y},
        }
        if self.horizontal:
            options["indexAxis"] = "y"
        return json.dumps(options)


@dataclass
class Button:
    """A POST form with one button (a write goes through a service in the view it posts to)."""

    url: str
    label: str
    confirm: str = ""  # shown beside the button: what pressing it does


@dataclass
class Panel:
    title: str
    body: SafeString | str = ""
    chart: Chart | None = None
    caption: str = ""
    buttons: list[Button] = field(default_factory=list)
    wide: bool = False  # spans the page's width (a table of many columns)


def chain(steps: Iterable[SafeString | str]) -> SafeString:
    """Linked steps in order, ``a → b → c``, wrapping on a narrow screen."""
    items = format_html_join(
        mark_safe('<span class="pl-chain-arrow" aria-hidden="true">→</span>'),
        '<span class="pl-chain-step">{}</span>', ((s,) for s in steps),
    )
    return format_html('<div class="pl-chain">{}</div>', items)


def together(links: Iterable[SafeString | str]) -> SafeString:
    """Several items as one step of a chain (two parent datasets are side by side, not in a row)."""
    return format_html_join(", ", "{}", ((link,) for link in links))


def facts(rows: Iterable[tuple[str, Any]]) -> SafeString:
    """A two-column list of label and value (values escaped unless already safe)."""
    body = format_html_join("", "<tr><th scope=\"row\">{}</th><td>{}</td></tr>", rows)
    return format_html('<table class="pl-table pl-facts"><tbody>{}</tbody></table>', body)


def paragraphs(*texts: str) -> SafeString:
    return format_html_join("", "<p>{}</p>", ((t,) for t in texts if t))


class PanelsAdminMixin:
    """Panels above the change form, and a 404 page (not a redirect) for an unknown id."""

    change_form_outer_before_template = "admin/workspace/panels.html"

    def get_panels(self, request, obj) -> list[Panel]:
        return []

    def change_view(self, request, object_id, form_url="", extra_context=None):
        obj = self.get_object(request, object_id)
        panels = self.get_panels(request, obj) if obj is not None else []
        extra = {"workspace_panels": panels, **(extra_context or {})}
        return super().change_view(request, object_id, form_url, extra_context=extra)

    def _get_obj_does_not_exist_redirect(self, request, opts, object_id):
        # Django redirects to the index with a message; a page for something that does not
        # exist is a 404, the same answer as for a wrong URL.
        raise Http404(f"No {opts.verbose_name} with id {object_id!r}.")

