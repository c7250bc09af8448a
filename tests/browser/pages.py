"""Opening an admin page in the browser and reading it as a person would."""

from __future__ import annotations

import re
from dataclasses import dataclass

from playwright.sync_api import Error as PlaywrightError

# What Django's and the project's error pages say; none of it belongs on a working page.
ERROR_PAGE = re.compile(r"Server Error \(500\)|Traceback \(most recent call last\)|Exception Value:|"
                        r"TemplateSyntaxError|TemplateDoesNotExist|NoReverseMatch|VariableDoesNotExist")
# A decimal number standing on its own (not part of a version, an address or a hash).
DECIMAL = re.compile(r"(?<![\w./-])-?\d+\.\d+(?:[eE][-+]?\d+)?(?![\w.]|\d)")
RAW_JSON = re.compile(r"\{\s*\"|\[\s*\{\s*\"|\[\s*\[\s*-?\d")


@dataclass
class Visit:
    url: str
    status: int
    content_type: str
    text: str  # the visible text of an HTML page, "" for a download

    @property
    def is_download(self) -> bool:
        return "html" not in self.content_type


def significant_digits(number: str) -> int:
    mantissa = re.split(r"[eE]", number.lstrip("-"))[0]
    digits = mantissa.replace(".", "").lstrip("0")
    return len(digits)


def long_numbers(text: str, *, limit: int = 4) -> list[str]:
    """Decimal numbers printed with more than ``limit`` significant digits (``2.9945933710672854``,
    an AUC to 16 digits, seconds with microseconds); integers (counts, ids, years) are not
    rounded, so they are not looked at."""
    return [m[0] for m in DECIMAL.finditer(text) if significant_digits(m[0]) > limit]


def raw_json(text: str) -> list[str]:
    """Snippets of visible text that are JSON as a machine wrote it (an object, a list of
    objects or a list of number pairs such as an RDP or ROC curve)."""
    return [text[max(0, m.start() - 30):m.start() + 60].replace("\n", " ") for m in RAW_JSON.finditer(text)]


def open_page(page, url: str) -> Visit:
    """Navigate like a person clicking a link; a download (a PDF, a CSV) is fetched with the
    same session instead, since a browser does not render it."""
    try:
        response = page.goto(url, wait_until="load")
    except PlaywrightError as exc:
        if "Download is starting" not in str(exc):
            raise
        response = page.request.get(url)
        return Visit(url, response.status, response.headers.get("content-type", ""), "")
    content_type = response.headers.get("content-type", "") if response else ""
    text = page.inner_text("body") if "html" in content_type else ""
    return Visit(url, response.status if response else 0, content_type, text)


def status_without_redirect(page, url: str) -> int:
    """The status the server answers for ``url`` itself (a redirect is not followed), with the
    page's session."""
    return page.request.get(url, max_redirects=0).status
