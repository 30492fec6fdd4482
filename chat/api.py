"""The HTTP API (docs/protocol.md): thin DRF views over selectors and services."""

from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from django.db import connection
from django.http import HttpResponse, JsonResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from rest_framework import generics, permissions, status
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from streaming.registry import registry

from . import answers, selectors, services
from .errors import MessageAlreadyFinished, NotFound, ServiceError, StopPending
from .models import Message
from .serializers import CancelSerializer, MessageSerializer, ProjectSerializer


class ProjectListCreate(generics.ListCreateAPIView):
    serializer_class = ProjectSerializer

    def get_queryset(self):
        return selectors.project_list(user=self.request.user)

    def perform_create(self, serializer):
        try:
            serializer.instance = services.project_create(owner=self.request.user, name=serializer.validated_data["name"])
        except ServiceError as error:
            raise ValidationError({"name": [str(error)]}) from None


class MessageList(generics.ListAPIView):
    serializer_class = MessageSerializer

    def get_queryset(self):
        project = selectors.project_get(user=self.request.user, project_id=self.kwargs["project_id"])
        return selectors.message_list(project=project)


class ChatCancel(APIView):
    """Stop an answer. Answers carry our fields and, beside them, the original ticket's
    (`success`, `messageId`, `message` or `error`), whose client reads those."""

    def post(self, request, project_id):
        serializer = CancelSerializer(data=request.data)
        if not serializer.is_valid():
            return _cancel_response(status.HTTP_400_BAD_REQUEST, None, error="A message id is required.",
                                    **serializer.errors)
        message_id = serializer.validated_data["message_id"]
        try:
            selectors.message_get(user=request.user, project_id=project_id, message_id=message_id)
            stopped = async_to_sync(answers.stop)(message_id=message_id, reason=Message.CancelReason.USER)
        except NotFound:
            return _cancel_response(status.HTTP_404_NOT_FOUND, message_id, error="Stream not found.",
                                    detail="Not found.")
        except MessageAlreadyFinished as finished:
            return _cancel_response(status.HTTP_409_CONFLICT, message_id, status=finished.status,
                                    error=f"The answer is already {finished.status}.")
        except StopPending as pending:
            # Stored and sent, but the producing process has not confirmed within the wait.
            return _cancel_response(status.HTTP_202_ACCEPTED, message_id, message="Stream cancellation requested.",
                                    status=pending.message.status, reason=Message.CancelReason.USER,
                                    cancel_requested=True, partial_content=pending.message.content)
        return _cancel_response(status.HTTP_200_OK, message_id, message="Stream cancelled successfully.",
                                status=Message.Status.CANCELLED, reason=stopped.event["reason"],
                                partial_content=stopped.event["partial_content"])


def _cancel_response(code: int, answer_id: int | None, **fields) -> Response:
    ids = {"message_id": answer_id, "messageId": answer_id} if answer_id is not None else {}
    return Response({"success": code < 300, **ids, **fields}, status=code)


class VersionSelect(APIView):
    """Show another version of an answer (the one later prompts see)."""

    def post(self, request, project_id, message_id):
        project = selectors.project_get(user=request.user, project_id=project_id)
        try:
            version = services.version_select(project=project, message_id=message_id)
        except NotFound:
            return Response({"detail": "Not found."}, status=status.HTTP_404_NOT_FOUND)
        return Response({"message_id": version.pk, "reply_to": version.reply_to_id, "selected": True})


class StreamList(APIView):
    permission_classes = [permissions.IsAdminUser]

    def get(self, request):
        return Response({"count": registry.active_count(), "streams": registry.stats()})


LOOPBACK = {"127.0.0.1", "::1"}


def metrics(request):
    """Prometheus metrics of this process; for staff, or a scraper on the same host."""
    if request.META.get("REMOTE_ADDR") not in LOOPBACK and not (request.user.is_authenticated and request.user.is_staff):
        return HttpResponse(status=404)
    return HttpResponse(generate_latest(), content_type=CONTENT_TYPE_LATEST)


async def healthz(request):
    checks = {}
    try:
        await sync_to_async(_database_answers)()
        checks["database"] = "ok"
    except Exception as error:  # any failure means unhealthy; the type tells the operator which
        checks["database"] = f"failed: {type(error).__name__}"
    try:
        layer = get_channel_layer()
        await layer.group_add("healthz", "healthz.probe")
        await layer.group_discard("healthz", "healthz.probe")
        checks["channel_layer"] = "ok"
    except Exception as error:
        checks["channel_layer"] = f"failed: {type(error).__name__}"
    healthy = all(value == "ok" for value in checks.values())
    return JsonResponse({"status": "ok" if healthy else "unavailable", **checks}, status=200 if healthy else 503)


def _database_answers():
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    connection.close()
