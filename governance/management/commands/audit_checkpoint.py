from django.core.management.base import BaseCommand, CommandError

from governance.services import ServiceError
from governance.services.audit import audit_checkpoint_write


class Command(BaseCommand):
    help = "Sign the audit chain's head now and append it to the checkpoint file (if the head moved)."

    def handle(self, *args, **options):
        try:
            cp = audit_checkpoint_write(reason="manual")
        except ServiceError as exc:
            raise CommandError(str(exc)) from exc
        if cp is None:
            self.stdout.write("no checkpoint written: the chain is empty or its head is already signed")
            return
        self.stdout.write(f"checkpoint at position {cp.position}, hash {cp.hash}, key {cp.key_id}")
