"""The client's checks of an export: a cut or mislabelled download never becomes a training file.

The server is a real HTTP server on 127.0.0.1 answering fixed bytes and headers, standing in
for a proxy that cut the stream or a misrouted request; the ledger's own export is exercised
by the end-to-end and MLflow tests.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from privacy_ledger_client import LedgerClient, LedgerIntegrityError
from privacy_ledger_client.errors import error_from_body
from privacy_ledger_client.merkle import content_hash, merkle_root, schema_sha256

ROWS = [{"record_id": 1, "x": 0.5, "y": 1}, {"record_id": 2, "x": -1.25, "y": 0}]
SCHEMA = {"features": [{"name": "x", "type": "float"}], "label": {"name": "y", "type": "int"}}
ROOT = merkle_root((r["record_id"], content_hash({"x": r["x"]}, r["y"])) for r in ROWS)


class _Answer:
    body = b""
    headers: dict[str, str] = {}


def _handler(answer: _Answer):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            if self.path.startswith("/api/v1/snapshots/7/export/"):
                self.send_response(200)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)
            elif self.path.startswith("/api/v1/snapshots/7/"):
                self._json({"id": 7, "dataset": 3})
            elif self.path.startswith("/api/v1/datasets/3/"):
                self._json({"id": 3, "schema": SCHEMA})
            else:
                self.send_error(404)

        def _json(self, data):
            body = json.dumps(data).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    return Handler


@pytest.fixture
def server() -> Iterator[tuple[str, _Answer]]:
    answer = _Answer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(answer))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}", answer
    finally:
        httpd.shutdown()
        httpd.server_close()


def _jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _headers(*, snapshot="7", records="2", root=ROOT, schema=SCHEMA) -> dict[str, str]:
    return {"X-Ledger-Snapshot": snapshot, "X-Ledger-Merkle-Root": root, "X-Ledger-Amendment": "0",
            "X-Ledger-Records": records, "X-Ledger-Schema": schema_sha256(schema)}


def test_a_complete_export_is_written_with_the_ledgers_metadata(server, tmp_path):
    url, answer = server
    answer.body, answer.headers = _jsonl(ROWS), _headers()
    export = LedgerClient(url, "key").export_snapshot(7, "jsonl", tmp_path)
    assert export.path == tmp_path / "snapshot-7.jsonl" and export.path.read_bytes() == answer.body
    assert (export.merkle_root, export.records, export.amendment) == (ROOT, 2, 0)


def test_a_download_with_fewer_rows_than_announced_leaves_no_file(server, tmp_path):
    url, answer = server
    answer.body, answer.headers = _jsonl(ROWS[:1]), _headers(records="2")
    with pytest.raises(LedgerIntegrityError, match="holds 1 rows but the ledger counted 2"):
        LedgerClient(url, "key").export_snapshot(7, "jsonl", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_an_export_of_another_snapshot_is_refused(server, tmp_path):
    url, answer = server
    answer.body, answer.headers = _jsonl(ROWS), _headers(snapshot="8")
    with pytest.raises(LedgerIntegrityError) as refused:
        LedgerClient(url, "key").export_snapshot(7, "jsonl", tmp_path)
    assert refused.value.field == "X-Ledger-Snapshot"
    assert list(tmp_path.iterdir()) == []


def test_rows_whose_values_differ_from_the_recorded_ones_fail_the_merkle_check(server):
    """The dataset reader recomputes the root from the values: one altered feature is caught."""
    url, answer = server
    altered = [dict(ROWS[0], x=0.75), ROWS[1]]
    answer.body, answer.headers = _jsonl(altered), _headers()
    client = LedgerClient(url, "key")
    with pytest.raises(LedgerIntegrityError) as refused:
        client.snapshot_dataset(7, verify=True)
    assert refused.value.field == "X-Ledger-Merkle-Root"
    answer.body = _jsonl(ROWS)
    data = client.snapshot_dataset(7, verify=True)
    assert data.features.tolist() == [[0.5], [-1.25]] and data.labels.tolist() == [1, 0]


def test_an_export_under_another_schema_is_refused(server):
    url, answer = server
    answer.body, answer.headers = _jsonl(ROWS), _headers(schema={**SCHEMA, "label": {"name": "y", "type": "bool"}})
    with pytest.raises(LedgerIntegrityError) as refused:
        LedgerClient(url, "key").snapshot_dataset(7)
    assert refused.value.field == "X-Ledger-Schema"


@pytest.mark.parametrize(("body", "field", "detail"), [
    ({"detail": "Over the dataset's budget."}, None, "Over the dataset's budget."),
    ({"batch_size": ["Ensure this value is greater than or equal to 1."]}, "batch_size",
     "Ensure this value is greater than or equal to 1."),
    ({"history": {"0": ["Expected a list of items."]}}, "history[0]", "Expected a list of items."),
    ({"model_spec": {"dropout": ["Too high."]}}, "model_spec.dropout", "Too high."),
])
def test_the_servers_error_shapes_become_detail_and_field(body, field, detail):
    error = error_from_body(400, body, "fallback")
    assert (error.status, error.field, error.detail) == (400, field, detail)
