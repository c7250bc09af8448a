import sys

from django.core.management.base import BaseCommand

from provenance.integrity import snapshot_verify, snapshots_verify


class Command(BaseCommand):
    help = (
        "Verify snapshots against their records: each leaf recomputed from the record's content, the Merkle "
        "root from the leaves, and the counts. One line per snapshot; exits 1 if any fails."
    )

    def add_arguments(self, parser):
        parser.add_argument("--snapshot", type=int, action="append", default=[], metavar="ID",
                            help="a snapshot to verify (repeatable); default: every snapshot")
        parser.add_argument("--dataset", type=int, metavar="ID", help="only the snapshots of this dataset")

    def handle(self, *args, **options):
        if options["snapshot"]:
            results = [snapshot_verify(snapshot_id=pk) for pk in options["snapshot"]]
            if options["dataset"] is not None:
                results += snapshots_verify(dataset_id=options["dataset"])
        else:
            results = snapshots_verify(dataset_id=options["dataset"])
        for result in results:
            self.stdout.write(result.line())
        failed = sum(not r.ok for r in results)
        if failed:
            self.stderr.write(f"{failed} of {len(results)} snapshot(s) FAILED verification")
            sys.exit(1)
        self.stdout.write(f"{len(results)} snapshot(s) verified")
