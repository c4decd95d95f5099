// The qwq chat page: talks to this server's OpenAI-compatible API (streamed chat completions), shows the
// model's reasoning apart from its answer, and asks the server to render the answer's markdown and math.
// The models to pick from come from /api/tags; conversations are kept in this browser (localStorage).
"use strict";

const $ = (id) => document.getElementById(id);
const SETTINGS_KEY = "qwq.settings";
const MODEL_KEY = "qwq.model";
const CONVERSATIONS_KEY = "qwq.conversations"; // id -> {title, model, messages, updated}
const CURRENT_KEY = "qwq.conversation";
const SETTING_FIELDS = [
  "system-prompt", "temperature", "max-tokens", "api-key", "think-budget", "loop-action", "language-mode", "language",
];

const chat = {
  id: newId(),
  model: null,
  messages: [], // what the model sees next turn: user and assistant answers (never the reasoning)
  controller: null, // aborts the reply being streamed
};

// ---------- settings ----------

function loadSettings() {
  const saved = JSON.parse(localStorage.getItem(SETTINGS_KEY) || "{}");
  for (const field of SETTING_FIELDS) {
    if (saved[field] !== undefined) $(field).value = saved[field];
  }
}

function saveSettings() {
  const values = Object.fromEntries(SETTING_FIELDS.map((field) => [field, $(field).value]));
  localStorage.setItem(SETTINGS_KEY, JSON.stringify(values));
}

function toggleSettings(open = $("settings").hidden) {
  $("settings").hidden = !open;
  $("toggle-settings").setAttribute("aria-expanded", String(open));
}

/** The sampling fields of a request, or an error message naming the bad field. */
function samplingParameters() {
  const parameters = {};
  const temperature = $("temperature").value.trim();
  if (temperature !== "") {
    const value = Number(temperature);
    if (!Number.isFinite(value) || value < 0 || value > 2) return { error: "Temperature must be a number from 0 to 2." };
    parameters.temperature = value;
  }
  const maxTokens = $("max-tokens").value.trim();
  if (maxTokens !== "") {
    const value = Number(maxTokens);
    if (!Number.isInteger(value) || value < 1) return { error: "Max tokens must be a whole number of at least 1." };
    parameters.max_tokens = value;
  }
  const budget = $("think-budget").value.trim();
  if (budget !== "") {
    const value = Number(budget);
    if (!Number.isInteger(value) || value < 1) return { error: "Thinking budget must be a whole number of at least 1." };
    parameters.thinking_token_budget = value;
  }
  const loop = $("loop-action").value;
  if (loop) parameters.repetition_detection = { action: loop };
  const mode = $("language-mode").value;
  if (mode !== "off") {
    const language = $("language").value.trim();
    parameters.language_guard = { mode, ...(language ? { language } : {}) };
  }
  return { parameters };
}

/** What the reasoning controls reported at the end of a reply, in a line. */
function controlsSummary(report) {
  const parts = [];
  if (report.loops?.detected) parts.push(`${report.loops.detected} loop(s) cut (${report.loops.tokens_cut} tokens)`);
  if (report.thinking) parts.push(`thought ${report.thinking.tokens} tokens`);
  if (report.language) parts.push(`other scripts: ${(100 * report.language.mixing_rate).toFixed(2)}% of letters`);
  if (report.guard?.blocked) parts.push(`blocked by the guard (${report.guard.blocked})`);
  return parts.join(" · ");
}

// ---------- conversations kept in the browser ----------

function newId() {
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
}

function storedConversations() {
  try {
    return JSON.parse(localStorage.getItem(CONVERSATIONS_KEY) || "{}");
  } catch {
    return {}; // unreadable: start afresh rather than fail
  }
}

/** Keep the conversation so far (called after each exchange); the reasoning is not kept, the answers are. */
function saveConversation() {
  if (!chat.messages.length) return;
  const all = storedConversations();
  const title = chat.messages[0].content.slice(0, 60);
  all[chat.id] = { title, model: chat.model, messages: chat.messages, updated: Date.now() };
  localStorage.setItem(CONVERSATIONS_KEY, JSON.stringify(all));
  localStorage.setItem(CURRENT_KEY, chat.id);
  fillConversationPicker();
}

function fillConversationPicker() {
  const picker = $("conversation-picker");
  const entries = Object.entries(storedConversations()).sort((a, b) => b[1].updated - a[1].updated);
  const options = [new Option("New conversation", "")];
  for (const [id, saved] of entries) options.push(new Option(saved.title, id));
  picker.replaceChildren(...options);
  picker.value = entries.some(([id]) => id === chat.id) ? chat.id : "";
}

/** Show a kept conversation and go on from it. */
function openConversation(id) {
  const saved = storedConversations()[id];
  if (!saved) return;
  chat.controller?.abort();
  chat.id = id;
  chat.messages = [...saved.messages];
  $("messages").replaceChildren();
  for (const message of chat.messages) {
    if (message.role === "user") addUserMessage(message.content);
    else {
      const view = addAssistantMessage();
      view.article.dataset.state = "done";
      view.answer.update(message.content);
    }
  }
  if (saved.model && [...$("model-picker").options].some((option) => option.value === saved.model)) {
    chooseModel(saved.model);
  }
  localStorage.setItem(CURRENT_KEY, id);
  fillConversationPicker();
}

// ---------- talking to the server ----------

function headers() {
  const result = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) result.Authorization = `Bearer ${key}`;
  return result;
}

async function errorText(response) {
  try {
    const body = await response.json();
    const error = body.error;
    return typeof error === "string" ? error : (error?.message ?? `${response.status} ${response.statusText}`);
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function chooseModel(name) {
  chat.model = name || null;
  $("model-picker").value = name ?? "";
  $("model-name").textContent = chat.model ?? "no model";
  if (chat.model) localStorage.setItem(MODEL_KEY, chat.model);
}

/** The server's models (/api/tags: those given at start first) into the picker; the last one chosen here is
 * chosen again if the server still serves it. */
async function connect() {
  try {
    const response = await fetch("api/tags", { headers: headers() });
    if (!response.ok) {
      const message = await errorText(response);
      $("model-name").textContent = "not connected";
      setStatus(response.status === 401 ? `${message} — enter the key under Settings.` : message, true);
      if (response.status === 401) toggleSettings(true);
      return;
    }
    const names = (await response.json()).models.map((model) => model.name);
    $("model-picker").replaceChildren(...names.map((name) => new Option(name, name)));
    const kept = localStorage.getItem(MODEL_KEY);
    chooseModel(names.includes(chat.model) ? chat.model : names.includes(kept) ? kept : names[0]);
    setStatus(names.length ? "" : "The server serves no model yet: pull one (qwq pull NAME).");
  } catch (error) {
    $("model-name").textContent = "not connected";
    setStatus(`Cannot reach the server: ${error.message}`, true);
  }
}

/** The JSON events of a server-sent-event stream, until `data: [DONE]`. */
async function* serverEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replaceAll("\r\n", "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart())
        .join("\n");
      if (data === "[DONE]") return;
      if (data) yield JSON.parse(data);
    }
  }
}

async function renderMarkdown(text) {
  const response = await fetch("ui/render", { method: "POST", headers: headers(), body: JSON.stringify({ text }) });
  if (!response.ok) throw new Error(await errorText(response));
  return (await response.json()).html;
}

// ---------- the conversation view ----------

function scrollToEnd() {
  const main = $("messages");
  main.scrollTop = main.scrollHeight;
}

function addUserMessage(text) {
  const article = document.createElement("article");
  article.className = "message user";
  article.textContent = text;
  $("messages").append(article);
  scrollToEnd();
}

/** Markdown rendered while it streams: one request at a time, always for the latest text. */
class MarkdownView {
  constructor(element) {
    this.element = element;
    this.text = "";
    this.shown = "";
    this.rendering = null;
  }

  update(text) {
    this.text = text;
    if (!this.rendering) this.rendering = this.catchUp().finally(() => (this.rendering = null));
  }

  async catchUp() {
    while (this.shown !== this.text) {
      const text = this.text;
      try {
        this.element.innerHTML = await renderMarkdown(text); // server-sanitized HTML
      } catch {
        this.element.textContent = text; // plain text beats nothing
      }
      this.shown = text;
      scrollToEnd();
    }
  }

  async finished() {
    while (this.rendering) await this.rendering;
  }
}

function addAssistantMessage() {
  const article = document.createElement("article");
  article.className = "message assistant";
  article.dataset.state = "streaming";
  article.innerHTML = `
    <details class="reasoning" hidden><summary>Thinking…</summary><div class="reasoning-text"></div></details>
    <div class="answer"></div>
    <p class="note" hidden></p>
    <ul class="notices"></ul>
    <footer class="stats"></footer>`;
  $("messages").append(article);
  scrollToEnd();
  return {
    article,
    reasoning: article.querySelector(".reasoning"),
    reasoningText: new MarkdownView(article.querySelector(".reasoning-text")),
    answer: new MarkdownView(article.querySelector(".answer")),
    note: article.querySelector(".note"),
    notices: article.querySelector(".notices"),
    stats: article.querySelector(".stats"),
  };
}

function showNote(view, text, isError = false) {
  view.note.hidden = false;
  view.note.textContent = text;
  view.note.classList.toggle("error", isError);
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
}

// ---------- one exchange ----------

async function send(text) {
  const { parameters, error } = samplingParameters();
  if (error) {
    setStatus(error, true);
    toggleSettings(true);
    return;
  }
  if (!chat.model) await connect();
  if (!chat.model) return;
  setStatus("");
  $("prompt").value = ""; // only now: a refused message stays in the box
  addUserMessage(text);
  chat.messages.push({ role: "user", content: text });
  const system = $("system-prompt").value.trim();
  const request = {
    model: chat.model,
    messages: system ? [{ role: "system", content: system }, ...chat.messages] : [...chat.messages],
    stream: true,
    stream_options: { include_usage: true },
    ...parameters,
  };

  const view = addAssistantMessage();
  chat.controller = new AbortController();
  setBusy(true);
  const started = performance.now();
  let reasoning = "";
  let answer = "";
  let firstToken = null;
  let thinkingEnded = null;
  let finishReason = null;
  let failureMessage = null;
  let usage = null;
  let controls = null;
  let outcome = "done";
  try {
    const response = await fetch("v1/chat/completions", {
      method: "POST",
      headers: headers(),
      body: JSON.stringify(request),
      signal: chat.controller.signal,
    });
    if (!response.ok) throw new Error(await errorText(response));
    for await (const event of serverEvents(response.body)) {
      if (event.error) throw new Error(event.error.message ?? String(event.error));
      if (event.usage) usage = event.usage;
      const choice = event.choices?.[0];
      if (!choice) continue;
      const extra = choice.qwq ?? {};
      if (extra.retracted) {
        // a control took back text it had streamed (a loop's repeats): drop it before adding what follows
        reasoning = reasoning.slice(0, reasoning.length - extra.retracted.reasoning);
        answer = answer.slice(0, answer.length - extra.retracted.content);
        view.reasoningText.update(reasoning);
        view.answer.update(answer);
      }
      for (const notice of extra.notices ?? []) {
        const item = document.createElement("li");
        item.textContent = notice.message;
        item.dataset.kind = notice.kind;
        view.notices.append(item);
      }
      if (extra.controls) controls = extra.controls;
      const delta = choice.delta ?? {};
      if (delta.reasoning_content || delta.content) firstToken ??= performance.now();
      if (delta.reasoning_content) {
        reasoning += delta.reasoning_content;
        if (view.reasoning.hidden) {
          view.reasoning.hidden = false;
          view.reasoning.open = true;
        }
        view.reasoningText.update(reasoning);
      }
      if (delta.content) {
        if (reasoning && thinkingEnded === null) thinkingEnded = performance.now();
        answer += delta.content;
        view.answer.update(answer);
      }
      if (choice.finish_reason) finishReason = choice.finish_reason;
      if (choice.finish_reason === "error") failureMessage = choice.error?.message ?? "generation failed";
    }
  } catch (failure) {
    if (failure.name === "AbortError") {
      outcome = "stopped";
    } else {
      outcome = "error";
      showNote(view, failure.message, true);
    }
  } finally {
    chat.controller = null;
    setBusy(false);
  }

  await Promise.all([view.reasoningText.finished(), view.answer.finished()]);
  if (reasoning) {
    const seconds = (((thinkingEnded ?? performance.now()) - started) / 1000).toFixed(1);
    view.reasoning.querySelector("summary").textContent = `Thought for ${seconds} s`;
    view.reasoning.open = !answer; // fold the reasoning away once there is an answer to read
  }
  if (outcome === "done" && finishReason === "error") {
    outcome = "error";
    showNote(view, `The model failed: ${failureMessage}`, true);
  } else if (outcome === "stopped" || finishReason === "abort") showNote(view, "Stopped.");
  else if (outcome === "done" && !answer && reasoning)
    showNote(view, "The reply ended inside its reasoning: no final answer.");
  else if (finishReason === "length") showNote(view, "Cut off at the token limit.");
  else if (finishReason === "loop") showNote(view, "Stopped: the reply kept repeating itself.");
  else if (finishReason === "budget") showNote(view, "Stopped: no answer within the answer budget.");
  else if (finishReason === "content_filter") showNote(view, "Stopped: the safety guard blocked the reply.", true);
  if (usage && firstToken !== null) {
    const seconds = (performance.now() - firstToken) / 1000;
    const rate = seconds > 0 ? (usage.completion_tokens / seconds).toFixed(1) : "–";
    view.stats.textContent = `${usage.prompt_tokens} prompt tokens · ${usage.completion_tokens} generated · ${rate} tok/s`;
  }
  if (controls) view.stats.textContent += (view.stats.textContent ? " · " : "") + controlsSummary(controls);
  view.article.dataset.state = outcome;
  if (outcome === "error") chat.messages.pop(); // the model never answered: let the user try again
  else chat.messages.push({ role: "assistant", content: answer });
  saveConversation();
}

// ---------- wiring ----------

function startNewChat() {
  chat.controller?.abort();
  chat.id = newId();
  chat.messages = [];
  $("messages").replaceChildren();
  localStorage.removeItem(CURRENT_KEY);
  fillConversationPicker();
  setStatus("");
  $("prompt").focus();
}

document.addEventListener("DOMContentLoaded", () => {
  loadSettings();
  for (const field of SETTING_FIELDS) $(field).addEventListener("change", saveSettings);
  $("api-key").addEventListener("change", connect);
  $("toggle-settings").addEventListener("click", () => toggleSettings());
  $("settings").addEventListener("submit", (event) => event.preventDefault());
  $("new-chat").addEventListener("click", startNewChat);
  $("model-picker").addEventListener("change", (event) => chooseModel(event.target.value));
  $("conversation-picker").addEventListener("change", (event) => {
    if (event.target.value) openConversation(event.target.value);
    else startNewChat();
  });
  $("stop").addEventListener("click", () => chat.controller?.abort());
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("prompt").value.trim();
    if (text && !chat.controller) send(text);
  });
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  fillConversationPicker();
  connect().then(() => {
    const current = localStorage.getItem(CURRENT_KEY);
    if (current) openConversation(current); // a reload goes on where it was
  });
  $("prompt").focus();
});
