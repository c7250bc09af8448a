"""The README's pipeline calls, run verbatim as a new user would: `make demo`, then `make run`,
then the block pasted into a shell.

Everything runs as subprocesses on the embedded default (a SQLite file and `make run`'s
filesystem broker with a real worker process), whatever database and broker the suite itself
was given, in a storage folder of the test's own. The README's block is the script: what a
reader copies is exactly what is checked, so the two cannot drift.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from pypdf import PdfReader

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(
    r"<!-- pipeline: the block below is run verbatim[^>]*-->\n```sh\n(?P<script>.*?)```\n<!-- pipeline: end -->", re.S
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (shutil.which("jq") and shutil.which("curl") and shutil.which("make")) and not os.environ.get("CI"),
        reason="the README's calls need curl, jq and make (CI has them)",
    ),
]


def readme_pipeline() -> str:
    match = BLOCK.search((ROOT / "README.md").read_text())
    assert match, "README.md has no pipeline block between the <!-- pipeline --> markers"
    return match.group("script")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_health(url: str, server: subprocess.Popen, log: Path) -> dict:
    for _ in range(240):
        if server.poll() is not None:
            pytest.fail(f"make run exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:  # noqa: S310 (http://127.0.0.1 only)
                return json.load(answer)
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"make run did not answer {url}:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def local_server(tmp_path_factory):
    """`make demo`, then `make run` on a free port, on the embedded default in a folder of its own."""
    storage = tmp_path_factory.mktemp("readme-pipeline")
    port = _free_port()
    env = {
        key: value for key, value in os.environ.items()
        # The embedded default: no database server, no broker server, the Makefile's DEBUG=1.
        if key not in {"DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "DEBUG", "DJANGO_SETTINGS_MODULE",
                       "CACHE_URL", "CELERY_VISIBILITY_TIMEOUT"}
    }
    # Short leases and sweeps, so the killed-worker test below sees the takeover in seconds.
    env |= {"STORAGE_ROOT": str(storage), "PORT": str(port), "TASK_LEASE_SECONDS": "5", "REDISPATCH_SWEEP_SECONDS": "2"}
    demo = subprocess.run(["make", "demo"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    log = storage / "make-run.log"
    with log.open("w") as out:
        server = subprocess.Popen(["make", "run"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        health = _wait_for_health(f"http://127.0.0.1:{port}/healthz", server, log)
        yield {"env": env, "storage": storage, "port": port, "health": health, "log": log}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def test_make_run_serves_with_a_worker_process_beside_it(local_server):
    assert local_server["health"] == {"status": "ok", "checks": {"database": "up", "broker": "up"}}
    banner = local_server["log"].read_text()
    port = local_server["port"]
    assert f"Admin:   http://127.0.0.1:{port}/admin/" in banner
    assert "tasks run in a worker process beside the server" in banner


def test_readme_pipeline_runs_verbatim_after_the_demo(local_server):
    result = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", readme_pipeline()], cwd=ROOT, env=local_server["env"],
        capture_output=True, text=True, timeout=900,
    )
    output = result.stdout
    assert result.returncode == 0, output[-4000:] + result.stderr[-4000:]
    lines = [line for line in output.splitlines() if line.strip()]

    # The demo's objects came first: the calls use the ids they were given, not the demo's.
    activity = int(re.search(r"^processing activity (\d+)$", output, re.M).group(1))
    assert activity > 1
    assert '{"created":303,"already_present":0}' in lines
    assert '{"allowed":[1],"refused":[0,2]}' in lines
    upload = json.loads(next(line for line in lines if line.startswith('{"dataset":')))
    assert upload["dataset"] > 1 and upload["records_created"] == 600 and upload["subjects"] == 300
    snapshot = json.loads(next(line for line in lines if line.startswith('{"id":') and "included_count" in line))
    # 3 people withdrew: their 6 records are excluded, the other 594 included.
    assert snapshot["included_count"] == 594 and snapshot["excluded_counts"]["withdrawn"] == 6

    # POST /training-runs/ answered 202 before training: the worker, not the request, trains.
    status_line = next(i for i, line in enumerate(lines) if re.fullmatch(r"202 in [0-9.]+ s", line))
    queued = json.loads(lines[status_line + 1])
    assert queued["status"] in ("queued", "running"), queued
    assert re.search(rf"^training run {queued['id']}: succeeded, 5 of 5 epochs$", output, re.M)
    model = json.loads(next(line for line in lines if '"version":1' in line and '"epsilon"' in line))
    assert model["status"] == "active" and 0 < model["epsilon"] <= 3.0 and model["delta"] == 1e-05
    # Two records per patient: the guarantee for a patient is the group bound over two records.
    person = model["for_a_person"]
    assert person["unit"] == "record" and person["max_records_per_person"] == 2
    assert person["epsilon"] == pytest.approx(2 * model["epsilon"])
    assert person["delta"] == pytest.approx(1e-05 * (1 + math.exp(model["epsilon"])))

    # The erasure touched exactly this run's objects, in the worker, and its certificate is a PDF.
    assert '{"records":2,"datasets":1,"snapshots":1,"training_runs":1,"model_versions":1}' in lines
    completed = json.loads(next(line for line in lines if '"status":"completed"' in line))
    assert "erased" in completed["outcome"]
    certificate = Path(re.search(r"^certificate: (.+)$", output, re.M).group(1))
    if not certificate.is_absolute():
        certificate = ROOT / certificate
    assert certificate.is_relative_to(local_server["storage"])
    text = "".join(page.extract_text() for page in PdfReader(certificate).pages)
    assert f"{completed['id']}" in text and "erasure" in text.lower()
    assert json.loads(lines[-1])["ok"] is True


def _api(port: int, key: str, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/{path}", data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Token {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 (http://127.0.0.1 only)
            return json.load(answer)
    except urllib.error.HTTPError as error:
        pytest.fail(f"{path}: {error.code} {error.read().decode()[:2000]}")


def test_a_killed_local_worker_s_training_is_taken_over_by_the_next_worker(local_server):
    """The filesystem broker has no redelivery: the run a killed worker held is re-sent by the
    outbox sweeper (beat, in the next worker) once its lease lapses, and finishes there. Runs
    last in this module: it replaces make run's worker."""
    env, port, storage = local_server["env"], local_server["port"], local_server["storage"]
    key = subprocess.run(
        [".venv/bin/python", "manage.py", "create_api_key", "--user", "killtest", "--role", "ml_engineer"],
        cwd=ROOT, env=env | {"DEBUG": "1"}, capture_output=True, text=True, check=True,
    ).stdout.strip()
    snapshot = _api(port, key, "snapshots/?limit=1")["results"][0]
    run = _api(port, key, "training-runs/", {
        "snapshot": snapshot["id"], "name": "killed-worker", "model_spec": {"hidden_sizes": [256, 256]},
        "epochs": 1000, "batch_size": 32, "target_epsilon": 3.0, "max_grad_norm": 1.0,
    })
    for _ in range(600):
        state = _api(port, key, f"training-runs/{run['id']}/")
        if state["status"] == "running" and (state["progress"] or {}).get("epoch", 0) > 0:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"the run never started: {state}")
    # Every process of make run's worker (the main process, its pool child and beat) dies at once.
    worker_log = f"{storage}/log/worker.log"
    killed = subprocess.run(["pkill", "-KILL", "-f", f"celery -A config .*worker .*{worker_log}"], check=False)
    assert killed.returncode == 0, "make run's worker was not found"
    assert _api(port, key, f"training-runs/{run['id']}/")["status"] == "running"

    successor = subprocess.Popen(
        [".venv/bin/celery", "-A", "config", "worker", "--beat", "--concurrency", "1", "--loglevel", "INFO",
         "--logfile", f"{storage}/log/worker-2.log", "--schedule", f"{storage}/celerybeat-schedule-2"],
        cwd=ROOT, env=env | {"DEBUG": "1", "CELERY_BROKER_URL": "filesystem://"}, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        # No deadline for the whole run (a loaded machine trains slower), only for standing
        # still: the takeover must happen, and training must keep moving after it.
        moved_at, seen = time.monotonic(), None
        while True:
            state = _api(port, key, f"training-runs/{run['id']}/")
            if state["status"] in ("succeeded", "failed", "cancelled"):
                break
            now_at = (state["attempts"], (state["progress"] or {}).get("epoch", 0))
            if now_at != seen:
                moved_at, seen = time.monotonic(), now_at
            assert time.monotonic() - moved_at < 120, f"the run stood still for 2 minutes: {state}"
            time.sleep(0.5)
        assert state["status"] == "succeeded", state
        assert state["attempts"] == 2  # taken over once, not started afresh as a second run
        assert state["progress"]["epoch"] == 1000
        models = _api(port, key, f"models/?training_run={run['id']}")["results"]
        assert len(models) == 1  # one version registered, however many deliveries
    finally:
        os.killpg(successor.pid, signal.SIGKILL)
