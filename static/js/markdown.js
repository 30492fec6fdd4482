// Model output as sanitized markdown, its code blocks highlighted, and copying to the clipboard.
import { marked } from "../vendor/marked/marked.esm.js";
import DOMPurify from "../vendor/dompurify/purify.es.mjs";
import hljs from "../vendor/highlight/highlight.min.js";

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
// The language of a fence (```python) survives sanitizing only as a word the highlighter knows.
const FENCE = /^```[ \t]*([\w+#.-]+)/gm;

export function renderMarkdown(container, text, { final = false } = {}) {
  container.innerHTML = DOMPurify.sanitize(marked.parse(text), PURIFY_CONFIG);
  const languages = [...text.matchAll(FENCE)].map((match) => match[1].toLowerCase());
  container.querySelectorAll("pre > code").forEach((code, i) => {
    // Highlighting works on the sanitized text only (its own spans are made from it);
    // while an answer streams, only its finished blocks are worth the work.
    const language = languages[i];
    if (final || i < languages.length - 1) {
      if (language && hljs.getLanguage(language)) {
        code.innerHTML = hljs.highlight(code.textContent, { language, ignoreIllegals: true }).value;
      } else {
        hljs.highlightElement(code);
      }
      code.classList.add("hljs");
    }
    code.parentElement.append(copyButton("Copy code", () => code.textContent));
  });
}

export function copyButton(label, text) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "button small copy-button";
  button.textContent = label;
  button.addEventListener("click", async () => {
    const ok = await copyText(text());
    button.textContent = ok ? "Copied" : "Copy failed";
    setTimeout(() => { button.textContent = label; }, 1500);
  });
  return button;
}

export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // Without a secure context (a plain-HTTP address other than localhost) there is no
    // clipboard API: a hidden text area and the older command still work.
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "visually-hidden";
    document.body.append(area);
    area.select();
    const ok = document.execCommand("copy");
    area.remove();
    return ok;
  }
}
