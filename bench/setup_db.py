"""`python -m bench.setup_db USERS PROJECTS`: users with PROJECTS projects each and a session each
(no password hashing, no login page), plus a staff user; prints them as JSON. Run with the
server's env. Each phase of a run uses projects of its own, so the history sent upstream with
every prompt (the whole conversation) stays that of the phase."""

import json
import os
import sys

import django


def main(count: int, projects: int) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproj.settings")
    django.setup()
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
    from django.contrib.sessions.backends.db import SessionStore
    from django.db import transaction

    from chat.models import Project

    User = get_user_model()

    def session_for(user) -> str:
        store = SessionStore()
        store[SESSION_KEY] = str(user.pk)
        store[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        store[HASH_SESSION_KEY] = user.get_session_auth_hash()
        store.create()
        return store.session_key

    users = []
    with transaction.atomic():
        for i in range(count):
            user = User.objects.create(username=f"bench{i}", password="!")
            owned = Project.objects.bulk_create([Project(owner=user, name=f"bench {k}") for k in range(projects)])
            users.append({"user": user.pk, "projects": [p.pk for p in owned], "session": session_for(user)})
        staff = User.objects.create(username="bench-staff", password="!", is_staff=True, is_superuser=True)
    print(json.dumps({"users": users, "staff_session": session_for(staff)}))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
