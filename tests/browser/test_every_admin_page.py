"""Every admin page, opened once in Chromium as a DPO, on a world with data in every table the
admin shows: no server error, no error page, nothing the browser refuses (CSP) or fails to
run, and an unknown id is a 404 or a redirect, never a 500.

The URLs are not listed here: they are walked from ``admin.site.get_urls()`` and each
ModelAdmin's ``get_urls()``, so a page added later is visited too.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from django.apps import apps
from django.conf import settings
from django.contrib import admin

from tests.browser import world as browser_world
from tests.browser.admin_urls import UNKNOWN_ID, fill, related_ids, routes
from tests.browser.pages import ERROR_PAGE, long_numbers, open_page, raw_json, status_without_redirect

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# Pages of one object are opened for one object of each state the model records (a request
# received, verified, rejected, completed; an audit event of each action; a report done and
# queued), at most this many for a custom view and this many for the change page; for a model
# with no such field, custom views for its two latest objects and Django's pages for one.
STATE_FIELDS = ("status", "action", "kind")
CUSTOM_VIEW_OBJECTS = 6
CHANGE_PAGE_OBJECTS = 40
# An unknown id is answered by "not found", by a redirect with a message (Django's change
# page), or, for a view that only takes POST, by "method not allowed".
UNKNOWN_ID_ANSWERS = {301, 302, 303, 403, 404, 405, 410}


def _object_ids(model_admin: admin.ModelAdmin, *, limit: int) -> list[str]:
    """The latest object of each state (see STATE_FIELDS), up to ``limit``; for a model with
    no state, its ``min(limit, 2)`` latest objects (one for Django's own pages)."""
    model = model_admin.model
    latest_first = model._default_manager.order_by("-pk")
    fields = {f.name for f in model._meta.concrete_fields}
    state = next((name for name in STATE_FIELDS if name in fields), None)
    if state is None:
        return [str(pk) for pk in latest_first.values_list("pk", flat=True)[:min(limit, 2)]]
    by_state: dict[str, str] = {}
    for pk, value in latest_first.values_list("pk", state)[:2000]:
        by_state.setdefault(value, str(pk))
    return list(by_state.values())[:limit]


def _allowed(route, *, user) -> bool:
    """Whether the DPO may open this standard page (an add or delete page the ModelAdmin
    refuses is only checked for its 403, not rendered)."""
    request = _request_as(user)
    own = route.route.removeprefix(f"{route.model_admin.model._meta.app_label}/{route.model_admin.model._meta.model_name}/")
    if own == "add/":
        return route.model_admin.has_add_permission(request)
    if own.endswith("/delete/"):
        return route.model_admin.has_delete_permission(request)
    return True


def _urls_to_visit(*, user) -> tuple[list[str], list[str], list[str]]:
    """(pages to open in the browser, pages whose answer alone is checked, pages of the unknown id).

    A page of one object is opened for an object of each state the model records, as the
    page differs by state (the steps a request offers, the details an audit event shows);
    history and delete pages for one object."""
    related = related_ids()
    rendered, answered, unknown = [], [], []
    for route in routes():
        if route.model_admin is None:
            url = fill(route, object_id="")
            if url is not None:
                rendered.append(url)
            continue
        if route.parameters:
            limit = CUSTOM_VIEW_OBJECTS if route.is_custom else CHANGE_PAGE_OBJECTS if route.route.endswith(
                "/change/") else 1
            urls = [fill(route, object_id=pk, related=related) for pk in _object_ids(route.model_admin, limit=limit)]
            unknown.append(fill(route, object_id=UNKNOWN_ID, related=related))
        else:
            urls = [fill(route, object_id="")]
        # <id>/ only redirects to <id>/change/; a refused add or delete page only answers 403.
        checked_only = route.route.endswith("<path:object_id>/") or not _allowed(route, user=user)
        (answered if checked_only else rendered).extend(urls)
    return [list(dict.fromkeys(u for u in urls if u)) for urls in (rendered, answered, unknown)]


def test_every_admin_page_opens_without_an_error(dpo_page, dpo, live_server, celery_worker, problems):
    browser_world.build(dpo=dpo)
    known, answered, unknown = _urls_to_visit(user=dpo)
    # Enough pages to mean something: every model's list and change page at least.
    assert len(known) > 2 * len(admin.site._registry), known

    errors: list[str] = []
    unreadable: list[str] = []  # the project's own pages: no raw JSON, no long numbers, no Save when read-only
    for path in known:
        problems.clear()
        visit = open_page(dpo_page, live_server.url + path)
        if visit.status >= 500 or ERROR_PAGE.search(visit.text):
            errors.append(f"{path} -> {visit.status}: {visit.text[:200]!r}")
        errors.extend(problems.all())
        if visit.status == 200 and not visit.is_download and _ours(path):
            if json := raw_json(visit.text):
                unreadable.append(f"{path}: raw JSON {json[:2]}")
            if numbers := long_numbers(visit.text):
                unreadable.append(f"{path}: more than 4 significant digits: {_around(visit.text, numbers[0])!r}")
            if "/change/" in path and dpo_page.locator("[name=_save]").count():
                model_admin = next((ma for ma in admin.site._registry.values()
                                    if path.startswith(f"/admin/{ma.model._meta.app_label}/{ma.model._meta.model_name}/")),
                                   None)
                if model_admin is not None and not model_admin.has_change_permission(_request_as(dpo)):
                    unreadable.append(f"{path}: a read-only page with a Save button")

    for path in answered:
        status = status_without_redirect(dpo_page, live_server.url + path)
        if status >= 500:
            errors.append(f"{path} -> {status}")
    for path in unknown:
        status = status_without_redirect(dpo_page, live_server.url + path)
        if status not in UNKNOWN_ID_ANSWERS:
            errors.append(f"{path} (unknown id) -> {status}, expected one of {sorted(UNKNOWN_ID_ANSWERS)}")
    # Nothing matches this path: the admin's catch-all answers, with "not found".
    problems.clear()
    missing = open_page(dpo_page, f"{live_server.url}/admin/no-such-page/{UNKNOWN_ID}/")
    if missing.status not in (302, 404) or ERROR_PAGE.search(missing.text):
        errors.append(f"/admin/no-such-page/ -> {missing.status}")
    errors.extend(_missing_files_answered(dpo_page, live_server))
    errors.extend(problems.all())

    assert not errors, f"{len(errors)} problem(s) on {len(known) + len(answered) + len(unknown)} admin URLs:\n" + "\n".join(errors)
    assert not unreadable, f"{len(unreadable)} page(s) not readable by a person:\n" + "\n".join(unreadable)


def _missing_files_answered(page, live_server) -> list[str]:
    """A certificate and a report whose files were lost from the report store: their
    downloads answer with a message or a 404, never a 500."""
    from governance.models import ReportJob
    from governance.reports import jobs
    from rights.models import ErasureRequest

    downloads = []
    request = ErasureRequest.objects.exclude(certificate_path="").order_by("pk").first()
    if request is not None:
        (Path(settings.REPORT_ROOT) / request.certificate_path).unlink()
        downloads.append(f"/admin/rights/erasurerequest/{request.pk}/certificate/")
    job = ReportJob.objects.filter(status="succeeded").order_by("pk").first()
    if job is not None:
        jobs.report_file_path(job).unlink()
        downloads.append(f"/admin/governance/reportjob/{job.pk}/download/")
    assert len(downloads) == 2, "the world has a certificate and a finished report"
    problems = []
    for path in downloads:
        visit = open_page(page, live_server.url + path)
        if visit.status >= 500 or visit.is_download or ERROR_PAGE.search(visit.text):
            problems.append(f"{path} with its file missing -> {visit.status} {visit.content_type}")
    return problems


def _ours(path: str) -> bool:
    """Whether the page belongs to this project (the dashboard, the site's own pages or one
    of its apps) rather than to a third-party app's admin (django-axes' login records,
    Django's users and groups), whose wording this project does not write: those are held
    to no errors only."""
    parts = path.strip("/").split("/")
    if len(parts) < 2 or parts[1] not in {config.label for config in apps.get_app_configs()}:
        return True
    config = apps.get_app_config(parts[1])
    return Path(config.path).resolve().is_relative_to(Path(settings.BASE_DIR).resolve()) and ".venv" not in config.path


def _around(text: str, needle: str) -> str:
    at = text.find(needle)
    return " ".join(text[max(0, at - 60):at + len(needle) + 20].split())


def _request_as(user):
    from django.test import RequestFactory

    request = RequestFactory().get("/admin/")
    request.user = user
    return request


def test_the_watch_sees_what_the_csp_blocks_and_what_fails_to_load(page, problems):
    """The walk's verdict rests on the browser's complaints being heard: an inline script, an
    inline event handler and a missing script, under a policy like the admin's, are each
    reported (the page is served by the test itself, not by the admin)."""
    policy = "script-src 'self' 'unsafe-eval'; style-src 'self' 'unsafe-inline'"
    body = ("<html><body><script>document.title = 'ran'</script><button onclick=\"x()\">b</button>"
            "<script src='/missing.js'></script></body></html>")
    page.route("http://workspace.test/", lambda route: route.fulfill(
        status=200, headers={"Content-Type": "text/html", "Content-Security-Policy": policy}, body=body))
    page.route("http://workspace.test/missing.js", lambda route: route.fulfill(status=404, body=""))
    page.goto("http://workspace.test/")
    page.click("button")
    assert page.title() != "ran"
    assert len(problems.csp_violations) == 2, problems
    assert problems.server_errors == ["404 script http://workspace.test/missing.js"], problems
