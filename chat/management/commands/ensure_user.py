"""Create the first user of a deployment (compose's init service), if it does not exist yet."""

import os

from django.core.management.base import BaseCommand, CommandError

from chat import services


class Command(BaseCommand):
    help = "Make sure a user exists (a staff superuser with a first project); its password is left alone if it does."

    def add_arguments(self, parser):
        parser.add_argument("--username", default=os.environ.get("FIRST_USER_NAME", ""))
        parser.add_argument("--password-from-env", default="FIRST_USER_PASSWORD", metavar="VARIABLE",
                            help="the environment variable holding the password (never on the command line)")
        parser.add_argument("--not-staff", action="store_true", help="an ordinary user, without the admin")

    def handle(self, *args, username, password_from_env, not_staff, **options):
        password = os.environ.get(password_from_env, "")
        if not username or len(password) < 8:
            raise CommandError(f"Set FIRST_USER_NAME (or --username) and {password_from_env} (8 characters or more).")
        created = services.user_ensure(username=username, password=password, staff=not not_staff)
        self.stdout.write(f"User {username!r} {'created' if created else 'already exists'}.")
