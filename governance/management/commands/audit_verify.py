import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from governance import checkpoints
from governance.audit_anchor import audit_chain_anchored_verify


class Command(BaseCommand):
    help = (
        "Verify the audit log's hash chain and its signed checkpoints; exits non-zero naming the first bad "
        "position. With --checkpoints and --public-key, checks against an auditor's own copies instead of "
        "this deployment's file and keys."
    )

    def add_arguments(self, parser):
        parser.add_argument("--checkpoints", help="A checkpoint file (.jsonl) or the directory holding one.")
        parser.add_argument("--public-key", action="append", default=[],
                            help="A file of trusted public key(s), PEM or base64; repeat for earlier keys.")

    def handle(self, *args, **options):
        lines = None
        if options["checkpoints"]:
            store = checkpoints.CheckpointFile.in_directory(options["checkpoints"])
            if not store.path.is_file():
                raise CommandError(f"--checkpoints: no checkpoint file at {store.path}")
            lines = store.lines()
        public_keys = None
        if options["public_key"]:
            public_keys = []
            for name in options["public_key"]:
                try:
                    public_keys.extend(checkpoints.public_keys_load(Path(name).read_text()))
                except (OSError, checkpoints.CheckpointKeyError) as exc:
                    raise CommandError(f"--public-key {name}: {exc}") from exc
        result = audit_chain_anchored_verify(lines=lines, public_keys=public_keys)
        anchored = (
            f"{result.checkpoints} signed checkpoint(s), the last at position {result.last_checkpoint_position}"
            if result.last_checkpoint_position is not None else "no checkpoint yet"
        )
        if result.ok:
            self.stdout.write(f"audit chain OK: {result.checked} events checked; head {result.head_hash}; {anchored}")
            return
        self.stderr.write(
            f"audit chain BROKEN at position {result.broken_position}: {result.reason} "
            f"({result.checked} events verify as a chain; {anchored})"
        )
        for other in result.problems[1:]:
            self.stderr.write(f"  also: {other}")
        sys.exit(1)
