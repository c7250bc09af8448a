"""HTTP hardening: nesting, body and query-string limits answered as JSON, every /api/ error JSON,
the security headers (CSP, Permissions-Policy, Cache-Control), the admin login lockout and a
health check that works whatever Host the container's probe sends."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.http import FileResponse, HttpResponse
from django.test import Client, RequestFactory, override_settings

ACTIVITIES = "/api/v1/processing-activities/"


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# --- nesting ----------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_deeply_nested_json_is_a_400_naming_the_limit(dpo_client, depth):
    response = dpo_client.post(ACTIVITIES, data=_nested(depth), content_type="application/json")
    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    assert "the limit is 64" in response.json()["detail"]


@pytest.mark.django_db
def test_deep_nesting_is_refused_by_the_records_upload_too(dpo_client):
    from provenance import services
    from provenance.models import DataRecord
    from tests.provenance.helpers import SCHEMA, activity

    dataset = services.dataset_create(name="nesting", owner="ml", processing_activity=activity(), schema=SCHEMA)
    body = '[{"subject": "a@example.org", "features": ' + '{"x": ' * 2_000 + "1" + "}" * 2_000 + "}]"
    response = dpo_client.post(f"/api/v1/datasets/{dataset.pk}/records/", data=body, content_type="application/json")
    assert response.status_code == 400, response.content
    assert "the limit is 64" in response.json()["detail"]
    assert not DataRecord.objects.filter(dataset=dataset).exists()


@pytest.mark.django_db
def test_nesting_up_to_the_limit_reaches_validation(dpo_client):
    response = dpo_client.post(ACTIVITIES, data=_nested(64), content_type="application/json")
    assert response.status_code == 400
    assert "nested" not in str(response.json())  # an ordinary validation error, not the limit


def test_brackets_inside_strings_do_not_count_as_nesting():
    from governance.api.parsers import json_depth

    assert json_depth(b'{"a": "[[[[{{{{", "b": [1, "]]]\\"[["]}') == 2
    assert json_depth(b'{"a": "[[[[{{{{", "b": [1, "]]]"]}') == 2  # no escaped quote: the fast path
    assert json_depth(b'["\\\\", [[1]]]') == 3  # an escaped backslash, then a real closing quote
    assert json_depth(b"42") == 0
    assert json_depth(_nested(70).encode()) == 70


# --- body, query string and field limits --------------------------------------------------------


@pytest.mark.django_db
@override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=1_000)
def test_a_body_over_the_upload_limit_is_a_json_413_naming_the_limit(dpo_client):
    body = '{"name": "' + "x" * 2_000 + '"}'
    response = dpo_client.post(ACTIVITIES, data=body, content_type="application/json")
    assert response.status_code == 413
    assert "1000 bytes" in response.json()["detail"]
    assert "DATA_UPLOAD_MAX_MEMORY_SIZE" in response.json()["detail"]


@pytest.mark.django_db
def test_a_query_string_over_the_limit_is_a_json_414(dpo_client):
    response = dpo_client.get(ACTIVITIES + "?name=" + "x" * 5_000)
    assert response.status_code == 414
    assert "the limit is 4096" in response.json()["detail"]


@pytest.mark.django_db
def test_too_many_query_parameters_is_a_json_400_naming_the_limit(dpo_client):
    response = dpo_client.get(ACTIVITIES + "?" + "&".join(["a=1"] * 1_001))
    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    assert "DATA_UPLOAD_MAX_NUMBER_FIELDS" in response.json()["detail"]


@pytest.mark.django_db
@override_settings(ALLOWED_HOSTS=["ledger.example.org"])
def test_a_disallowed_host_on_the_api_is_a_json_400():
    response = Client().get(ACTIVITIES, HTTP_HOST="evil.example.com")
    assert response.status_code == 400
    assert "evil.example.com" in response.json()["detail"]


def test_a_server_error_under_the_api_is_json_and_elsewhere_html():
    from config.views import error_500

    factory = RequestFactory()
    api = error_500(factory.get("/api/v1/processing-activities/"))
    assert api.status_code == 500 and api["Content-Type"] == "application/json"
    page = error_500(factory.get("/admin/"))
    assert page.status_code == 500 and page["Content-Type"].startswith("text/html")


@pytest.mark.django_db
def test_an_unknown_api_path_is_a_json_404(dpo_client):
    response = dpo_client.get("/api/v2/nothing/")
    assert response.status_code == 404
    assert response.json()["detail"]


# --- headers ------------------------------------------------------------------------------------


def _inline_blocks(html: str, tag: str) -> list[str]:
    """The contents of <tag> elements with no src attribute (inline code)."""
    return re.findall(rf"<{tag}(?![^>]*\bsrc=)[^>]*>(.*?)</{tag}>", html, flags=re.S)


def _assert_page_runs_under_its_policy(response) -> int:
    """Checks the page against its own policy; returns how many inline styles it allowed."""
    policy = response["Content-Security-Policy"]
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";") if part.strip())
    assert "'unsafe-inline'" not in policy and "'unsafe-eval'" not in policy
    assert directives["script-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    html = response.content.decode()
    assert _inline_blocks(html, "script") == [], "an inline script the policy would block"
    assert not re.search(r"<[^>]+\son\w+=", html), "an inline event handler the policy would block"
    styles = _inline_blocks(html, "style")
    for block in styles:
        digest = base64.b64encode(hashlib.sha256(block.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in directives["style-src"], f"inline style not allowed: {block!r}"
    return len(styles)


def _assert_admin_page_runs_under_its_policy(response) -> None:
    """The admin's policy (config.middleware.AdminCspMiddleware): scripts only from this site,
    never inline, no event-handler attributes; 'unsafe-eval' for Alpine.js expressions and
    inline styles for the theme — nothing else relaxed."""
    policy = response["Content-Security-Policy"]
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";") if part.strip())
    assert directives["script-src"] == "'self' 'unsafe-eval'"
    assert directives["style-src"] == "'self' 'unsafe-inline'"
    assert directives["frame-ancestors"] == "'none'" and directives["object-src"] == "'none'"
    html = response.content.decode()
    assert _inline_blocks(html, "script") == [], "an inline script the policy would block"
    assert not re.search(r"<[^>]+\son\w+=", html), "an inline event handler the policy would block"


@pytest.mark.django_db
def test_admin_pages_run_under_the_content_security_policy(client, dpo_client):
    login = client.get("/admin/login/")
    assert login.status_code == 200
    _assert_admin_page_runs_under_its_policy(login)
    client.force_login(get_user_model().objects.create_superuser("dpo-admin", "dpo@example.org", "pw"))
    for path in ("/admin/", "/admin/auth/user/", "/admin/governance/processingactivity/",
                 "/admin/governance/processingactivity/add/", "/admin/axes/accessattempt/"):
        page = client.get(path)
        assert page.status_code == 200, path
        _assert_admin_page_runs_under_its_policy(page)
    # The relaxation stops at the admin: the API keeps the strict policy.
    api = dpo_client.get(ACTIVITIES)
    assert "'unsafe-eval'" not in api["Content-Security-Policy"]
    assert "'unsafe-inline'" not in api["Content-Security-Policy"]


@pytest.mark.django_db
def test_swagger_ui_runs_under_the_content_security_policy(dpo_client):
    page = dpo_client.get("/api/docs/")
    assert page.status_code == 200
    assert _assert_page_runs_under_its_policy(page) == 1  # Swagger UI's <style>, by its hash
    (script,) = re.findall(r'<script src="([^"]*\?[^"]*script[^"]*)"', page.content.decode())
    init = dpo_client.get(script.replace("&amp;", "&"))
    assert init.status_code == 200
    assert init["Content-Type"].startswith("application/javascript")
    assert "SwaggerUIBundle" in init.content.decode()


@pytest.mark.django_db
def test_every_response_has_a_permissions_policy(client, dpo_client):
    for response in (client.get("/admin/login/"), dpo_client.get(ACTIVITIES), client.get("/healthz")):
        assert "camera=()" in response["Permissions-Policy"]
        assert "geolocation=()" in response["Permissions-Policy"]


@pytest.mark.django_db
def test_api_answers_and_downloads_are_never_cached(client, dpo_client, anon_client):
    for response in (
        dpo_client.get(ACTIVITIES),
        dpo_client.get("/api/v1/consent-events/"),
        dpo_client.get("/api/v1/erasure-requests/"),
        dpo_client.get("/api/v1/reports/ropa.csv"),
        anon_client.get(ACTIVITIES),  # errors too
    ):
        assert "no-store" in response["Cache-Control"], response.request["PATH_INFO"]
    assert "Content-Disposition" in dpo_client.get("/api/v1/reports/ropa.csv")


@pytest.mark.django_db
def test_downloads_outside_the_api_are_never_cached(tmp_path):
    """The admin's certificate and report downloads are FileResponses outside /api/."""
    from config.middleware import ResponseHeadersMiddleware

    pdf = tmp_path / "certificate.pdf"
    pdf.write_bytes(b"%PDF-1.4")
    request = RequestFactory().get("/admin/rights/erasurerequest/1/certificate/")
    for download in (
        lambda _: FileResponse(open(pdf, "rb"), as_attachment=True, filename="c.pdf"),  # noqa: SIM115
        lambda _: HttpResponse(b"a,b", headers={"Content-Disposition": 'attachment; filename="x.csv"'}),
    ):
        response = ResponseHeadersMiddleware(download)(request)
        assert "no-store" in response["Cache-Control"]
        response.close()
    page = ResponseHeadersMiddleware(lambda _: HttpResponse("<html></html>"))(request)
    assert not page.has_header("Cache-Control")


# --- admin login lockout ------------------------------------------------------------------------


def _login(client: Client, password: str):
    return client.post("/admin/login/?next=/admin/", {"username": "dpo-admin", "password": password})


@pytest.mark.django_db
def test_admin_login_locks_out_after_five_wrong_passwords_until_a_dpo_resets_it():
    get_user_model().objects.create_superuser("dpo-admin", "dpo@example.org", "right-password")
    client = Client()
    for _ in range(6):
        assert _login(client, "wrong").status_code in (200, 429)
    locked = _login(client, "right-password")
    assert locked.status_code == 429
    assert "_auth_user_id" not in client.session
    # Another address is not locked out for the same user (lockout is per username and address).
    elsewhere = Client(REMOTE_ADDR="203.0.113.9")
    assert _login(elsewhere, "right-password").status_code == 302

    call_command("axes_reset_username", "dpo-admin")
    assert _login(client, "right-password").status_code == 302
    assert client.session["_auth_user_id"]


# --- health check -------------------------------------------------------------------------------


@pytest.mark.django_db
@override_settings(ALLOWED_HOSTS=["ledger.example.org"])
def test_healthz_answers_the_containers_probe_whatever_its_host():
    client = Client()
    probe = client.get("/healthz", HTTP_HOST="127.0.0.1:8000")
    assert probe.status_code == 200
    assert probe.json()["status"] == "ok"
    # Only /healthz: every other page still refuses a Host that is not allowed.
    assert client.get("/admin/login/", HTTP_HOST="127.0.0.1:8000").status_code == 400


@pytest.mark.django_db
def test_a_login_without_a_peer_address_is_recorded_without_one(client):
    """force_login (and any in-process login) has no REMOTE_ADDR: axes stores NULL, which an
    ``inet`` column on PostgreSQL takes, where made-up text was a DataError."""
    from axes.models import AccessLog

    client.force_login(get_user_model().objects.create_superuser("dpo-admin", "dpo@example.org", "pw"))
    assert AccessLog.objects.get(username="dpo-admin").ip_address is None
    assert client.get("/admin/").status_code == 200
