from rest_framework import serializers

from .models import Message, Project


class ProjectSerializer(serializers.ModelSerializer):
    class Meta:
        model = Project
        fields = ["id", "name", "created_at"]
        read_only_fields = ["id", "created_at"]


class MessageSerializer(serializers.ModelSerializer):
    class Meta:
        model = Message
        fields = [
            "id", "role", "status", "content", "display_content", "cancel_reason", "error_type",
            "error_detail", "chunk_count", "created_at", "started_at", "last_chunk_at", "finished_at",
            "provider", "model", "reply_to", "continues", "selected", "prompt_tokens", "completion_tokens",
            "tokens_estimated",
        ]
        read_only_fields = fields


class CancelSerializer(serializers.Serializer):
    message_id = serializers.IntegerField(min_value=1)

    def to_internal_value(self, data):
        # The original ticket's clients send camelCase; both spellings are accepted.
        if isinstance(data, dict) and "message_id" not in data and "messageId" in data:
            data = {"message_id": data["messageId"]}
        value = data.get("message_id") if isinstance(data, dict) else None
        if isinstance(value, bool) or not isinstance(value, int):
            raise serializers.ValidationError({"message_id": ["An integer message_id is required."]})
        return super().to_internal_value(data)
