"""The server's URLs plus `GET /bench/probe`: the asyncio task count of daphne's event loop.

The server exposes no task count of its own; the leak check needs one. The view
runs in Django's sync thread and counts the tasks from inside the reactor's loop.
"""

import asyncio
import threading

from django.http import JsonResponse
from django.urls import path

from chatproj.urls import urlpatterns as server_urlpatterns


async def _count_tasks() -> int:
    return len(asyncio.all_tasks()) - 1  # less this one


def probe(request):
    from twisted.internet import reactor

    loop = reactor._asyncioEventloop
    tasks = asyncio.run_coroutine_threadsafe(_count_tasks(), loop).result(10)
    return JsonResponse({"tasks": tasks, "threads": threading.active_count()})


urlpatterns = [path("bench/probe", probe), *server_urlpatterns]
