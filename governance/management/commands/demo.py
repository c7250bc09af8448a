"""Run the main job end to end on synthetic data and write every artifact to var/reports/.

Each app contributes a step in ``<app>/demo.py`` exposing ``run(ctx: DemoContext)``;
steps run in the order of ``settings.DEMO_STEPS`` (records, data, training, erasure,
reports) and share the context. The list lives in settings, the composition root, because
this command (in governance, the bottom layer) must not name the apps above it.

At the default verbosity the console gets progress lines and one summary; the log records
(Celery's task lines, OpenLineage's transport notice, warnings) go to var/log/demo.log.
``-v 2`` leaves the logs on the console and prints each step's details as it runs.
"""

from __future__ import annotations

import importlib
import logging
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

from django.conf import settings
from django.core.management.base import BaseCommand

from governance.demo_context import DemoContext

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def demo_log_path() -> Path:
    return Path(settings.STORAGE_ROOT) / "log" / "demo.log"


def _writes_to_console(handler: logging.Handler) -> bool:
    # A FileHandler is a StreamHandler too, but keeps its records out of the way already.
    # (Under pytest the capture handlers count as console ones; they come back afterwards.)
    return isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)


@contextmanager
def demo_logging(*, verbosity: int, log_path: Path) -> Iterator[Path | None]:
    """Below verbosity 2, send every log record and warning to ``log_path`` (overwritten)
    instead of the console, until the block ends; yields the file, or None when the logs
    stay on the console.

    Celery's "Task ... succeeded" lines (celery.app.trace), kombu's and OpenLineage's notices
    ("OpenLineageClient will use `file` transport") are all log records that reach the root
    logger's console handler; Django's own "django" logger has a console handler of its own.
    """
    if verbosity >= 2:
        yield None
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    to_file = logging.FileHandler(log_path, mode="w", encoding="utf-8")
    to_file.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    saved: list[tuple[logging.Logger, list[logging.Handler]]] = [(root, root.handlers[:])]
    root.handlers = [to_file]
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if not isinstance(logger, logging.Logger) or not any(_writes_to_console(h) for h in logger.handlers):
            continue
        saved.append((logger, logger.handlers[:]))
        kept = [h for h in logger.handlers if not _writes_to_console(h)]
        # A propagating logger reaches the root's file handler anyway; adding it here too
        # would write its records twice.
        logger.handlers = kept if logger.propagate else [*kept, to_file]
    # Libraries (opacus, torch, numpy) warn through the warnings module, which prints to stderr.
    # Replaced here and put back afterwards, not with logging.captureWarnings: that one does
    # nothing when an earlier caller (Celery's logging set-up) left it on while something else
    # (a warnings.catch_warnings block) has since put the original showwarning back.
    previous_showwarning = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        logging.getLogger("py.warnings").warning("%s", warnings.formatwarning(message, category, filename, lineno, line))

    warnings.showwarning = showwarning
    try:
        yield log_path
    finally:
        warnings.showwarning = previous_showwarning
        for logger, handlers in saved:
            logger.handlers = handlers
        to_file.close()


class Command(BaseCommand):
    help = (
        "Run Privacy Ledger's main job end to end on synthetic data (no server needed). Prints a summary; "
        "-v 2 also prints each step's details and the log, which otherwise goes to var/log/demo.log."
    )

    def add_arguments(self, parser):
        parser.add_argument("--seed", type=int, default=7)

    def handle(self, *args, seed, verbosity, **options):
        settings.REPORT_ROOT.mkdir(parents=True, exist_ok=True)
        steps = _steps()
        with demo_logging(verbosity=verbosity, log_path=demo_log_path()) as log_path:
            ctx = DemoContext(
                seed=seed, out=self.stdout, report_dir=settings.REPORT_ROOT, verbosity=verbosity, log_path=log_path
            )
            ctx.begin(len(steps))
            started = time.monotonic()
            try:
                for module in steps:
                    ctx.heading(_title(module) or module.__name__)
                    module.run(ctx)
            except Exception:
                # The traceback follows on stderr; the log records leading up to it are in the file.
                if log_path is not None:
                    self.stderr.write(f"The demo stopped with an error; its log is in {log_path}")
                raise
            ctx.summary(time.monotonic() - started)


def _steps() -> list[ModuleType]:
    """The step modules of ``settings.DEMO_STEPS`` that exist (an app may have no step)."""
    steps = []
    for module_name in settings.DEMO_STEPS:
        try:
            steps.append(importlib.import_module(module_name))
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
    return steps


def _title(module) -> str:
    """The first paragraph of the step's docstring, on one line (some wrap over two)."""
    return " ".join((module.__doc__ or "").strip().split("\n\n")[0].split())
