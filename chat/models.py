from django.conf import settings
from django.db import models
from django.utils import timezone


class Project(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="projects")
    name = models.CharField(max_length=200)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self):
        return self.name


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"

    class Status(models.TextChoices):
        PENDING = "pending"
        STREAMING = "streaming"
        COMPLETE = "complete"
        CANCELLED = "cancelled"
        ERROR = "error"

    class CancelReason(models.TextChoices):
        USER = "user"
        ADMIN = "admin"
        DISCONNECT = "disconnect"
        TIMEOUT = "timeout"
        STALE = "stale"
        LIMIT = "limit"
        SHUTDOWN = "shutdown"
        ORPHANED = "orphaned"

    class ErrorType(models.TextChoices):
        TIMEOUT = "timeout"
        UPSTREAM = "upstream"
        NETWORK = "network"
        PROTOCOL = "protocol"
        UNKNOWN = "unknown"

    ACTIVE_STATUSES = (Status.PENDING, Status.STREAMING)

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="messages")
    role = models.CharField(max_length=16, choices=Role.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.COMPLETE)
    cancel_reason = models.CharField(max_length=16, choices=CancelReason.choices, blank=True)
    error_type = models.CharField(max_length=16, choices=ErrorType.choices, blank=True)
    error_detail = models.CharField(max_length=500, blank=True, help_text="Shown to the user.")
    # A default in the database too: during a rolling deploy, older workers insert rows without it.
    error_internal = models.TextField(blank=True, default="", db_default="",
                                      help_text="What the model server said, keys redacted: staff only.")
    content = models.TextField(blank=True)
    chunk_count = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    last_chunk_at = models.DateTimeField(null=True, blank=True, help_text="Heartbeat of the producing worker.")
    finished_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_reason = models.CharField(max_length=16, choices=CancelReason.choices, blank=True)
    provider = models.CharField(max_length=32, blank=True)
    model = models.CharField(max_length=200, blank=True)
    worker = models.CharField(max_length=200, blank=True, help_text="Server process that produces the stream.")
    # An answer's prompt; answers to one prompt are its versions (Regenerate), one of them `selected`
    # (the one shown and sent upstream later), each possibly continued by further rows (Continue).
    # The fields added since the first release have defaults in the database too: during a rolling
    # deploy, older workers insert rows without them.
    reply_to = models.ForeignKey("self", null=True, blank=True, on_delete=models.CASCADE, related_name="answers",
                                 help_text="The prompt this answers.")
    continues = models.ForeignKey("self", null=True, blank=True, on_delete=models.CASCADE,
                                  related_name="continuations", help_text="The stopped answer this goes on from.")
    selected = models.BooleanField(default=True, db_default=True,
                                   help_text="The version of its prompt's answer that is shown and sent upstream.")
    superseded_at = models.DateTimeField(null=True, blank=True,
                                         help_text="Replaced by an edit of an earlier prompt; kept for the record.")
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    tokens_estimated = models.BooleanField(default=False, db_default=False,
                                           help_text="No usage from the model server (stopped early): estimated.")

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [
            models.Index(fields=["status", "last_chunk_at"], name="message_status_heartbeat"),
            models.Index(fields=["project", "created_at", "id"], name="message_project_order"),
        ]

    def __str__(self):
        return f"{self.role} message {self.pk} ({self.status})"

    @property
    def is_finished(self):
        return self.status not in self.ACTIVE_STATUSES

    @property
    def marker(self):
        """The display marker for a stopped or failed answer; '' otherwise."""
        if self.status == self.Status.CANCELLED:
            if self.cancel_reason == self.CancelReason.USER:
                return "*[Response cancelled by user]*"
            if self.cancel_reason == self.CancelReason.ADMIN:
                return "*[Response stopped by an operator]*"
            return f"*[Response stopped: {self.cancel_reason}]*"
        if self.status == self.Status.ERROR:
            return f"*[Error: {self.error_detail}]*"
        return ""

    @property
    def display_content(self):
        """What the page, the admin and `partial_content` show: content plus marker."""
        marker = self.marker
        if not marker:
            return self.content
        return f"{self.content}\n\n{marker}" if self.content else f"\n\n{marker}"

    @property
    def duration(self):
        if self.started_at is None:
            return None
        return (self.finished_at or timezone.now()) - self.started_at


class ProjectFile(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="files")
    name = models.CharField(max_length=255)
    content = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["project", "name"], name="projectfile_unique_name")]

    def __str__(self):
        return self.name


class Worker(models.Model):
    """A server process; alive while its heartbeat is fresh (chat/liveness.py). The answers
    of a worker whose heartbeat stopped are dead: caps ignore them, live workers finalize them."""

    id = models.CharField(max_length=200, primary_key=True)
    started_at = models.DateTimeField(default=timezone.now)
    heartbeat_at = models.DateTimeField(default=timezone.now, db_index=True)

    def __str__(self):
        return self.id
