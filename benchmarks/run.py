"""`make bench`: run every benchmarks/bench_*.py on PostgreSQL, print a table, write JSON.

The database is BENCH_DATABASE_URL (default: a `privacy_ledger_bench` database on the
local PostgreSQL), created and migrated if needed. BENCH_SCALE shrinks every size
(e.g. 0.1 for a quick look); BENCH_ONLY=name runs the modules whose name contains it.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/privacy_ledger_bench"


def _ensure_database(url: str) -> None:
    if not url.startswith(("postgres://", "postgresql://")):
        return
    import psycopg2
    from dj_database_url import parse

    cfg = parse(url)
    conn = psycopg2.connect(
        dbname="postgres", user=cfg["USER"], password=cfg["PASSWORD"], host=cfg["HOST"], port=cfg["PORT"] or 5432
    )
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", [cfg["NAME"]])
        if cur.fetchone() is None:
            cur.execute(f'CREATE DATABASE "{cfg["NAME"]}"')
    conn.close()


def main() -> int:
    url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL)
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DEBUG", "1")
    os.environ.pop("CELERY_BROKER_URL", None)  # benchmarks call services; the Celery path is measured explicitly
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    _ensure_database(url)

    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    from benchmarks.harness import BenchContext, bench_scale

    ctx = BenchContext(scale=bench_scale(), vendor=connection.vendor)
    only = os.environ.get("BENCH_ONLY", "")
    modules = sorted(p.stem for p in (ROOT / "benchmarks").glob("bench_*.py") if only in p.stem)
    results = []
    failed: list[str] = []
    print(f"benchmarks on {connection.vendor} ({connection.settings_dict['NAME']}), scale {ctx.scale}")
    for name in modules:
        module = importlib.import_module(f"benchmarks.{name}")
        started = time.monotonic()
        print(f"-- {name} ...", flush=True)
        try:
            module_results = module.run(ctx)
        except Exception as exc:  # one broken benchmark must not hide the others' figures
            failed.append(name)
            print(f"   FAILED: {type(exc).__name__}: {exc}", flush=True)
            continue
        for result in module_results:
            results.append(result)
            verdict = {True: "meets", False: "MISSES", None: ""}[result.meets_target()]
            print(
                f"   {result.name}: {result.value:.4g} {result.unit} vs {result.baseline} "
                f"{result.baseline_value:.4g} -> ratio {result.ratio:.3f} (target {result.target}) {verdict}"
                + (f"  [{result.note}]" if result.note else ""),
                flush=True,
            )
        print(f"   ({time.monotonic() - started:.1f} s)")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    payload = {
        "scale": ctx.scale,
        "vendor": ctx.vendor,
        "failed": failed,
        "results": [
            {k: r.as_dict()[k] for k in ("name", "value", "unit", "baseline", "baseline_value", "ratio", "target")}
            | {"note": r.note}
            for r in results
        ],
    }
    (out / "latest.json").write_text(json.dumps(payload, indent=2))
    print(f"\n{'benchmark':<60} {'ratio':>8}  target")
    for r in results:
        print(f"{r.name:<60} {r.ratio:>8.3f}  {r.target}")
    print(f"wrote {out / 'latest.json'}")
    if failed:
        print(f"failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
