"""The browser suite's fixtures: Debian's Chromium driven by Playwright against a live server.

Playwright cannot download its own browsers here, so it launches the system's ``chromium``.
Without one the suite is skipped with the reason, except under CI (``CI`` set), where a
missing browser is a failure: ``.ci/run`` installs it, so its absence is a broken set-up,
not a reason to pass.

Every page records what the browser itself complains about (console errors, Content-
Security-Policy refusals, uncaught exceptions, server errors of any sub-request), so a test
can fail on a script the admin's CSP blocks even when the page looks right.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

CHROMIUM = shutil.which("chromium")
PASSWORD = "browser-Test-password-1"  # test-only account on a throw-away database
DESKTOP = {"width": 1400, "height": 900}


def pytest_collection_modifyitems(config, items):
    if CHROMIUM is not None or os.environ.get("CI"):
        return
    skip = pytest.mark.skip(reason="no `chromium` on PATH (apt-get install chromium): the browser tests drive the "
                                   "system's Chromium")
    for item in items:
        if item.get_closest_marker("browser"):
            item.add_marker(skip)


@pytest.fixture(scope="package")
def _playwright() -> Iterator[object]:
    """Playwright for this package only.

    Its sync API keeps an asyncio loop running in the test's thread (on a greenlet), which
    Django's guard against ORM calls from async code takes for an async context. The browser
    tests' own ORM calls are plain synchronous code between browser calls, so the guard is
    lifted while Playwright runs and restored when the package is done: the rest of the
    suite runs with neither the loop nor the lifted guard.
    """
    if CHROMIUM is None:
        pytest.fail("CI is set but there is no `chromium` on PATH: .ci/run installs it with apt-get before make test")
    from playwright.sync_api import sync_playwright

    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            yield playwright
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture(scope="package")
def browser(_playwright):
    # --no-sandbox: CI runs as root in a container, where Chromium's sandbox cannot start.
    browser = _playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
    yield browser
    browser.close()


@dataclass
class Problems:
    """What the browser reported while a page was open."""

    console_errors: list[str] = field(default_factory=list)
    csp_violations: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    server_errors: list[str] = field(default_factory=list)

    def all(self) -> list[str]:
        return [*self.csp_violations, *self.console_errors, *self.page_errors, *self.server_errors]

    def clear(self) -> None:
        for bucket in (self.console_errors, self.csp_violations, self.page_errors, self.server_errors):
            bucket.clear()


# Chromium reports what the Content-Security-Policy blocked as "Refused to load/execute/apply …"
# or, in recent versions, "… violates the following Content Security Policy directive …".
CSP_REFUSAL = re.compile(r"Refused to (load|execute|apply|connect|frame|evaluate|create)|"
                         r"violates the following Content Security Policy", re.IGNORECASE)
# Chromium also logs every 4xx/5xx answer as a console error "Failed to load resource"; those
# are judged from the responses themselves (below), where a 404 asked for on purpose or a
# form answered 400 with its errors is told apart from a missing script.
FAILED_LOAD = re.compile(r"^Failed to load resource: the server responded with a status of \d+")


def watch(page, problems: Problems) -> None:
    def on_console(message):
        text = message.text
        if CSP_REFUSAL.search(text):
            problems.csp_violations.append(f"{page.url}: {text}")
        elif message.type == "error" and not FAILED_LOAD.search(text):
            problems.console_errors.append(f"{page.url}: {text}")

    def on_response(response):
        if response.status >= 500:
            problems.server_errors.append(f"{response.status} {response.request.method} {response.url}")
        elif (response.status >= 400 and response.request.resource_type != "document"
              and not response.url.endswith("/favicon.ico")):
            # A script, a style sheet, an image or a poll the page needs and did not get.
            problems.server_errors.append(f"{response.status} {response.request.resource_type} {response.url}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: problems.page_errors.append(f"{page.url}: {error}"))
    page.on("response", on_response)


@pytest.fixture
def problems() -> Problems:
    return Problems()


@pytest.fixture
def context(browser):
    context = browser.new_context(viewport=DESKTOP, accept_downloads=True)
    context.set_default_timeout(20_000)
    yield context
    context.close()


@pytest.fixture
def page(context, problems):
    page = context.new_page()
    watch(page, problems)
    return page


def make_dpo(*, username: str = "dpo-browser"):
    """A DPO who can log in to the admin: staff, in the ``dpo`` group, and a superuser, as
    ``manage.py ensure_local_admin`` makes the local DPO (the role groups carry no Django
    model permissions; the admin's pages are the DPO's)."""
    from django.contrib.auth import get_user_model

    from governance import services

    user = get_user_model().objects.create_user(username=username, password=PASSWORD, is_staff=True,
                                                is_superuser=True)
    services.user_ensure_with_role(username=username, role="dpo")
    return user


def log_in(page, live_server, *, username: str) -> None:
    page.goto(f"{live_server.url}/admin/login/?next=/admin/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    with page.expect_navigation():
        page.locator("form").locator("[type=submit]").first.click()
    assert "/admin/login/" not in page.url, f"login failed: {page.inner_text('body')[:500]}"


@pytest.fixture
def dpo(transactional_db):
    return make_dpo()


@pytest.fixture
def dpo_page(page, live_server, dpo, problems):
    """A browser page logged in to the admin as a DPO."""
    log_in(page, live_server, username=dpo.username)
    problems.clear()
    return page
