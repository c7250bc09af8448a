#!/usr/bin/env python3
"""Verify Privacy Ledger audit-chain checkpoints with the public key alone.

Needs Python 3.11+ and the `cryptography` package, not the database, Django or the
signing key. An auditor (or the holder of an erasure certificate) checks:

1. that each checkpoint is signed by the controller's audit key:
     verify_audit_checkpoint.py --public-key audit.pub --checkpoint '{"position": ..., "signature": ...}'
     verify_audit_checkpoint.py --public-key audit.pub --checkpoints audit-checkpoints.jsonl
2. that the audit chain still reaches every checkpoint with the signed hash (not cut, not
   rewritten), given an export of the chain: the `results` of every page of
   GET /api/v1/audit-events/ (files of pages, a JSON array, or JSON lines), or fetched directly:
     verify_audit_checkpoint.py --public-key audit.pub --checkpoint cert.json --chain page1.json page2.json
     verify_audit_checkpoint.py --public-key audit.pub --checkpoints cps.jsonl --api https://ledger/api/v1 --token KEY

Exit status: 0 when everything verifies, 1 when a problem is found (printed with the first
bad position), 2 when the input cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from governance import checkpoints  # noqa: E402 (Django-free: hashing and signatures only)


def _read_events(paths: list[str]) -> list[dict]:
    events: list[dict] = []
    for name in paths:
        text = Path(name).read_text(encoding="utf-8")
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        if isinstance(data, dict):
            data = data.get("results", [])
        events.extend(data)
    return sorted(events, key=lambda e: e["position"])


def _fetch_events(api: str, token: str) -> list[dict]:
    if not api.startswith(("https://", "http://")):
        raise ValueError("--api must be an http(s) URL")
    url = api.rstrip("/") + "/audit-events/?limit=1000&offset=0"
    events: list[dict] = []
    while url:
        request = urllib.request.Request(  # noqa: S310 (scheme checked above)
            url, headers={"Authorization": f"Token {token}", "Accept": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
            page = json.load(response)
        events.extend(page["results"])
        url = page.get("next")
    return events


def _read_checkpoint_lines(args: argparse.Namespace) -> list[str]:
    lines: list[str] = []
    for value in args.checkpoint:
        path = Path(value)
        text = path.read_text(encoding="utf-8") if not value.lstrip().startswith("{") and path.exists() else value
        lines.append(json.dumps(json.loads(text)))
    for name in args.checkpoints:
        lines.extend(checkpoints.CheckpointFile.in_directory(name).lines())
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--public-key", action="append", required=True,
                        help="File of trusted public key(s), PEM or base64 lines; repeat for earlier keys.")
    parser.add_argument("--checkpoint", action="append", default=[],
                        help="One checkpoint: its JSON (as printed on a certificate) or a file holding it.")
    parser.add_argument("--checkpoints", action="append", default=[], help="A checkpoint file (.jsonl) or its directory.")
    parser.add_argument("--chain", nargs="+", default=[], help="Export of the audit chain (API pages or JSON lines).")
    parser.add_argument("--api", help="Fetch the chain from this API base URL (…/api/v1) instead.")
    parser.add_argument("--token", help="API key (auditor role) for --api.")
    parser.add_argument("--every", type=int, default=0,
                        help="Report a missing checkpoint past this many events plus the same again (the deployment's "
                             "AUDIT_CHECKPOINT_EVERY_EVENTS); 0: do not check.")
    args = parser.parse_args(argv)
    try:
        keys = []
        for name in args.public_key:
            keys.extend(checkpoints.public_keys_load(Path(name).read_text(encoding="utf-8")))
        lines = _read_checkpoint_lines(args)
        if not lines:
            parser.error("give at least one --checkpoint or --checkpoints")
        events = _fetch_events(args.api, args.token or "") if args.api else _read_events(args.chain)
    except (OSError, ValueError, KeyError, checkpoints.CheckpointKeyError) as exc:
        print(f"cannot read the input: {exc}", file=sys.stderr)
        return 2

    problems: list[tuple[int | None, str]] = []
    if args.api or args.chain:
        length, hash_at, (broken, why) = checkpoints.chain_rows_verify(events)
        if broken is not None:
            problems.append((broken, f"the exported chain is broken at position {broken}: {why}"))
        report = checkpoints.checkpoints_verify(
            lines=lines, public_keys=keys, head_position=length, hash_at=hash_at,
            every_events=args.every, slack_events=args.every,
        )
        scope = f"a chain of {length} events"
    else:
        # Signatures only: no chain to hold the checkpoints against.
        report = checkpoints.CheckpointReport()
        for number, line in enumerate(lines, start=1):
            try:
                cp = checkpoints.checkpoint_parse(line)
            except ValueError as exc:
                problems.append((None, f"checkpoint {number} is not a valid checkpoint ({exc})."))
                continue
            report.checkpoints += 1
            why = checkpoints.checkpoint_signature_problem(cp, keys)
            if why:
                problems.append((cp.position, f"the checkpoint at position {cp.position} is not valid: {why}."))
            else:
                report.last_position = max(report.last_position or 0, cp.position)
        scope = "their signatures only (no chain given)"
    problems.extend(report.problems)
    problems.sort(key=lambda p: (p[0] is None, p[0] or 0))
    if problems:
        print(f"BROKEN at position {problems[0][0]}: {problems[0][1]}")
        for _, other in problems[1:]:
            print(f"  also: {other}")
        return 1
    print(f"OK: {report.checkpoints} checkpoint(s) verify against {scope}; last position {report.last_position}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
