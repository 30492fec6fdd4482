"""`make run`'s user: `demo` / `demo-password` (or DEMO_USERNAME / DEMO_PASSWORD), staff, with a first project."""

import os

from django.core.management.base import BaseCommand

from chat import services


class Command(BaseCommand):
    help = "Make sure the demo user (and a first project) exist, and print how to sign in."

    def add_arguments(self, parser):
        parser.add_argument("--username", default=os.environ.get("DEMO_USERNAME", "demo"))
        parser.add_argument("--password", default=os.environ.get("DEMO_PASSWORD", "demo-password"))
        parser.add_argument("--url", default="http://127.0.0.1:8000/", help="where the server answers")

    def handle(self, *args, username, password, url, **options):
        created = services.user_ensure(username=username, password=password, staff=True)
        self.stdout.write(self.style.SUCCESS(
            f"Sign in at {url} as {username!r} with password {password!r}" + ("" if created else " (unless you changed it)")
        ))
