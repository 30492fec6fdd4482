from asgiref.sync import async_to_sync
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q, Sum
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path
from django.utils import timezone
from django.utils.decorators import method_decorator
from django.utils.text import Truncator
from django.views.decorators.http import require_POST

from . import answers
from .errors import MessageAlreadyFinished, StopPending
from .models import Message, Project, ProjectFile


STOPPED, FINISHED, PENDING = "stopped", "finished", "pending"
STOP_NOTICES = {
    STOPPED: ("Stopped message {id}.", messages.SUCCESS),
    FINISHED: ("Message {id} had already finished.", messages.WARNING),
    PENDING: ("Stop of message {id} requested; its server process has not confirmed it yet.", messages.WARNING),
}


def stop_stream(message) -> str:
    """An operator's stop (reason `admin`), through the one stop of chat/answers.py:
    STOPPED, FINISHED (it ended first), or PENDING (stored and sent, but its server
    process has not finalized it yet)."""
    try:
        async_to_sync(answers.stop)(message_id=message.pk, reason=Message.CancelReason.ADMIN)
    except MessageAlreadyFinished:
        return FINISHED
    except StopPending:
        return PENDING
    return STOPPED


@admin.action(description="Stop selected streams")
def stop_streams(modeladmin, request, queryset):
    results = [stop_stream(message) for message in queryset.filter(status__in=Message.ACTIVE_STATUSES)]
    summary = f"Stopped {results.count(STOPPED)} stream(s); {results.count(FINISHED)} had already finished."
    if results.count(PENDING):
        summary += f" {results.count(PENDING)} will stop when their server process sees the request."
    modeladmin.message_user(request, summary, messages.SUCCESS)


class Superseded(admin.SimpleListFilter):
    """Rows an edit replaced: kept for the record, out of the conversation."""

    title = "replaced by an edit"
    parameter_name = "superseded"

    def lookups(self, request, model_admin):
        return [("yes", "Yes"), ("no", "No")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(superseded_at__isnull=False)
        if self.value() == "no":
            return queryset.filter(superseded_at__isnull=True)
        return queryset


@admin.display(description="content")
def preview(message):
    return Truncator(message.content.strip()).chars(80)


@admin.display(description="marker")
def marker(message):
    # The marker is markdown emphasis for the chat page; the admin shows it plain.
    return message.marker.strip("*") or "—"


def seconds_since(moment, now) -> str:
    return f"{(now - moment).total_seconds():.1f} s" if moment else "—"


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    # What happened and what was kept come first, so they show before the table scrolls;
    # the marker also names the error type, which is a filter.
    list_display = [
        "id", "status", "cancel_reason", marker, preview, "project", "owner", "role",
        "chunk_count", "tokens", "duration_display", "created_at",
    ]
    list_filter = ["status", "cancel_reason", "error_type", "role", "tokens_estimated", Superseded, "created_at"]
    search_fields = ["content", "project__name", "project__owner__username"]
    date_hierarchy = "created_at"
    list_select_related = ["project__owner"]
    actions = [stop_streams]
    readonly_fields = [
        "project", "role", "status", "cancel_reason", "error_type", "error_detail", "error_internal", "content",
        "display_content", "chunk_count", "created_at", "started_at", "last_chunk_at", "finished_at",
        "cancel_requested_at", "cancel_requested_reason", "duration_display", "provider", "model", "worker",
        "reply_to", "continues", "selected", "superseded_at", "prompt_tokens", "completion_tokens", "tokens_estimated",
    ]
    fieldsets = [
        (None, {"fields": ["project", "role", "status", "display_content"]}),
        ("Outcome", {"fields": ["cancel_reason", "error_type", "error_detail", "error_internal", "cancel_requested_at",
                                "cancel_requested_reason"]}),
        ("Stream", {"fields": ["chunk_count", "created_at", "started_at", "last_chunk_at", "finished_at",
                               "duration_display", "provider", "model", "worker"]}),
        ("Cost", {"fields": ["prompt_tokens", "completion_tokens", "tokens_estimated"]}),
        ("Conversation", {"fields": ["reply_to", "continues", "selected", "superseded_at"]}),
        ("Raw content", {"fields": ["content"], "classes": ["collapse"]}),
    ]

    def has_add_permission(self, request):
        return False

    @admin.display(description="owner", ordering="project__owner__username")
    def owner(self, message):
        return message.project.owner

    @admin.display(description="tokens (prompt + answer)")
    def tokens(self, message):
        if message.prompt_tokens is None and message.completion_tokens is None:
            return "—"
        estimate = "≈ " if message.tokens_estimated else ""
        return f"{estimate}{message.prompt_tokens or 0} + {message.completion_tokens or 0}"

    def changelist_view(self, request, extra_context=None):
        """The list, and under it what the listed answers cost, summed by status."""
        response = super().changelist_view(request, extra_context)
        changelist = getattr(response, "context_data", {}).get("cl")
        if changelist is not None:
            response.context_data["cost_by_status"] = list(
                changelist.queryset.filter(role=Message.Role.ASSISTANT).order_by().values("status").annotate(
                    answers=Count("id"), prompt_tokens=Sum("prompt_tokens"), completion_tokens=Sum("completion_tokens"),
                    estimated=Count("id", filter=Q(tokens_estimated=True))).order_by("status"))
        return response

    @admin.display(description="duration")
    def duration_display(self, message):
        duration = message.duration
        return f"{duration.total_seconds():.1f} s" if duration is not None else "—"

    def get_urls(self):
        # Ahead of the model's own URLs, whose "<path:object_id>/" would swallow "active/".
        return [
            path("active/", self.admin_site.admin_view(self.active_streams_view), name="chat_message_active"),
            path("active/<int:message_id>/stop/", self.admin_site.admin_view(self.stop_stream_view),
                 name="chat_message_stop"),
        ] + super().get_urls()

    def active_streams_view(self, request):
        """Pending and streaming answers as the database has them, so every server process is covered."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        now = timezone.now()
        streams = (
            Message.objects.filter(status__in=Message.ACTIVE_STATUSES)
            .select_related("project__owner")
            .order_by("created_at", "id")
        )
        rows = [
            {
                "message": message,
                "age": seconds_since(message.started_at or message.created_at, now),
                "heartbeat": seconds_since(message.last_chunk_at, now),
            }
            for message in streams
        ]
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Active streams",
            "rows": rows,
            "can_stop": self.has_change_permission(request),
        }
        return TemplateResponse(request, "admin/chat/message/active_streams.html", context)

    @method_decorator(require_POST)
    def stop_stream_view(self, request, message_id):
        if not self.has_change_permission(request):
            raise PermissionDenied
        outcome = stop_stream(get_object_or_404(Message, pk=message_id))
        text, level = STOP_NOTICES[outcome]
        self.message_user(request, text.format(id=message_id), level)
        return redirect("admin:chat_message_active")


class MessageInline(admin.TabularInline):
    model = Message
    fields = ["role", "status", "cancel_reason", "error_type", "chunk_count", "created_at", preview, marker]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ["name", "owner", "created_at", "message_count", "cancelled_count", "error_count"]
    search_fields = ["name", "owner__username"]
    list_filter = ["created_at"]
    inlines = [MessageInline]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(
            message_total=Count("messages"),
            cancelled_total=Count("messages", filter=Q(messages__status=Message.Status.CANCELLED)),
            error_total=Count("messages", filter=Q(messages__status=Message.Status.ERROR)),
        )

    @admin.display(description="messages", ordering="message_total")
    def message_count(self, project):
        return project.message_total

    @admin.display(description="cancelled", ordering="cancelled_total")
    def cancelled_count(self, project):
        return project.cancelled_total

    @admin.display(description="errors", ordering="error_total")
    def error_count(self, project):
        return project.error_total


@admin.register(ProjectFile)
class ProjectFileAdmin(admin.ModelAdmin):
    list_display = ["name", "project", "created_at"]
    search_fields = ["name", "project__name"]
