// The chat page: one websocket, streamed answers rendered as sanitized markdown.
// Frames and statuses: docs/protocol.md.
import { marked } from "../vendor/marked/marked.esm.js";
import DOMPurify from "../vendor/dompurify/purify.es.mjs";

const BACKOFF_START_MS = 500;
const BACKOFF_MAX_MS = 10000;
const CONNECTED_BANNER_MS = 1500;
const BOTTOM_SLACK_PX = 40;
const ACTIVE_STATUSES = new Set(["pending", "streaming"]);
const CLOSE_SIGNED_OUT = 4401;
const CLOSE_NOT_FOUND = 4404;
const CLOSE_TOO_MANY = 4429;

const messagesEl = document.getElementById("messages");
const promptEl = document.getElementById("prompt");
const sendButton = document.getElementById("send-button");
const bannerEl = document.getElementById("connection-banner");
const alertsEl = document.getElementById("alerts");
const includeContextEl = document.getElementById("include-context");

marked.use({ gfm: true, breaks: true });
// Model output may carry HTML written by whoever planted text in the prompt. Only
// what markdown itself produces is kept: no media, frames, forms or SVG, and no
// attribute that makes the browser fetch a URL (src, srcset, poster, background),
// because a fetched URL can carry the conversation away. Inline styles could
// restyle the page, ids could clobber the page's own globals.
const PURIFY_CONFIG = {
  ALLOWED_TAGS: [
    "a", "abbr", "b", "blockquote", "br", "code", "dd", "del", "details", "div", "dl", "dt", "em",
    "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "input", "kbd", "li", "mark", "ol", "p", "pre",
    "s", "span", "strong", "sub", "summary", "sup", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "u", "ul",
  ],
  ALLOWED_ATTR: ["href", "title", "align", "start", "colspan", "rowspan", "type", "checked", "disabled"],
  ALLOW_DATA_ATTR: false,
};
DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  // Links in model output must not get a handle on this page (window.opener).
  if (node.tagName === "A") {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
  // Markdown makes inputs only for task lists: anything else becomes one of those.
  if (node.tagName === "INPUT") {
    node.setAttribute("type", "checkbox");
    node.setAttribute("disabled", "");
  }
});

function renderMarkdown(text) {
  return DOMPurify.sanitize(marked.parse(text), PURIFY_CONFIG);
}

// id -> {id, role, status, text, lastSeq, prompt, stopping, renderQueued, resyncing, el, body}
const messages = new Map();
let socket = null;
let retryDelay = BACKOFF_START_MS;
let bannerTimer = null;
let pendingClientId = null;
let stickToBottom = true;

const isActive = (rec) => ACTIVE_STATUSES.has(rec.status);

// The Stop button controls the newest answer still streaming.
function activeAnswer() {
  let found = null;
  for (const rec of messages.values()) if (rec.role === "assistant" && isActive(rec)) found = rec;
  return found;
}

function send(frame) {
  if (socket?.readyState !== WebSocket.OPEN) return false;
  socket.send(JSON.stringify(frame));
  return true;
}

// ---- rendering -------------------------------------------------------------

function markerFrom(displayText, content) {
  const tail = displayText.startsWith(content) ? displayText.slice(content.length) : displayText;
  // The marker is markdown emphasis; the page styles it instead.
  return tail.trim().replace(/^\*([\s\S]*)\*$/, "$1");
}

function addMessage({ id, role, status, content, marker = "", prompt = null }) {
  const el = document.createElement("article");
  el.className = `message message-${role}`;
  el.dataset.messageId = id;
  el.dataset.role = role;
  const body = document.createElement("div");
  body.className = "message-body";
  el.append(body);
  if (role === "assistant") {
    el.insertAdjacentHTML("beforeend", `<span class="typing-indicator" role="img" aria-label="Answer is being written">
      <span></span><span></span><span></span></span>`);
  }
  const rec = { id, role, status, text: content, lastSeq: 0, prompt, stopping: false, renderQueued: false, resyncing: false, el, body };
  messages.set(id, rec);
  messagesEl.querySelector(".empty-state")?.remove();
  messagesEl.append(el);
  renderBody(rec);
  showStatus(rec, marker);
  return rec;
}

function renderBody(rec) {
  // A prompt is shown as typed: markdown or HTML in it is the user's text, not formatting.
  if (rec.role === "user") rec.body.textContent = rec.text;
  else rec.body.innerHTML = renderMarkdown(rec.text);
  scrollIfFollowing();
}

// rAF coalesces a burst of chunks into one render of this bubble only.
function scheduleRender(rec) {
  if (rec.renderQueued) return;
  rec.renderQueued = true;
  requestAnimationFrame(() => {
    rec.renderQueued = false;
    renderBody(rec);
  });
}

// The marker and Retry exist only when shown, so a bubble's text is exactly what is visible.
function showStatus(rec, marker) {
  rec.el.dataset.status = rec.status;
  rec.el.setAttribute("aria-busy", String(isActive(rec)));
  rec.el.querySelectorAll(":scope > .marker, :scope > .retry-button").forEach((el) => el.remove());
  if (marker) {
    const markerEl = document.createElement("p");
    markerEl.className = "marker";
    markerEl.textContent = marker;
    rec.el.append(markerEl);
  }
  if (rec.status === "error" && rec.prompt) {
    const retry = document.createElement("button");
    retry.type = "button";
    retry.className = "button small retry-button";
    retry.textContent = "Retry";
    retry.addEventListener("click", () => sendPrompt(rec.prompt));
    rec.el.append(retry);
  }
  syncSendButton();
}

function finish(rec, status, content, marker) {
  rec.status = status;
  rec.stopping = false;
  rec.text = content;
  renderBody(rec);
  showStatus(rec, marker);
}

function syncSendButton() {
  const answer = activeAnswer();
  let state = "send";
  if (answer) state = answer.stopping ? "stopping" : "stop";
  sendButton.dataset.state = state;
  sendButton.textContent = { send: "Send", stop: "Stop", stopping: "Stopping…" }[state];
  sendButton.disabled = state === "stopping" || (state === "send" && pendingClientId !== null);
  sendButton.classList.toggle("danger", state !== "send");
  sendButton.classList.toggle("primary", state === "send");
}

function scrollIfFollowing() {
  if (stickToBottom) messagesEl.scrollTop = messagesEl.scrollHeight;
}

messagesEl.addEventListener("scroll", () => {
  const distance = messagesEl.scrollHeight - messagesEl.scrollTop - messagesEl.clientHeight;
  stickToBottom = distance < BOTTOM_SLACK_PX;
});

// ---- banner and alerts -------------------------------------------------------

function setBanner(state, text, link = null) {
  clearTimeout(bannerTimer);
  bannerEl.dataset.state = state;
  bannerEl.textContent = text;
  if (link) {
    const a = document.createElement("a");
    a.href = link.href;
    a.textContent = link.text;
    bannerEl.append(" ", a);
  }
  bannerEl.hidden = false;
  if (state === "connected") bannerTimer = setTimeout(() => { bannerEl.hidden = true; }, CONNECTED_BANNER_MS);
}

function showAlert(text) {
  const alert = document.createElement("div");
  alert.className = "alert alert-error";
  alert.setAttribute("role", "alert");
  const textEl = document.createElement("span");
  textEl.textContent = text;
  const close = document.createElement("button");
  close.type = "button";
  close.className = "alert-dismiss";
  close.setAttribute("aria-label", "Dismiss");
  close.textContent = "×";
  close.addEventListener("click", () => alert.remove());
  alert.append(textEl, close);
  alertsEl.append(alert);
}

function errorText({ code, detail, retry_after }) {
  if (code === "limit_exceeded") return `Too many answers are streaming at once. ${detail ?? ""}`.trim();
  if (code === "unavailable") return "The server is temporarily unavailable. Please try again in a moment.";
  if (code === "rate_limited") return `You are sending prompts too quickly. Try again in ${retry_after ?? 60} s.`;
  return detail || `Something went wrong (${code}).`;
}

// ---- sending and stopping ----------------------------------------------------

function randomId() {
  // crypto.randomUUID needs a secure context; getRandomValues does not.
  return Array.from(crypto.getRandomValues(new Uint8Array(8)), (b) => b.toString(16).padStart(2, "0")).join("");
}

function contextOptions() {
  const files = [...document.querySelectorAll('input[name="context_files"]:checked')].map((input) => input.value);
  return { include_context: includeContextEl.checked, context_files: includeContextEl.checked ? files : [] };
}

function sendPrompt(content) {
  if (!content?.trim() || activeAnswer() || pendingClientId) return;
  const clientId = randomId();
  if (!send({ type: "send", content, ...contextOptions(), client_id: clientId })) {
    showAlert("Not connected, so the message was not sent. Try again once the connection is back.");
    return;
  }
  pendingClientId = clientId;
  stickToBottom = true;
  syncSendButton();
}

function stop(rec) {
  rec.stopping = true;
  // If the socket is down, the cancel goes out with the resume on reconnect.
  send({ type: "cancel", message_id: rec.id });
  syncSendButton();
}

document.getElementById("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const answer = activeAnswer();
  if (answer) {
    if (!answer.stopping) stop(answer);
  } else {
    sendPrompt(promptEl.value);
  }
});

promptEl.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    if (!activeAnswer()) document.getElementById("composer").requestSubmit();
  }
});

document.addEventListener("keydown", (event) => {
  const answer = activeAnswer();
  if (event.key === "Escape" && answer && !answer.stopping) stop(answer);
});

// Picking a file only makes sense with context on.
document.querySelectorAll('input[name="context_files"]').forEach((input) => {
  input.addEventListener("change", () => {
    if (input.checked) includeContextEl.checked = true;
  });
});

// ---- incoming frames -------------------------------------------------------------

const handlers = {
  message_created({ user_message: user, assistant_message: answer, client_id: clientId }) {
    if (clientId && clientId === pendingClientId) {
      pendingClientId = null;
      promptEl.value = "";
    }
    if (!messages.has(user.id)) addMessage({ ...user, status: "complete" });
    if (!messages.has(answer.id)) addMessage({ ...answer, content: "", prompt: user.content });
  },

  message_chunk({ message_id: id, seq, delta }) {
    const rec = messages.get(id);
    if (!rec || !isActive(rec) || seq <= rec.lastSeq) return;
    if (seq > rec.lastSeq + 1) {
      // A chunk went missing: ask for the rest once, and let seq drop the overlap.
      if (!rec.resyncing) rec.resyncing = send({ type: "resume", message_id: id, after_seq: rec.lastSeq });
      return;
    }
    rec.resyncing = false;
    rec.lastSeq = seq;
    // Seq 1 starts the text over: an answer loaded from history shows its stored
    // (lagging) text until `resume` replays its chunks from the first.
    rec.text = seq === 1 ? delta : rec.text + delta;
    if (rec.status !== "streaming") {
      rec.status = "streaming";
      rec.el.dataset.status = "streaming";
    }
    scheduleRender(rec);
  },

  // An answer over 1 MiB ends without its text (content_omitted): the deltas already have it.
  stream_complete({ message_id: id, content }) {
    const rec = messages.get(id);
    if (rec) finish(rec, "complete", content ?? rec.text, "");
  },

  stream_cancelled({ message_id: id, content, partial_content: display }) {
    const rec = messages.get(id);
    if (rec) finish(rec, "cancelled", content ?? rec.text, markerFrom(display ?? "", content ?? ""));
  },

  stream_error({ message_id: id, content, partial_content: display, error }) {
    const rec = messages.get(id);
    if (rec) finish(rec, "error", content ?? rec.text, display ? markerFrom(display, content ?? "") : `[Error: ${error}]`);
  },

  error(frame) {
    const rec = messages.get(frame.message_id);
    if (!frame.message_id) {
      // We send no other frame without a message id, so this answers the pending send.
      pendingClientId = null;
      syncSendButton();
    }
    if (frame.code === "already_finished") {
      // The answer ended before the cancel arrived: fetch its terminal event.
      if (rec && isActive(rec)) send({ type: "resume", message_id: rec.id, after_seq: rec.lastSeq });
      return;
    }
    showAlert(errorText(frame));
    if (rec && isActive(rec)) finish(rec, "error", rec.text, `[Error: ${frame.detail}]`);
  },
};

// ---- connection ---------------------------------------------------------------------

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${location.host}${messagesEl.dataset.wsPath}`);

  socket.addEventListener("open", () => {
    retryDelay = BACKOFF_START_MS;
    setBanner("connected", "Connected");
    for (const rec of messages.values()) {
      if (!isActive(rec)) continue;
      rec.resyncing = false;
      send({ type: "resume", message_id: rec.id, after_seq: rec.lastSeq });
      if (rec.stopping) send({ type: "cancel", message_id: rec.id });
    }
  });

  socket.addEventListener("message", (event) => {
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch {
      return;
    }
    if (Object.hasOwn(handlers, frame?.type)) handlers[frame.type](frame);
  });

  socket.addEventListener("close", (event) => {
    // Whether an unanswered send was accepted is unknown; let the user send again.
    pendingClientId = null;
    syncSendButton();
    if (event.code === CLOSE_SIGNED_OUT) {
      const href = `${messagesEl.dataset.loginUrl}?next=${encodeURIComponent(location.pathname)}`;
      setBanner("signed-out", "You are signed out.", { href, text: "Sign in again" });
    } else if (event.code === CLOSE_NOT_FOUND) {
      setBanner("not-found", "This project was not found.");
    } else if (event.code === CLOSE_TOO_MANY) {
      setBanner("too-many", "Too many chat tabs are open. Close some, then reload this one.");
    } else {
      setBanner("reconnecting", "Reconnecting…");
      setTimeout(connect, retryDelay);
      retryDelay = Math.min(retryDelay * 2, BACKOFF_MAX_MS);
    }
  });
}

function loadHistory() {
  let lastPrompt = null;
  for (const item of JSON.parse(document.getElementById("history").textContent)) {
    addMessage({
      ...item,
      marker: markerFrom(item.display_content, item.content),
      prompt: item.role === "assistant" ? lastPrompt : null,
    });
    if (item.role === "user") lastPrompt = item.content;
  }
}

loadHistory();
connect();
