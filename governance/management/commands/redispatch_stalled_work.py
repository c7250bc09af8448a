from django.core.management.base import BaseCommand

from governance.dispatch import stalled_work_redispatch


class Command(BaseCommand):
    help = (
        "Send again background work that was recorded but never sent (the broker was down), "
        "sent but never started, or left by a worker that died. Beat runs this every minute."
    )

    def handle(self, *args, **options):
        for name, count in stalled_work_redispatch().items():
            self.stdout.write(f"{name}: {'sweep failed (see the log)' if count < 0 else f'{count} sent again'}")
