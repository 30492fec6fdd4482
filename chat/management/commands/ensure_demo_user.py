import os

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from chat import services


class Command(BaseCommand):
    help = "Make sure the demo user (and a first project) exist, and print how to sign in."

    def add_arguments(self, parser):
        parser.add_argument("--username", default=os.environ.get("DEMO_USERNAME", "demo"))
        parser.add_argument("--password", default=os.environ.get("DEMO_PASSWORD", "demo-password"))

    def handle(self, *args, username, password, **options):
        user, created = get_user_model().objects.get_or_create(
            username=username, defaults={"is_staff": True, "is_superuser": True}
        )
        if created:
            user.set_password(password)
            user.save()
            services.project_create(owner=user, name="First project")
        self.stdout.write(self.style.SUCCESS(
            f"Sign in at http://127.0.0.1:8000/ as {username!r} with password {password!r}"
            + ("" if created else " (unless you changed it)")
        ))
