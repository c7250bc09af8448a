from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_schema_generates_without_warnings(tmp_path):
    out = tmp_path / "schema.yaml"
    env = {**os.environ, "DEBUG": "1"}
    result = subprocess.run(
        [sys.executable, "manage.py", "spectacular", "--fail-on-warn", "--validate", "--file", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    schema = yaml.safe_load(out.read_text())
    assert schema["openapi"].startswith("3.")
    assert "ApiKeyAuth" in schema["components"]["securitySchemes"]
    assert any(path.startswith("/api/v1/") for path in schema["paths"])


@pytest.mark.django_db
def test_schema_and_docs_need_authentication(client, dpo_client):
    assert client.get("/api/schema/").status_code in (401, 403)
    assert dpo_client.get("/api/schema/").status_code == 200
    page = dpo_client.get("/api/docs/")
    assert page.status_code == 200
    # Swagger UI is served from the sidecar package, not a CDN: every script and stylesheet
    # the page loads is a local path.
    html = page.content.decode()
    assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', html)
    assert assets, "the page loads no scripts or stylesheets"
    assert all(asset.startswith("/") and not asset.startswith("//") for asset in assets), assets


@pytest.mark.django_db
def test_docs_send_a_browser_without_login_to_the_login_page(client):
    page = client.get("/api/docs/")
    assert page.status_code == 302
    assert page["Location"] == "/admin/login/?next=/api/docs/"
    # After logging in there the admin brings the person back to the docs.
    assert client.get(page["Location"]).status_code == 200
    # A client that sent a key gets the API's JSON answer, not a login page.
    wrong_key = client.get("/api/docs/", HTTP_AUTHORIZATION="Token not-a-key")
    assert wrong_key.status_code == 401 and "detail" in wrong_key.json()
    # The schema itself is for programs: still a JSON 401.
    assert client.get("/api/schema/").status_code == 401


def test_every_operation_documents_its_error_answers():
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    assert schema["components"]["schemas"]["Error"]["type"] == "object"
    operations = [(path, method, op) for path, ops in schema["paths"].items() for method, op in ops.items()]
    assert len(operations) > 50
    for path, method, op in operations:
        responses = op["responses"]
        # Every operation is authenticated, throttled (429) and bounded in its query string (414).
        for code in ("401", "403", "414", "429"):
            assert responses[code]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}, (
                method, path, code)
        if "{" in path:
            assert "404" in responses, (method, path)
        if op.get("requestBody"):
            assert "400" in responses and "413" in responses, (method, path)
        if method != "get":
            assert "409" in responses, (method, path)
