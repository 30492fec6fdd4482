from asgiref.sync import async_to_sync
from django.contrib import admin, messages
from django.db.models import Count, Q
from django.utils.text import Truncator

from . import services
from .models import Message, Project, ProjectFile


@admin.action(description="Stop selected streams")
def stop_streams(modeladmin, request, queryset):
    stopped = finished = 0
    for message in queryset.filter(status__in=Message.ACTIVE_STATUSES):
        try:
            async_to_sync(services.message_cancel)(message=message, reason=Message.CancelReason.USER)
            stopped += 1
        except services.MessageAlreadyFinished:
            finished += 1
    modeladmin.message_user(request, f"Stopped {stopped} stream(s); {finished} had already finished.", messages.SUCCESS)


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = [
        "id", "project", "owner", "role", "status", "cancel_reason", "error_type",
        "chunk_count", "duration_display", "created_at", "preview",
    ]
    list_filter = ["status", "cancel_reason", "error_type", "role", "created_at"]
    search_fields = ["content", "project__name", "project__owner__username"]
    date_hierarchy = "created_at"
    list_select_related = ["project__owner"]
    actions = [stop_streams]
    readonly_fields = [
        "project", "role", "status", "cancel_reason", "error_type", "error_detail", "content",
        "display_content", "chunk_count", "created_at", "started_at", "last_chunk_at", "finished_at",
        "cancel_requested_at", "cancel_requested_reason", "duration_display", "provider", "model", "worker",
    ]
    fieldsets = [
        (None, {"fields": ["project", "role", "status", "display_content"]}),
        ("Outcome", {"fields": ["cancel_reason", "error_type", "error_detail", "cancel_requested_at", "cancel_requested_reason"]}),
        ("Stream", {"fields": ["chunk_count", "created_at", "started_at", "last_chunk_at", "finished_at",
                               "duration_display", "provider", "model", "worker"]}),
        ("Raw content", {"fields": ["content"], "classes": ["collapse"]}),
    ]

    def has_add_permission(self, request):
        return False

    @admin.display(description="owner", ordering="project__owner__username")
    def owner(self, message):
        return message.project.owner

    @admin.display(description="duration")
    def duration_display(self, message):
        duration = message.duration
        return f"{duration.total_seconds():.1f} s" if duration is not None else "—"

    @admin.display(description="content")
    def preview(self, message):
        return Truncator(message.display_content.strip()).chars(80)


class MessageInline(admin.TabularInline):
    model = Message
    fields = ["role", "status", "cancel_reason", "error_type", "chunk_count", "created_at", "preview"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False

    @admin.display(description="content")
    def preview(self, message):
        return Truncator(message.display_content.strip()).chars(80)


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
