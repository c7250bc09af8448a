"""Run the main job end to end on synthetic data and write every artifact to var/reports/.

Each app contributes a step in ``<app>/demo.py`` exposing ``run(ctx: DemoContext)``;
steps run in the order of ``settings.DEMO_STEPS`` (records, data, training, erasure,
reports) and share the context. The list lives in settings, the composition root, because
this command (in governance, the bottom layer) must not name the apps above it.
"""

from __future__ import annotations

import importlib
import time

from django.conf import settings
from django.core.management.base import BaseCommand

from governance.demo_context import DemoContext


class Command(BaseCommand):
    help = "Run Privacy Ledger's main job end to end on synthetic data (no server needed)."

    def add_arguments(self, parser):
        parser.add_argument("--seed", type=int, default=7)

    def handle(self, *args, seed, **options):
        settings.REPORT_ROOT.mkdir(parents=True, exist_ok=True)
        ctx = DemoContext(seed=seed, out=self.stdout, report_dir=settings.REPORT_ROOT)
        started = time.monotonic()
        for module_name in settings.DEMO_STEPS:
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name != module_name:
                    raise
                continue
            ctx.heading(module.__doc__.strip().splitlines()[0] if module.__doc__ else module_name)
            module.run(ctx)
        ctx.summary(time.monotonic() - started)
