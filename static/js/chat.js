// The chat page: one websocket, answers streamed as sanitized markdown; after a stop, the
// next step: Continue, Regenerate (versions), Edit, Copy. Frames and statuses: docs/protocol.md.
import {
  actions, activeRow, addRow, chainOf, finish, followBottom, isActive, markerFrom, removeRows, rows, scheduleRender,
  versionSelected,
} from "./conversation.js";

const BACKOFF_START_MS = 500;
const BACKOFF_MAX_MS = 10000;
const CONNECTED_BANNER_MS = 1500;
const CLOSE_SIGNED_OUT = 4401;
const CLOSE_NOT_FOUND = 4404;
const CLOSE_TOO_MANY = 4429;

const messagesEl = document.getElementById("messages");
const promptEl = document.getElementById("prompt");
const sendButton = document.getElementById("send-button");
const escHint = document.getElementById("esc-hint");
const editNote = document.getElementById("edit-note");
const bannerEl = document.getElementById("connection-banner");
const alertsEl = document.getElementById("alerts");
const includeContextEl = document.getElementById("include-context");

let socket = null;
let retryDelay = BACKOFF_START_MS;
let bannerTimer = null;
let pendingClientId = null;
let editing = null; // the prompt being edited, by id

function send(frame) {
  if (socket?.readyState !== WebSocket.OPEN) return false;
  socket.send(JSON.stringify(frame));
  return true;
}

// ---- the composer --------------------------------------------------------------------------

function syncComposer() {
  const answer = activeRow();
  let state = "send";
  if (answer) state = answer.stopping ? "stopping" : "stop";
  sendButton.dataset.state = state;
  sendButton.textContent = { send: editing ? "Send edit" : "Send", stop: "Stop", stopping: "Stopping…" }[state];
  sendButton.disabled = state === "stopping" || (state === "send" && pendingClientId !== null);
  sendButton.classList.toggle("danger", state !== "send");
  sendButton.classList.toggle("primary", state === "send");
  escHint.hidden = state === "send";
  // Another answer may not start while one streams (the Stop button belongs to it).
  messagesEl.querySelectorAll(".message-actions .button:not(.copy-button)").forEach((button) => {
    if (!button.closest(".versions")) button.disabled = Boolean(answer);
  });
}

function startEditing(row) {
  editing = row.id;
  promptEl.value = row.text;
  editNote.hidden = false;
  promptEl.focus();
  syncComposer();
}

function stopEditing() {
  editing = null;
  editNote.hidden = true;
  syncComposer();
}

document.getElementById("edit-cancel").addEventListener("click", () => {
  promptEl.value = "";
  stopEditing();
});

// ---- banner and alerts -------------------------------------------------------------------------

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
  close.textContent = "×";
  close.addEventListener("click", () => alert.remove());
  close.setAttribute("aria-label", "Dismiss");
  alert.append(textEl, close);
  alertsEl.append(alert);
}

function errorText({ code, detail, retry_after }) {
  if (code === "limit_exceeded") return `Too many answers are streaming at once. ${detail ?? ""}`.trim();
  if (code === "unavailable") return "The server is temporarily unavailable. Please try again in a moment.";
  if (code === "rate_limited") return `You are sending prompts too quickly. Try again in ${retry_after ?? 60} s.`;
  return detail || `Something went wrong (${code}).`;
}

// ---- sending and stopping ------------------------------------------------------------------------

function randomId() {
  // crypto.randomUUID needs a secure context; getRandomValues does not.
  return Array.from(crypto.getRandomValues(new Uint8Array(8)), (b) => b.toString(16).padStart(2, "0")).join("");
}

function contextOptions() {
  const files = [...document.querySelectorAll('input[name="context_files"]:checked')].map((input) => input.value);
  return { include_context: includeContextEl.checked, context_files: includeContextEl.checked ? files : [] };
}

function request(frame) {
  if (activeRow() || pendingClientId) return false;
  const clientId = randomId();
  if (!send({ ...frame, client_id: clientId })) {
    showAlert("Not connected, so nothing was sent. Try again once the connection is back.");
    return false;
  }
  pendingClientId = clientId;
  followBottom();
  syncComposer();
  return true;
}

function sendPrompt(content) {
  if (!content?.trim()) return;
  const edit = editing !== null ? { edit_of: editing } : {};
  request({ type: "send", content, ...contextOptions(), ...edit });
}

function requestAnswer(type, messageId) {
  request({ type, message_id: messageId });
}

function stop(row) {
  row.stopping = true;
  // If the socket is down, the cancel goes out with the resume on reconnect.
  send({ type: "cancel", message_id: row.id });
  syncComposer();
}

document.getElementById("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const answer = activeRow();
  if (answer) {
    if (!answer.stopping) stop(answer);
  } else {
    sendPrompt(promptEl.value);
  }
});

promptEl.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    if (!activeRow()) document.getElementById("composer").requestSubmit();
  }
});

document.addEventListener("keydown", (event) => {
  const answer = activeRow();
  if (event.key === "Escape" && answer && !answer.stopping) stop(answer);
  else if (event.key === "Escape" && editing !== null) document.getElementById("edit-cancel").click();
});

// Picking a file only makes sense with context on.
document.querySelectorAll('input[name="context_files"]').forEach((input) => {
  input.addEventListener("change", () => {
    if (input.checked) includeContextEl.checked = true;
  });
});

// ---- incoming frames -------------------------------------------------------------------------------

const handlers = {
  message_created({ user_message: user, assistant_message: answer, client_id: clientId, superseded = [] }) {
    if (clientId && clientId === pendingClientId) {
      pendingClientId = null;
      if (user) {
        promptEl.value = "";
        stopEditing();
      }
    }
    removeRows(superseded);
    if (user && !rows.has(user.id)) addRow({ ...user, status: "complete" });
    if (!rows.has(answer.id)) addRow({ ...answer, content: "" });
  },

  message_chunk({ message_id: id, seq, delta }) {
    const row = rows.get(id);
    if (!row || !isActive(row) || seq <= row.lastSeq) return;
    if (seq > row.lastSeq + 1) {
      // A chunk went missing: ask for the rest once, and let seq drop the overlap.
      if (!row.resyncing) row.resyncing = send({ type: "resume", message_id: id, after_seq: row.lastSeq });
      return;
    }
    row.resyncing = false;
    row.lastSeq = seq;
    // Seq 1 starts the text over: an answer loaded from history shows its stored
    // (lagging) text until `resume` replays its chunks from the first.
    row.text = seq === 1 ? delta : row.text + delta;
    if (row.status !== "streaming") row.status = "streaming";
    scheduleRender(chainOf(row));
  },

  // An answer over 1 MiB ends without its text (content_omitted): the deltas already have it.
  stream_complete({ message_id: id, content, usage }) {
    const row = rows.get(id);
    if (row) finish(row, "complete", content ?? row.text, "", usage);
  },

  stream_cancelled({ message_id: id, content, partial_content: display, usage }) {
    const row = rows.get(id);
    if (row) finish(row, "cancelled", content ?? row.text, markerFrom(display ?? "", content ?? ""), usage);
  },

  stream_error({ message_id: id, content, partial_content: display, error, usage }) {
    const row = rows.get(id);
    const marker = display ? markerFrom(display, content ?? "") : `[Error: ${error}]`;
    if (row) finish(row, "error", content ?? row.text, marker, usage);
  },

  version_selected({ message_id: id, reply_to: replyTo }) {
    versionSelected(replyTo, id);
  },

  error(frame) {
    const row = rows.get(frame.message_id);
    if (!frame.message_id || frame.code === "validation") {
      // It answers the request waiting for its message_created.
      pendingClientId = null;
      syncComposer();
    }
    if (frame.code === "already_finished") {
      // The answer ended before the cancel arrived: fetch its terminal event.
      if (row && isActive(row)) send({ type: "resume", message_id: row.id, after_seq: row.lastSeq });
      return;
    }
    showAlert(errorText(frame));
    if (row && isActive(row)) finish(row, "error", row.text, `[Error: ${frame.detail}]`);
  },
};

// ---- connection -----------------------------------------------------------------------------------

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${location.host}${messagesEl.dataset.wsPath}`);

  socket.addEventListener("open", () => {
    retryDelay = BACKOFF_START_MS;
    setBanner("connected", "Connected");
    for (const row of rows.values()) {
      if (!isActive(row)) continue;
      row.resyncing = false;
      send({ type: "resume", message_id: row.id, after_seq: row.lastSeq });
      if (row.stopping) send({ type: "cancel", message_id: row.id });
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
    // Whether an unanswered request was accepted is unknown; let the user send again.
    pendingClientId = null;
    syncComposer();
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
  for (const item of JSON.parse(document.getElementById("history").textContent)) {
    addRow({ ...item, marker: markerFrom(item.display_content, item.content) });
  }
  syncComposer();
}

Object.assign(actions, {
  edit: startEditing,
  again: requestAnswer,
  selectVersion: (head) => send({ type: "select_version", message_id: head }),
  changed: syncComposer,
});
loadHistory();
connect();
