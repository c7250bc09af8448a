from django.core.management.base import BaseCommand, CommandError

from governance import services
from governance.roles import ALL_ROLES


class Command(BaseCommand):
    help = "Create an API key for a user (created if needed) with a role; prints the key once."

    def add_arguments(self, parser):
        parser.add_argument("--user", required=True, help="Username; created when it does not exist.")
        parser.add_argument("--role", required=True, choices=ALL_ROLES)
        parser.add_argument("--name", default="", help="A label for the key, e.g. the pipeline using it.")
        parser.add_argument("--days", type=int, default=None, help="Lifetime in days (default: API_KEY_DEFAULT_LIFETIME_DAYS).")

    def handle(self, *args, user, role, name, days, **options):
        from datetime import timedelta

        from django.utils import timezone

        if days is not None and days <= 0:
            raise CommandError("--days must be a positive number of days.")
        try:
            account = services.user_ensure_with_role(username=user, role=role, actor="create_api_key")
        except services.ServiceError as exc:
            raise CommandError(str(exc)) from exc
        expires_at = timezone.now() + timedelta(days=days) if days else None
        api_key, raw_key = services.api_key_create(user=account, name=name, expires_at=expires_at, actor="create_api_key")
        self.stderr.write(
            f"API key for {account.username} (role {role}), expires {api_key.expires_at:%Y-%m-%d}. "
            "It is shown once; send it as 'Authorization: Token <key>'."
        )
        self.stdout.write(raw_key)
