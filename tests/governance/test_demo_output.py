"""What `manage.py demo` prints (issue 17, "A noisy demo").

At the default verbosity: progress lines and one summary on stdout, nothing on stderr, and the
log records (Celery's "Task ... succeeded", OpenLineage's transport notice) in var/log/demo.log,
which the summary names. At -v 2 the logs stay on the console and each step's details print.

The real demo runs once, as a subprocess on a SQLite file and a storage folder of its own
(embedded Celery, as `make demo` runs it): in-process it would commit hundreds of rows and
audit events into the session's test database, which later tests count and verify. The -v 2
routing is checked in-process on a one-step fake demo, which costs no database at all.
"""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import types
import warnings
from pathlib import Path

import pytest
from django.core.management import call_command

from governance.demo_context import DemoContext
from governance.management.commands.demo import demo_logging

ROOT = Path(__file__).resolve().parents[2]
SUMMARY = "== Demo summary"
# How the noise looked before: log records printed by the console handler, one per line.
LOG_LINE = re.compile(
    r"^(Task [\w.]+\[[0-9a-f-]+\] (succeeded|raised)|No hostname was supplied|OpenLineageClient will use"
    r"|AUDIT_SIGNING_KEY is not set|\S+ (INFO|WARNING|ERROR|DEBUG) )",
    re.M,
)


def _manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    storage = tmp_path_factory.mktemp("demo-storage")
    env = {
        **os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "DEBUG": "1", "STORAGE_ROOT": str(storage),
        "DATABASE_URL": f"sqlite:///{storage / 'demo.sqlite3'}", "CELERY_BROKER_URL": "",
    }
    env.pop("CELERY_RESULT_BACKEND", None)
    migrated = _manage("migrate", "--noinput", "-v", "0", env=env)
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    done = _manage("demo", env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done, storage


def _section(stdout: str, heading: str) -> list[str]:
    """The indented lines under ``heading`` in the summary, up to the next blank line."""
    lines = stdout.split(SUMMARY, 1)[1].splitlines()
    start = lines.index(heading)
    section = []
    for line in lines[start + 1:]:
        if not line.startswith("   "):
            break
        section.append(line)
    return section


@pytest.mark.slow
def test_the_summary_is_printed_once_and_no_figure_twice(demo_run):
    stdout = demo_run[0].stdout
    assert stdout.count(SUMMARY) == 1
    summary = stdout.split(SUMMARY, 1)[1]
    figures = [line for line in summary.splitlines() if line.startswith("   ")]
    assert len(figures) > 20, summary
    for line in figures:
        assert stdout.count(line) == 1, f"printed more than once: {line!r}"
    # The steps' titles head their figures in the summary; the details (-v 2) are not printed.
    assert "\nGovernance: roles, an Art. 30 record" in summary
    assert "\n== Governance" not in stdout
    assert "role users:" not in stdout


@pytest.mark.slow
def test_no_log_lines_reach_the_console_at_the_default_verbosity(demo_run):
    done, _ = demo_run
    assert not LOG_LINE.findall(done.stdout), done.stdout
    assert done.stderr == "", done.stderr


@pytest.mark.slow
def test_the_logs_go_to_the_file_the_summary_names(demo_run):
    done, storage = demo_run
    log_path = storage / "log" / "demo.log"
    assert f"Log: {log_path} " in done.stdout
    log = log_path.read_text()
    assert re.search(r"INFO celery\.app\.trace: Task mlops\.train_model\[[0-9a-f-]+\] succeeded", log), log[:2000]
    assert "OpenLineageClient will use `file` transport" in log


@pytest.mark.slow
def test_every_file_the_summary_lists_exists(demo_run):
    done, storage = demo_run
    listed = _section(done.stdout, "Files written:")
    paths = [Path(line.rpartition(": ")[2]) for line in listed]
    assert len(paths) >= 10, listed  # lineage, manifest, certificates, refusal, DPIA, RoPA, model card
    for path in paths:
        assert path.is_absolute() and path.is_file() and path.stat().st_size > 0, path
        assert storage in path.parents


@pytest.mark.slow
def test_training_and_erasure_show_a_few_progress_lines(demo_run):
    stdout = demo_run[0].stdout
    progress = stdout.split(SUMMARY, 1)[0]
    assert "   training the DP model … epoch 3/3" in progress
    assert "   training the SISA ensemble (3 shards) … epoch 6/6" in progress
    assert "   answering erasure requests … 4/4" in progress
    # Not a terminal: the first and the last report of each task, no '\r' rewriting.
    assert "\r" not in stdout
    assert len([line for line in progress.splitlines() if line.startswith("   ")]) <= 6


# --- The switch, without a demo run ------------------------------------------------------------------


@pytest.fixture
def console() -> io.StringIO:
    """A console handler on the root logger, as settings.LOGGING gives it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    yield stream
    root.removeHandler(handler)


def test_below_verbosity_2_log_records_and_warnings_go_to_the_file(console, tmp_path):
    trace = logging.getLogger("celery.app.trace")
    log_path = tmp_path / "log" / "demo.log"
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        with demo_logging(verbosity=1, log_path=log_path) as named:
            trace.warning("Task mlops.train_model[1] succeeded in 0.1s")
            warnings.warn("a library's warning", UserWarning, stacklevel=1)
    assert named == log_path
    assert console.getvalue() == ""
    log = log_path.read_text()
    assert "WARNING celery.app.trace: Task mlops.train_model[1] succeeded" in log
    assert "a library's warning" in log
    # The console handler is back afterwards.
    trace.warning("after the demo")
    assert "after the demo" in console.getvalue()


def test_at_verbosity_2_the_logs_stay_on_the_console(console, tmp_path):
    log_path = tmp_path / "log" / "demo.log"
    with demo_logging(verbosity=2, log_path=log_path) as named:
        logging.getLogger("openlineage.client.client").warning("OpenLineageClient will use `file` transport")
    assert named is None
    assert "OpenLineageClient will use" in console.getvalue()
    assert not log_path.exists()


@pytest.fixture
def fake_demo(settings, tmp_path, monkeypatch):
    """`manage.py demo` with one step that logs, says, counts, writes a file and reports progress."""
    step = types.ModuleType("fake_demo_step", "Fake: one step of every kind of output.")

    def run(ctx: DemoContext) -> None:
        logging.getLogger("celery.app.trace").warning("Task fake.task[0] succeeded in 0.1s")
        ctx.say("a detail only -v 2 shows")
        ctx.fact("a figure", 42)
        for epoch in range(4):
            ctx.progress("training … epoch", epoch, 3)
        path = ctx.report_dir / "fake.txt"
        path.write_text("x")
        ctx.artifact("a file", path)

    step.run = run
    monkeypatch.setitem(sys.modules, "fake_demo_step", step)
    settings.DEMO_STEPS = ("fake_demo_step", "no_such_demo_step_module")
    settings.STORAGE_ROOT = tmp_path
    settings.REPORT_ROOT = tmp_path / "reports"
    return tmp_path


def test_the_command_at_verbosity_1_prints_the_summary_only(fake_demo, console):
    out = io.StringIO()
    call_command("demo", stdout=out)
    text = out.getvalue()
    log_path = fake_demo / "log" / "demo.log"
    assert text.startswith(f"Privacy Ledger demo: 1 step on synthetic data (seed 7); its log goes to {log_path}")
    assert "a detail only -v 2 shows" not in text
    assert "== Fake" not in text
    assert text.count("a figure: 42") == 1
    assert f"   a file: {fake_demo / 'reports' / 'fake.txt'}" in text
    assert "   training … epoch 0/3\n   training … epoch 3/3\n" in text
    assert "epoch 1/3" not in text
    assert "Task fake.task" not in console.getvalue()
    assert "Task fake.task[0] succeeded" in log_path.read_text()
    assert f"Log: {log_path}" in text


def test_the_command_at_verbosity_2_prints_the_details_and_the_logs(fake_demo, console):
    out = io.StringIO()
    call_command("demo", stdout=out, verbosity=2)
    text = out.getvalue()
    assert "\n== Fake: one step of every kind of output.\n   a detail only -v 2 shows\n" in text
    assert text.count(SUMMARY) == 1
    assert text.count("a figure: 42") == 1
    assert "Task fake.task[0] succeeded" in console.getvalue()
    assert "Log:" not in text
    assert not (fake_demo / "log" / "demo.log").exists()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_rewrites_one_line():
    from django.core.management.base import OutputWrapper

    out = _Terminal()
    ctx = DemoContext(seed=1, out=OutputWrapper(out), report_dir=Path("."))
    for done in range(4):
        ctx.progress("training … epoch", done, 3)
    ctx.progress("training … epoch", 3, 3)  # a last poll that found nothing new
    text = out.getvalue()
    assert text.count("\r") == 4
    assert text.endswith("\r   training … epoch 3/3\x1b[K\n")
    assert text.count("\n") == 1


def test_verbosity_0_prints_no_progress_and_no_details():
    from django.core.management.base import OutputWrapper

    out = io.StringIO()
    ctx = DemoContext(seed=1, out=OutputWrapper(out), report_dir=Path("."), verbosity=0)
    ctx.begin(1)
    ctx.heading("Step")
    ctx.say("detail")
    ctx.progress("training", 1, 1)
    assert out.getvalue() == ""
