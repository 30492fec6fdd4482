// The original ticket's client (shared/reference, chat-interface.tsx), its network logic as
// written: fetch POST, a ReadableStream reader, split on newlines, JSON.parse each `data: `
// line, switch on `type`; cancel with POST {messageId}. Two changes only: absolute URLs
// (Node has no page origin) and the Django session cookie and CSRF header that a browser
// page would send. Prints what its UI state ends up as, as JSON.
const { BASE_URL, PROJECT_ID, COOKIE, CSRF, SLASH, CANCEL_AFTER_CHUNKS } = process.env;
const projectId = Number(PROJECT_ID);
const slash = SLASH === "1" ? "/" : "";
const headers = { "Content-Type": "application/json", "X-CSRFToken": CSRF, Cookie: COOKIE };

const messages = []; // the ticket's queryClient data for ['messages', projectId]
const seen = []; // every event as parsed
let cancelResponse = null;
let chunks = 0;
let cancelling = null;

function setMessages(update) {
  const next = update(messages.slice());
  messages.length = 0;
  messages.push(...next);
}

async function cancelStream(messageId) {
  const response = await fetch(`${BASE_URL}/api/projects/${projectId}/chat/cancel${slash}`, {
    method: "POST",
    headers,
    body: JSON.stringify({ messageId }),
  });
  if (!response.ok) {
    throw new Error(`Cancellation failed: ${response.statusText}`);
  }
  cancelResponse = { status: response.status, body: await response.json() };
}

function handleStreamingEvent(data) {
  seen.push(data);
  switch (data.type) {
    case "message_created":
      setMessages((old) => [
        ...old,
        { id: data.userMessage.id, content: data.userMessage.content, role: "user",
          timestamp: new Date(data.userMessage.timestamp), isLoading: false },
        { id: data.assistantMessage.id, content: data.assistantMessage.content, role: "assistant",
          timestamp: new Date(data.assistantMessage.timestamp), isLoading: true, isStreaming: true,
          canCancel: data.assistantMessage.canCancel },
      ]);
      break;
    case "message_chunk":
      setMessages((old) => old.map((msg) => (msg.id === data.messageId
        ? { ...msg, content: data.content, isStreaming: data.isStreaming, canCancel: data.canCancel } : msg)));
      chunks += 1;
      if (String(chunks) === CANCEL_AFTER_CHUNKS && !cancelling) cancelling = cancelStream(data.messageId);
      break;
    case "stream_complete":
      setMessages((old) => old.map((msg) => (msg.id === data.messageId
        ? { ...msg, content: data.finalContent, isLoading: false, isStreaming: false, canCancel: false } : msg)));
      break;
    case "stream_cancelled":
      setMessages((old) => old.map((msg) => (msg.id === data.messageId
        ? { ...msg, content: data.partialContent, isLoading: false, isStreaming: false, canCancel: false } : msg)));
      break;
    case "stream_error":
      setMessages((old) => old.map((msg) => (msg.id === data.messageId
        ? { ...msg, content: data.partialContent || msg.content, isLoading: false, isStreaming: false,
            canCancel: false, hasError: true, errorType: data.errorType || "unknown" } : msg)));
      break;
  }
}

const response = await fetch(`${BASE_URL}/api/projects/${projectId}/chat${slash}`, {
  method: "POST",
  headers,
  body: JSON.stringify({ content: "Tell me a long story", includeContext: false, contextFiles: [] }),
});
if (!response.body) {
  throw new Error("No response body");
}
const reader = response.body.getReader();
const decoder = new TextDecoder();
let buffer = "";
while (true) {
  const { done, value } = await reader.read();
  if (done) break;
  buffer += decoder.decode(value, { stream: true });
  const lines = buffer.split("\n");
  buffer = lines.pop() || "";
  for (const line of lines) {
    if (line.startsWith("data: ")) {
      const data = JSON.parse(line.substring(6));
      handleStreamingEvent(data);
    }
  }
}
if (cancelling) await cancelling;
console.log(JSON.stringify({ status: response.status, messages, seen, cancelResponse }));
