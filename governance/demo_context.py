"""What the demo steps share: a seed, an output stream, the report folder and results."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class DemoContext:
    seed: int
    out: Any
    report_dir: Path
    # Objects a later step needs from an earlier one (e.g. "processing_activity", "subjects").
    shared: dict[str, Any] = field(default_factory=dict)
    artifacts: list[tuple[str, Path]] = field(default_factory=list)
    facts: list[tuple[str, str]] = field(default_factory=list)

    def heading(self, text: str) -> None:
        self.out.write(f"\n== {text}")

    def say(self, text: str) -> None:
        self.out.write(f"   {text}")

    def fact(self, label: str, value: Any) -> None:
        self.facts.append((label, str(value)))
        self.say(f"{label}: {value}")

    def artifact(self, label: str, path: Path) -> None:
        self.artifacts.append((label, Path(path)))
        self.say(f"wrote {label}: {path}")

    def summary(self, seconds: float) -> None:
        self.out.write(f"\n== Summary (demo took {seconds:.1f} s)")
        for label, value in self.facts:
            self.out.write(f"   {label}: {value}")
        if self.artifacts:
            self.out.write("   Artifacts:")
            for label, path in self.artifacts:
                self.out.write(f"     {label}: {path}")
        else:
            self.out.write("   No artifacts were produced.")
