import sys

from django.core.management.base import BaseCommand

from governance.selectors import audit_chain_verify


class Command(BaseCommand):
    help = "Verify the audit log's hash chain; exits non-zero naming the first broken position."

    def handle(self, *args, **options):
        result = audit_chain_verify()
        if result.ok:
            self.stdout.write(f"audit chain OK: {result.checked} events checked; head {result.head_hash}")
            return
        self.stderr.write(
            f"audit chain BROKEN at position {result.broken_position}: {result.reason} "
            f"({result.checked} events verified before it)"
        )
        sys.exit(1)
