"""The DPO's journey through the workspace in Chromium, as issue 16 describes it: log in, see
the overdue request on the dashboard, open it, verify the requester's identity, execute the
erasure behind its confirmation and watch it complete on the page, download the certificate;
log a request received by telephone; read a person page and a model page.

With a broker configured (CI: PostgreSQL, Redis and a real Celery worker) the erasure runs on
the worker while the page polls; without one it runs in-process at the click.

``WORKSPACE_SCREENSHOTS=1`` also writes the screenshots of docs/img/ (dashboard, request page,
model page, 1,400 px wide); other runs leave those files alone.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.conf import settings

from rights.models import ErasureRequest
from rights.selectors import erasure_request_days_left
from tests.browser import world as browser_world
from tests.browser.conftest import DESKTOP
from tests.browser.pages import long_numbers, raw_json
from tests.governance.reports_helpers import pdf_text

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SCREENSHOTS = os.environ.get("WORKSPACE_SCREENSHOTS") == "1"
IMG = Path(settings.BASE_DIR) / "docs" / "img"
PHONE = {"width": 390, "height": 844}
SCREENSHOT_MAX_HEIGHT = 2800
# How long the page may take to show the completed erasure (retraining one small model on
# the worker); a bound on waiting, not a claim about speed.
COMPLETION_TIMEOUT_MS = 120_000


def _path(page) -> str:
    return urlsplit(page.url).path


def _next_step(page, name: str):
    """The visible button of a step (unfold also lists the steps in a menu, hidden until opened)."""
    return page.get_by_role("link", name=re.compile(name)).filter(visible=True).first


def _screenshot(page, name: str, *, height: int | None = None) -> None:
    """The page at 1,400 px wide, ``height`` px tall (default: all of it, up to a limit).

    Taken as a tall viewport rather than Playwright's stitched full page, so the theme's
    fixed sidebar and sticky bars sit where a person sees them, not across the middle."""
    if not SCREENSHOTS:
        return
    full = page.evaluate("document.documentElement.scrollHeight")
    page.set_viewport_size({"width": DESKTOP["width"], "height": min(height or full, SCREENSHOT_MAX_HEIGHT)})
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(IMG / f"workspace-{name}.png"))
    page.set_viewport_size(DESKTOP)


def _readable(page, what: str) -> str:
    text = page.inner_text("body")
    assert not raw_json(text), f"{what} shows raw JSON: {raw_json(text)[:3]}"
    assert not long_numbers(text), f"{what} prints numbers with more than 4 significant digits: {long_numbers(text)[:5]}"
    return text


def test_dpo_journey(dpo_page, dpo, live_server, celery_worker, problems):
    page = dpo_page
    world = browser_world.build(dpo=dpo)
    request_id = world.overdue.pk

    # The dashboard says one request is overdue, and the count opens the list of it.
    page.goto(f"{live_server.url}/admin/")
    overdue_card = page.get_by_role("link", name=re.compile(r"^\s*Overdue\b"))
    assert re.search(r"\b1\b", overdue_card.inner_text()), overdue_card.inner_text()
    _screenshot(page, "dashboard", height=1500)
    overdue_card.click()
    page.wait_for_load_state()
    # Django's admin answers a filter it does not know with the whole list and ?e=1.
    assert "e=1" not in page.url.split("?")[-1].split("&"), f"the Overdue link lands on an unfiltered list: {page.url}"
    listed = page.locator("#result_list tbody tr")
    assert listed.count() == 1, page.inner_text("#result_list")
    assert "OVERDUE" in listed.first.inner_text().upper()
    listed.first.get_by_role("link", name=f"Request {request_id}").click()
    page.wait_for_load_state()
    assert _path(page) == f"/admin/rights/erasurerequest/{request_id}/change/", page.url
    summary = page.locator("#request-summary").inner_text().upper()  # labels are set in capitals
    # How many days overdue depends on today's date (month lengths, weekends): the deadline
    # rules' own count, not a constant (a constant failed after midnight on a month's turn).
    overdue_days = -erasure_request_days_left(erasure_request=world.overdue)
    assert overdue_days > 0
    assert f"OVERDUE BY {overdue_days} DAY" in summary and "RECEIVED" in summary and "DEADLINE" in summary, summary

    # Verify, choosing the method used.
    _next_step(page, "Verify the identity").click()
    page.select_option("select[name=method]", label="Confirmation link sent to the e-mail address on file")
    page.get_by_role("button", name="Record the verification").click()
    page.wait_for_load_state()
    assert "identity verified" in page.inner_text("body").lower()
    assert ErasureRequest.objects.get(pk=request_id).verification_method.startswith("Confirmation link")

    # Execute: the confirmation restates the impact, including the model to retrain.
    _next_step(page, "Execute the erasure").click()
    confirmation = page.inner_text("body")
    assert f"{world.model_version.name} v{world.model_version.version}" in confirmation, confirmation[:2000]
    page.get_by_role("button", name="Erase now").click()
    page.wait_for_load_state()
    assert "Tick the box" in page.inner_text("body")  # not executed without the confirmation
    assert ErasureRequest.objects.get(pk=request_id).status == "verified"
    page.check("input[name=confirm]")
    page.get_by_role("button", name="Erase now").click()
    page.wait_for_load_state()
    assert _path(page) == f"/admin/rights/erasurerequest/{request_id}/change/", page.url
    body = page.inner_text("body")
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url) if frame == page.main_frame else None)
    if settings.CELERY_EMBEDDED:
        assert "erasure completed" in body, body[:1500]
    else:
        # The click came back while the worker was still erasing: the browser was not held.
        assert "runs in the background" in body, body[:1500]
    # The timeline updates itself until the request is completed, without reloading the page.
    progress = page.locator("#erasure-progress")
    progress.get_by_text("Completed", exact=False).first.wait_for(timeout=COMPLETION_TIMEOUT_MS)
    assert navigations == [], navigations
    assert ErasureRequest.objects.get(pk=request_id).status == "completed"
    page.reload()
    steps = page.locator("#erasure-timeline li")
    assert steps.count() >= 8, page.inner_text("#erasure-progress")
    timeline = page.inner_text("#erasure-timeline")
    assert "Failed" not in timeline and "Waiting" not in timeline, timeline
    _screenshot(page, "request")

    # The certificate: a PDF naming the request.
    with page.expect_download() as download_info:
        page.locator("#request-summary").get_by_role("link", name=re.compile("Download the certificate")).click()
    content = Path(download_info.value.path()).read_bytes()
    assert content.startswith(b"%PDF")
    text = pdf_text(content)
    assert re.search(rf"\brequest {request_id}\b", text, re.IGNORECASE), text[:500]
    assert world.identifier not in text

    # A request received by telephone, logged from the list.
    page.goto(f"{live_server.url}/admin/rights/erasurerequest/")
    _next_step(page, "Log a request").click()
    page.fill("input[name=identifier]", "caller.0142@example.org")
    page.select_option("select[name=channel]", label="Telephone")
    page.select_option("select[name=ground]", value="17_1_c")
    page.fill("textarea[name=notes]", "Call taken by the front desk.")
    page.get_by_role("button", name="Log the request").click()
    page.wait_for_load_state()
    logged = ErasureRequest.objects.order_by("-pk").first()
    assert logged.pk != request_id and logged.channel == "phone", (logged.pk, logged.channel)
    assert _path(page) == f"/admin/rights/erasurerequest/{logged.pk}/change/", page.url
    body = page.inner_text("body")
    assert f"Request {logged.pk} logged" in body and "Telephone" in body, body[:1500]
    assert "caller.0142" not in body  # pseudonymised on save, never shown again

    # The DPO's steps are the admin's "Recent actions" on the dashboard (verify, execute, log).
    page.goto(f"{live_server.url}/admin/")
    recent = page.locator("#recent-actions-module").inner_text().lower()
    assert f"request {request_id}" in recent and f"request {logged.pk}" in recent, recent

    # A person page, found by identifier, and the model holding them, reached by its link.
    page.goto(f"{live_server.url}/admin/rights/erasurerequest/person/")
    page.fill("input[name=identifier]", world.neighbour_identifier)
    page.get_by_role("button", name="Look up").click()
    page.wait_for_load_state()
    assert "/person/" in page.url and world.neighbour_identifier not in page.inner_text("body"), page.url
    person = _readable(page, "the person page")
    assert world.dataset.name in person, person[:2000]
    model_links = page.get_by_role("link", name=re.compile(rf"^{re.escape(world.model_version.name)} v\d+"))
    # The person is in the version trained first and in the one retrained after the erasure.
    versions = {int(re.search(r"v(\d+)", link.inner_text())[1]): link for link in model_links.all()}
    assert len(versions) >= 2, person[:2000]
    versions[max(versions)].click()
    page.wait_for_load_state()
    assert re.search(r"/mlops/modelversion/\d+/change", page.url), page.url
    model = _readable(page, "the model page")
    assert "ε" in model, model[:2000]
    _screenshot(page, "model")
    page.goto(f"{live_server.url}/admin/mlops/modelversion/{world.model_version.pk}/change/")
    _readable(page, "the model page of the version trained first")

    assert not problems.all(), "\n".join(problems.all())


def test_request_list_at_390_px_shows_the_deadline(browser, live_server, dpo, transactional_db):
    """On a phone the request list keeps each request's deadline in view (unfold stacks a row's
    cells, each with its column's name), or lets the table scroll sideways to it."""
    from governance import display
    from tests.browser.conftest import Problems, log_in, watch

    world = browser_world.build(dpo=dpo, full=False)
    context = browser.new_context(viewport=PHONE)
    try:
        page = context.new_page()
        problems = Problems()
        watch(page, problems)
        log_in(page, live_server, username=dpo.username)
        page.goto(f"{live_server.url}/admin/rights/erasurerequest/")
        found = page.locator("#result_list").evaluate(
            """(table) => {
                const headers = Array.from(table.tHead.rows[0].cells);
                const column = headers.findIndex((th) => /deadline/i.test(th.textContent));
                if (column < 0) return {state: "no deadline column"};
                const cell = table.tBodies[0].rows[0].cells[column];
                const inView = (box) => box.width > 0 && box.height > 0 && box.left >= 0
                    && box.right <= window.innerWidth;
                let box = cell.getBoundingClientRect();
                if (inView(box)) return {state: "in view", text: cell.innerText};
                for (let node = cell.parentElement; node; node = node.parentElement) {
                    const overflow = getComputedStyle(node).overflowX;
                    if ((overflow === "auto" || overflow === "scroll") && node.scrollWidth > node.clientWidth) {
                        node.scrollLeft = node.scrollWidth;
                        box = cell.getBoundingClientRect();
                        return {state: inView(box) ? "scrolls into view" : "off-screen", text: cell.innerText};
                    }
                }
                return {state: "off-screen", text: cell.innerText};
            }"""
        )
        assert found["state"] in ("in view", "scrolls into view"), f"at 390 px the deadline is {found}"
        assert display.moment(world.overdue.effective_due_at) in found["text"], found
        assert not problems.all(), "\n".join(problems.all())
    finally:
        context.close()
