"""The server's URLs plus `GET /bench/probe`, read by the benchmark only: the asyncio task
count of the server's event loop (the leak check), and the raw samples behind two metrics
(each recent stop's message id, the monotonic time it was requested and its stages in ms
since then; how late the lag monitor's timer fired, in ms) for exact percentiles;
`?reset=1` forgets those samples."""

import asyncio
import threading

from django.http import JsonResponse
from django.urls import path

from chatproj.urls import urlpatterns as server_urlpatterns
from streaming import metrics


async def probe(request):
    stops = [{"message_id": message_id, "requested_at": timeline["requested"],
              **{stage: round((at - timeline["requested"]) * 1000, 3) for stage, at in timeline.items()}}
             for message_id, timeline in list(metrics.recent_stops)]
    lags = [round(lag * 1000, 3) for lag in list(metrics.recent_lags)]
    if request.GET.get("reset"):
        metrics.recent_stops.clear()
        metrics.recent_lags.clear()
    return JsonResponse({"tasks": len(asyncio.all_tasks()) - 1,  # less this request's own
                         "threads": threading.active_count(), "stops": stops, "lags": lags})


urlpatterns = [path("bench/probe", probe), *server_urlpatterns]
