// The chat page: one websocket, answers streamed as sanitized markdown; after a stop, the
// next step: Continue, Regenerate (versions), Edit, Copy. Frames and statuses: docs/protocol.md.
import { copyButton, renderMarkdown } from "./markdown.js";

const BACKOFF_START_MS = 500;
const BACKOFF_MAX_MS = 10000;
const CONNECTED_BANNER_MS = 1500;
const BOTTOM_SLACK_PX = 40;
const ACTIVE_STATUSES = new Set(["pending", "streaming"]);
const STOPPED_STATUSES = new Set(["cancelled", "error"]);
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

// rows: every message row, by id. An answer is a chain of rows (a version, then the rows that
// continue it), shown as one bubble; a prompt may have several versions, one of them shown.
const rows = new Map(); // id -> {id, role, status, text, marker, lastSeq, replyTo, continues, usage, ...}
const chains = new Map(); // head id -> {head, ids: [row ids], el, body, renderQueued}
const prompts = new Map(); // user row id -> {row, el, versions: [head ids]}
let socket = null;
let retryDelay = BACKOFF_START_MS;
let bannerTimer = null;
let pendingClientId = null;
let editing = null; // the prompt being edited, by id
let stickToBottom = true;

const isActive = (row) => ACTIVE_STATUSES.has(row.status);
const lastRow = (chain) => rows.get(chain.ids[chain.ids.length - 1]);
const chainOf = (row) => chains.get(row.head);

// The Stop button controls the newest answer row still streaming.
function activeRow() {
  let found = null;
  for (const row of rows.values()) if (row.role === "assistant" && isActive(row)) found = row;
  return found;
}

function send(frame) {
  if (socket?.readyState !== WebSocket.OPEN) return false;
  socket.send(JSON.stringify(frame));
  return true;
}

// ---- rows and their bubbles ------------------------------------------------------------------

function markerFrom(displayText, content) {
  const tail = displayText.startsWith(content) ? displayText.slice(content.length) : displayText;
  // The marker is markdown emphasis; the page styles it instead.
  return tail.trim().replace(/^\*([\s\S]*)\*$/, "$1");
}

function addRow(data) {
  const row = {
    id: data.id, role: data.role, status: data.status ?? "complete", text: data.content ?? "",
    marker: data.marker ?? "", lastSeq: 0, replyTo: data.reply_to ?? null, continues: data.continues ?? null,
    selected: data.selected ?? true, provider: data.provider ?? "", model: data.model ?? "",
    usage: data.usage ?? null, resyncing: false, stopping: false, head: data.id,
  };
  rows.set(row.id, row);
  messagesEl.querySelector(".empty-state")?.remove();
  if (row.role === "user") addPrompt(row);
  else if (row.continues !== null && rows.has(row.continues)) joinChain(row);
  else addVersion(row);
  return row;
}

function addPrompt(row) {
  const el = article("user", row.id);
  el.querySelector(".message-body").textContent = row.text; // a prompt is shown as typed
  const actions = el.querySelector(".message-actions");
  actions.append(actionButton("Edit", () => startEditing(row)));
  prompts.set(row.id, { row, el, versions: [] });
  messagesEl.append(el);
}

function addVersion(row) {
  const el = article("assistant", row.id);
  el.insertAdjacentHTML("afterbegin", '<p class="answer-model muted"></p>');
  el.querySelector(".message-body").insertAdjacentHTML("afterend", `<span class="typing-indicator" role="img"
      aria-label="Answer is being written"><span></span><span></span><span></span></span>`);
  const chain = { head: row.id, ids: [row.id], el, body: el.querySelector(".message-body"), renderQueued: false };
  chains.set(row.id, chain);
  const prompt = prompts.get(row.replyTo);
  if (prompt) {
    prompt.versions.push(row.id);
    const after = prompt.versions.length > 1 ? chains.get(prompt.versions.at(-2)).el : prompt.el;
    after.after(el);
  } else {
    messagesEl.append(el);
  }
  renderChain(chain);
  if (prompt) showVersion(prompt, row.selected ? row.id : prompt.versions.find((id) => rows.get(id).selected));
}

function joinChain(row) {
  row.head = rows.get(row.continues).head;
  chainOf(row).ids.push(row.id);
  renderChain(chainOf(row));
}

function article(role, id) {
  const el = document.createElement("article");
  el.className = `message message-${role}`;
  el.dataset.messageId = id;
  el.dataset.role = role;
  el.innerHTML = '<div class="message-body"></div><div class="message-actions"></div>';
  return el;
}

function actionButton(label, onClick, className = "") {
  const button = document.createElement("button");
  button.type = "button";
  button.className = `button small ${className}`.trim();
  button.textContent = label;
  button.addEventListener("click", onClick);
  return button;
}

const chainText = (chain) => chain.ids.map((id) => rows.get(id).text).join("");

// rAF coalesces a burst of chunks into one render of this bubble only.
function scheduleRender(chain) {
  if (chain.renderQueued) return;
  chain.renderQueued = true;
  requestAnimationFrame(() => {
    chain.renderQueued = false;
    renderChain(chain);
  });
}

function renderChain(chain) {
  const last = lastRow(chain);
  renderMarkdown(chain.body, chainText(chain), { final: !isActive(last) });
  chain.el.dataset.status = last.status;
  chain.el.dataset.lastId = last.id;
  chain.el.setAttribute("aria-busy", String(isActive(last)));
  chain.el.querySelectorAll(":scope > .marker").forEach((el) => el.remove());
  if (last.marker) {
    const markerEl = document.createElement("p");
    markerEl.className = "marker";
    markerEl.textContent = last.marker;
    chain.body.after(markerEl);
  }
  chain.el.querySelector(".answer-model").textContent = [rows.get(chain.head).provider, rows.get(chain.head).model]
    .filter(Boolean).join(" · ");
  renderActions(chain);
  scrollIfFollowing();
  syncComposer();
}

function renderActions(chain) {
  const actions = chain.el.querySelector(".message-actions");
  actions.replaceChildren();
  const last = lastRow(chain);
  const prompt = prompts.get(rows.get(chain.head).replyTo);
  if (prompt && prompt.versions.length > 1) actions.append(versionSwitcher(prompt, chain.head));
  if (isActive(last)) return;
  actions.append(copyButton("Copy", () => chainText(chain)));
  if (prompt) {
    const label = last.status === "error" ? "Retry" : "Regenerate";
    actions.append(actionButton(label, () => requestAnswer("regenerate", last.id)));
  }
  if (STOPPED_STATUSES.has(last.status) && prompt) {
    actions.append(actionButton("Continue", () => requestAnswer("continue", last.id)));
  }
  const usage = usageText(chain);
  if (usage) {
    const el = document.createElement("span");
    el.className = "usage muted";
    el.textContent = usage.text;
    el.title = usage.title;
    actions.append(el);
  }
}

function usageText(chain) {
  const counted = chain.ids.map((id) => rows.get(id).usage).filter(Boolean);
  if (!counted.length) return null;
  const sum = (key) => counted.reduce((total, usage) => total + (usage[key] ?? 0), 0);
  const estimated = counted.some((usage) => usage.estimated);
  return {
    text: `${estimated ? "≈ " : ""}${sum("prompt_tokens")} + ${sum("completion_tokens")} tokens`,
    title: estimated ? "Prompt + answer tokens, estimated (the model server gave no count)" : "Prompt + answer tokens",
  };
}

function versionSwitcher(prompt, head) {
  const index = prompt.versions.indexOf(head);
  const nav = document.createElement("span");
  nav.className = "versions";
  const go = (step) => () => selectVersion(prompt, prompt.versions[index + step]);
  const previous = actionButton("‹", go(-1));
  previous.setAttribute("aria-label", "Previous version");
  previous.disabled = index === 0;
  const next = actionButton("›", go(1));
  next.setAttribute("aria-label", "Next version");
  next.disabled = index === prompt.versions.length - 1;
  const label = document.createElement("span");
  label.className = "version-label";
  label.textContent = `${index + 1} / ${prompt.versions.length}`;
  nav.append(previous, label, next);
  return nav;
}

function showVersion(prompt, head = prompt.versions.at(-1)) {
  for (const id of prompt.versions) {
    rows.get(id).selected = id === head;
    chains.get(id).el.hidden = id !== head;
    renderActions(chains.get(id));
  }
  syncComposer();
}

function selectVersion(prompt, head) {
  if (!send({ type: "select_version", message_id: head })) return;
  showVersion(prompt, head);
}

function removeRows(ids) {
  for (const id of ids) {
    const row = rows.get(id);
    if (!row) continue;
    rows.delete(id);
    prompts.get(id)?.el.remove();
    prompts.delete(id);
    chains.get(id)?.el.remove();
    chains.delete(id);
  }
  for (const prompt of prompts.values()) prompt.versions = prompt.versions.filter((id) => chains.has(id));
}

function finish(row, status, content, marker, usage) {
  row.status = status;
  row.stopping = false;
  row.text = content;
  row.marker = marker;
  row.usage = usage ?? null;
  renderChain(chainOf(row));
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

function scrollIfFollowing() {
  if (stickToBottom) messagesEl.scrollTop = messagesEl.scrollHeight;
}

messagesEl.addEventListener("scroll", () => {
  const distance = messagesEl.scrollHeight - messagesEl.scrollTop - messagesEl.clientHeight;
  stickToBottom = distance < BOTTOM_SLACK_PX;
});

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
  const close = actionButton("×", () => alert.remove(), "alert-dismiss");
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
  stickToBottom = true;
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
    const prompt = prompts.get(replyTo);
    if (prompt && prompt.versions.includes(id)) showVersion(prompt, id);
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

loadHistory();
connect();
