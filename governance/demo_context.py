"""What the demo steps share: a seed, an output stream, the report folder and results.

Output has three kinds, so that the default run prints one summary and nothing twice:
``fact`` (a key figure) and ``artifact`` (a file written) are kept for the summary at the
end; ``say`` (a detail) is printed as it happens, and only at ``-v 2``; ``progress`` keeps
one line moving during the long steps (training, erasure).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.core.management.base import OutputWrapper


@dataclass
class DemoContext:
    seed: int
    out: OutputWrapper  # the command's stdout
    report_dir: Path
    verbosity: int = 1
    # Where the logs went at verbosity < 2, named in the summary; None when on the console.
    log_path: Path | None = None
    # Objects a later step needs from an earlier one (e.g. "processing_activity", "subjects").
    shared: dict[str, Any] = field(default_factory=dict)
    artifacts: list[tuple[str, Path]] = field(default_factory=list)
    # (step title, label, value): the summary groups the figures by the step that found them.
    facts: list[tuple[str, str, str]] = field(default_factory=list)
    _step: str = ""
    _progress_last: tuple[str, int] | None = None  # the last (label, done) shown
    _progress_open: bool = False  # a '\r' line is on the terminal and needs its newline

    def begin(self, steps: int) -> None:
        """Say what runs and where the log goes, before the first (silent) step."""
        if self.verbosity >= 1:
            where = f"; its log goes to {self.log_path}" if self.log_path is not None else ""
            plural = "" if steps == 1 else "s"
            self.out.write(f"Privacy Ledger demo: {steps} step{plural} on synthetic data (seed {self.seed}){where}")

    def heading(self, text: str) -> None:
        """Start a step: its title heads its figures in the summary, and its details at -v 2."""
        self._step = text
        self._end_progress()
        if self.verbosity >= 2:
            self.out.write(f"\n== {text}")

    def say(self, text: str) -> None:
        """A detail of the step, printed at once at -v 2 and not at all otherwise."""
        if self.verbosity >= 2:
            self._end_progress()
            self.out.write(f"   {text}")

    def fact(self, label: str, value: Any) -> None:
        """A key figure, printed once, in the summary."""
        self.facts.append((self._step, label, str(value)))

    def artifact(self, label: str, path: Path) -> None:
        """A file the demo wrote, listed in the summary."""
        self.artifacts.append((label, Path(path)))

    def progress(self, label: str, done: int, total: int) -> None:
        """Show that a long task moves: ``label done/total`` on one line.

        On a terminal (at the default verbosity) the line is rewritten in place with '\\r'.
        Anywhere else every line stays, so only the first and the last report of a task are
        written; and at -v 2 log lines share the console, which a '\\r' line would garble.
        """
        if self.verbosity < 1:
            return
        done = max(0, min(done, total))
        if (label, done) == self._progress_last:  # a poll that found nothing new
            return
        line = f"   {label} {done}/{total}"
        finished = done >= total
        if self.verbosity == 1 and self.out.isatty():
            self.out.write(f"\r{line}\x1b[K", ending="")
            self._progress_open = True
            if finished:
                self._end_progress()
            else:
                self.out.flush()
        elif self._progress_last is None or label != self._progress_last[0] or finished:
            self.out.write(line)
        self._progress_last = (label, done)

    def summary(self, seconds: float) -> None:
        self._end_progress()
        self.out.write(f"\n== Demo summary ({seconds:.1f} s, seed {self.seed})")
        step = None
        for title, label, value in self.facts:
            if title != step:
                step = title
                self.out.write(f"\n{title}")
            self.out.write(f"   {label}: {value}")
        if self.artifacts:
            self.out.write("\nFiles written:")
            for label, path in self.artifacts:
                self.out.write(f"   {label}: {path}")
        else:
            self.out.write("\nNo files were written.")
        if self.log_path is not None:
            self.out.write(f"\nLog: {self.log_path} (run with -v 2 to see the log and each step's details here)")

    def _end_progress(self) -> None:
        if self._progress_open:
            self.out.write("")
            self._progress_open = False
