// The conversation on the page: every message row, answers as chains of rows (a version, then
// the rows that continue it) shown as one bubble, a prompt's versions with their switcher.
import { copyButton, renderMarkdown } from "./markdown.js";

const ACTIVE_STATUSES = new Set(["pending", "streaming"]);
const STOPPED_STATUSES = new Set(["cancelled", "error"]);
const BOTTOM_SLACK_PX = 40;

const messagesEl = document.getElementById("messages");
export const rows = new Map(); // id -> {id, role, status, text, marker, lastSeq, replyTo, continues, usage, ...}
const chains = new Map(); // head id -> {head, ids: [row ids], el, body, renderQueued}
const prompts = new Map(); // user row id -> {row, el, versions: [head ids]}
let stickToBottom = true;
// What the page does when a button is pressed, and after a bubble changes (chat.js sets them).
export const actions = { edit() {}, again() {}, selectVersion() {}, changed() {} };

export const isActive = (row) => ACTIVE_STATUSES.has(row.status);
const lastRow = (chain) => rows.get(chain.ids[chain.ids.length - 1]);
export const chainOf = (row) => chains.get(row.head);

// The Stop button controls the newest answer row still streaming.
export function activeRow() {
  let found = null;
  for (const row of rows.values()) if (row.role === "assistant" && isActive(row)) found = row;
  return found;
}

export function followBottom() {
  stickToBottom = true;
}

messagesEl.addEventListener("scroll", () => {
  const distance = messagesEl.scrollHeight - messagesEl.scrollTop - messagesEl.clientHeight;
  stickToBottom = distance < BOTTOM_SLACK_PX;
});

function scrollIfFollowing() {
  if (stickToBottom) messagesEl.scrollTop = messagesEl.scrollHeight;
}

export function markerFrom(displayText, content) {
  const tail = displayText.startsWith(content) ? displayText.slice(content.length) : displayText;
  // The marker is markdown emphasis; the page styles it instead.
  return tail.trim().replace(/^\*([\s\S]*)\*$/, "$1");
}

export function addRow(data) {
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
  el.querySelector(".message-actions").append(actionButton("Edit", () => actions.edit(row)));
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
export function scheduleRender(chain) {
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
  actions.changed();
}

function renderActions(chain) {
  const buttons = chain.el.querySelector(".message-actions");
  buttons.replaceChildren();
  const last = lastRow(chain);
  const prompt = prompts.get(rows.get(chain.head).replyTo);
  if (prompt && prompt.versions.length > 1) buttons.append(versionSwitcher(prompt, chain.head));
  if (isActive(last)) return;
  buttons.append(copyButton("Copy", () => chainText(chain)));
  if (prompt) {
    const label = last.status === "error" ? "Retry" : "Regenerate";
    buttons.append(actionButton(label, () => actions.again("regenerate", last.id)));
  }
  if (STOPPED_STATUSES.has(last.status) && prompt) {
    buttons.append(actionButton("Continue", () => actions.again("continue", last.id)));
  }
  const usage = usageText(chain);
  if (usage) {
    const el = document.createElement("span");
    el.className = "usage muted";
    el.textContent = usage.text;
    el.title = usage.title;
    buttons.append(el);
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
  actions.changed();
}

function selectVersion(prompt, head) {
  if (actions.selectVersion(head)) showVersion(prompt, head);
}

export function removeRows(ids) {
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

export function finish(row, status, content, marker, usage) {
  row.status = status;
  row.stopping = false;
  row.text = content;
  row.marker = marker;
  row.usage = usage ?? null;
  renderChain(chainOf(row));
}

export function versionSelected(replyTo, head) {
  const prompt = prompts.get(replyTo);
  if (prompt && prompt.versions.includes(head)) showVersion(prompt, head);
}
