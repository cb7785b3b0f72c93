// The playground: a client of the service's public JSON API, nothing else.
//
// A session keeps the model's hidden state, so as the text grows only the new words are sent
// (POST /v1/sessions/{id}/next-word). When earlier text changes, the session is reset and the
// whole text fed again. Every call on the session runs one at a time (`exclusive`).
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN = /[^\s,]+|,/g; // the service's tokenizer: words, and commas even when touching
const DEBOUNCE_MS = 200;

const state = {
  key: "", // the API key: in this variable only, never stored
  models: [],
  model: null,
  words: new Set(), // what the model accepts (lower case)
  sessionId: null,
  fed: null, // tokens the session has been fed; null: unknown (reset and feed it all)
  shown: null, // what the bars show: `${tokens}|${top_k}` of the last answer
  stream: null, // the AbortController of a running continuation
};

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

// --- HTTP ----------------------------------------------------------------------------------

function headers(json) {
  const h = {};
  if (json) h["Content-Type"] = "application/json";
  if (state.key) h.Authorization = `Bearer ${state.key}`;
  return h;
}

async function request(method, path, body, signal) {
  let res;
  try {
    res = await fetch(path, {
      method,
      headers: headers(body !== undefined),
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
    });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, "the service cannot be reached");
  }
  if (!res.ok) throw new ApiError(res.status, await errorDetail(res));
  return res;
}

async function api(method, path, body) {
  const res = await request(method, path, body);
  return res.status === 204 ? null : res.json();
}

// The service's own message: `detail` (a string, or FastAPI's list of field errors).
async function errorDetail(res) {
  const text = await res.text().catch(() => "");
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    return text.trim() || res.statusText || "no answer";
  }
  const detail = body?.detail ?? body?.error?.message ?? body;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail
      .map((e) => {
        const where = (e.loc || []).filter((p) => p !== "body").join(".");
        return where ? `${where}: ${e.msg}` : e.msg;
      })
      .join("; ");
  }
  return JSON.stringify(detail);
}

// --- messages ------------------------------------------------------------------------------

function showError(e) {
  if (e?.name === "AbortError") return;
  const el = $("error");
  if (e instanceof ApiError) {
    const hint = e.status === 401 || e.status === 403 ? " (enter an API key above)" : "";
    el.textContent = e.status ? `Error ${e.status}: ${e.message}${hint}` : `Error: ${e.message}`;
    el.dataset.status = String(e.status);
  } else {
    el.textContent = `Error: ${e?.message ?? e}`;
    el.dataset.status = "";
  }
  el.hidden = false;
  $("bars").classList.add("stale"); // they show the text before the fault
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
  $("bars").classList.remove("stale");
}

function showSession(info) {
  const main = $("playground");
  main.dataset.sessionId = info ? info.session_id : "";
  main.dataset.fed = info && state.fed ? state.fed.join(" ") : ""; // what the bars are for
  $("status").textContent = info
    ? `Session ${info.session_id.slice(0, 8)}… on ${info.model}: ${info.tokens_seen} tokens seen`
    : "";
}

// --- the text and the session --------------------------------------------------------------

function tokensOf(text) {
  return (text.toLowerCase().match(TOKEN) || []);
}

// The tokens to feed now. A last word still being typed ("thir") waits, unless it is a word
// already or cannot become one (then the service names it in its error).
function readyTokens(text, all) {
  const tokens = tokensOf(text);
  if (all || tokens.length === 0 || /[\s,]$/.test(text)) return { tokens, partial: "" };
  const last = tokens[tokens.length - 1];
  const becomesWord = [...state.words].some((w) => w.startsWith(last) && w !== last);
  if (becomesWord && !state.words.has(last)) return { tokens: tokens.slice(0, -1), partial: last };
  return { tokens, partial: "" };
}

function isPrefix(head, tokens) {
  return head.length <= tokens.length && head.every((t, i) => t === tokens[i]);
}

let chain = Promise.resolve();
// Runs `fn` after every call queued before it: one request at a time on the session.
function exclusive(fn) {
  const run = chain.then(fn, fn);
  chain = run.catch(() => {});
  return run;
}

const topK = () => Number($("top-k").value) || 10;

// Bring the session up to the text (creating or resetting it as needed) and show its bars.
async function syncNow(all = false) {
  if (!state.model) return;
  const { tokens, partial } = readyTokens($("text").value, all);
  const key = `${tokens.join(" ")}|${topK()}`;
  if (state.sessionId && state.fed && key === state.shown) {
    highlight(partial);
    return;
  }
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      await feed(tokens);
      state.shown = key;
      clearError();
      highlight(partial);
      return;
    } catch (e) {
      if (e instanceof ApiError && e.status === 404 && state.sessionId && attempt === 0) {
        state.sessionId = null; // expired, or the service restarted: start a new one
        continue;
      }
      showError(e);
      throw e;
    }
  }
}

async function feed(tokens) {
  if (!state.sessionId) {
    const created = await api("POST", "v1/sessions", {
      model: state.model,
      text: tokens.join(" "),
      top_k: topK(),
    });
    state.sessionId = created.session_id;
    state.fed = tokens;
    showSession(created);
    renderBars(created.next);
    return;
  }
  const base = `v1/sessions/${encodeURIComponent(state.sessionId)}`;
  if (!state.fed || !isPrefix(state.fed, tokens)) {
    // earlier text changed: back to the zero state, then the whole text
    await api("POST", `${base}/reset`);
    state.fed = [];
  }
  const fresh = tokens.slice(state.fed.length);
  const answer = await api("POST", `${base}/next-word`, { text: fresh.join(" "), top_k: topK() });
  state.fed = tokens;
  showSession(answer);
  renderBars(answer.next);
}

const debounced = (() => {
  let timer = 0;
  return () => {
    clearTimeout(timer);
    timer = setTimeout(() => exclusive(() => syncNow()).catch(() => {}), DEBOUNCE_MS);
  };
})();

// --- bars ----------------------------------------------------------------------------------

const percent = (p) => `${(p * 100).toFixed(p >= 0.1 ? 1 : 2)}%`;

function renderBars(next) {
  const ol = $("bars");
  ol.replaceChildren();
  ol.classList.remove("stale");
  $("bars-empty").hidden = next.length > 0;
  for (const { word, prob } of next) {
    const li = document.createElement("li");
    li.className = "bar";
    li.dataset.word = word;
    li.dataset.prob = String(prob);
    const button = document.createElement("button");
    button.type = "button";
    button.title = `add “${word}” to the text`;
    const label = document.createElement("span");
    label.className = "word";
    label.textContent = word;
    const value = document.createElement("span");
    value.className = "prob";
    value.textContent = percent(prob);
    const track = document.createElement("span");
    track.className = "track";
    track.setAttribute("aria-hidden", "true");
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.height = `${prob * 100}%`;
    track.append(fill);
    button.append(label, value, track);
    button.addEventListener("click", () => {
      $("text").value = appendWord($("text").value, word);
      exclusive(() => syncNow()).catch(() => {});
    });
    li.append(button);
    ol.append(li);
  }
}

// Bars whose word starts with what is being typed stand out.
function highlight(partial) {
  for (const li of $("bars").children) {
    li.classList.toggle("match", partial !== "" && li.dataset.word.startsWith(partial));
  }
}

function appendWord(text, word) {
  if (word === ",") return text.replace(/\s+$/, "") + ",";
  return text === "" || /\s$/.test(text) ? text + word : `${text} ${word}`;
}

// --- continuation (Server-Sent Events over fetch: EventSource cannot POST) -----------------

async function* sseEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart())
        .join("\n");
      if (data) yield JSON.parse(data);
    }
  }
}

function wordSpan(word, prob) {
  const span = document.createElement("span");
  span.className = "gen";
  span.dataset.prob = String(prob);
  span.style.setProperty("--p", String(prob));
  span.title = `p = ${prob.toFixed(3)}`;
  span.textContent = word;
  const sr = document.createElement("span");
  sr.className = "sr-only";
  sr.textContent = ` (${percent(prob)})`;
  span.append(sr);
  return span;
}

function setStreaming(on) {
  $("continue").disabled = on;
  $("stop").disabled = !on;
  $("text").readOnly = on;
  $("model").disabled = on || state.models.length === 0;
  $("playground").dataset.streaming = on ? "true" : "false";
}

async function continueText() {
  const out = $("continuation");
  out.replaceChildren();
  $("finish").textContent = "";
  try {
    await syncNow(true); // everything typed, last word included
  } catch {
    return;
  }
  const body = {
    text: "",
    max_words: Number($("max-words").value),
    temperature: Number($("temperature").value),
    stream: true,
  };
  if ($("stop-comma").checked) body.stop = [","];
  const controller = new AbortController();
  state.stream = controller;
  setStreaming(true);
  let finish = null;
  let started = false;
  const path = `v1/sessions/${encodeURIComponent(state.sessionId)}/continuation`;
  try {
    const res = await request("POST", path, body, controller.signal);
    started = true;
    for await (const event of sseEvents(res.body)) {
      if (event.error) throw new ApiError(500, event.error);
      if (event.finish_reason) {
        finish = event.finish_reason;
        continue;
      }
      out.append(wordSpan(event.word, event.prob), " ");
      $("text").value = appendWord($("text").value, event.word);
      state.fed.push(event.word);
    }
    $("finish").textContent =
      finish === "stop" ? "Stopped at a stop word." : finish ? "Reached the word limit." : "";
  } catch (e) {
    if (e.name === "AbortError") {
      $("finish").textContent = "Stopped.";
    } else {
      showError(e);
    }
    // the session may have gone further than the words we saw: feed it again
    if (started) state.fed = null;
  } finally {
    state.stream = null;
    setStreaming(false);
  }
  state.shown = null;
  await syncNow().catch(() => {});
}

// --- models and settings -------------------------------------------------------------------

async function loadModels() {
  const select = $("model");
  try {
    const list = await api("GET", "v1/models");
    state.models = list.models;
    select.replaceChildren(
      ...list.models.map((m) => {
        const variant = m.variant === m.name ? "" : ` (${m.variant})`;
        const acc = m.valid_accuracy == null ? "" : ` · accuracy ${m.valid_accuracy.toFixed(3)}`;
        const option = new Option(`${m.name}${variant}${acc}`, m.name);
        option.selected = m.name === (state.model || list.default);
        return option;
      }),
    );
    select.disabled = false;
    clearError();
    await useModel(select.value);
  } catch (e) {
    select.replaceChildren(new Option("no models", ""));
    select.disabled = true;
    showError(e);
  }
}

async function useModel(name) {
  await dropSession();
  state.model = name;
  const detail = await api("GET", `v1/models/${encodeURIComponent(name)}`);
  state.words = new Set(detail.words.map((w) => w.toLowerCase()));
  await syncNow();
}

async function dropSession() {
  const id = state.sessionId;
  state.sessionId = null;
  state.fed = null;
  state.shown = null;
  showSession(null);
  if (id) await api("DELETE", `v1/sessions/${encodeURIComponent(id)}`).catch(() => {});
}

async function resetAll() {
  $("text").value = "";
  $("continuation").replaceChildren();
  $("finish").textContent = "";
  clearError();
  renderBars([]);
  if (state.sessionId) {
    const info = await api("POST", `v1/sessions/${encodeURIComponent(state.sessionId)}/reset`);
    state.fed = [];
    state.shown = `|${topK()}`;
    showSession(info);
  }
  $("text").focus();
}

function main() {
  renderBars([]);
  $("text").addEventListener("input", debounced);
  $("top-k").addEventListener("input", debounced);
  $("text").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      if (!$("continue").disabled) $("continue").click();
    }
  });
  $("model").addEventListener("change", (e) => {
    exclusive(() => useModel(e.target.value)).catch(showError);
  });
  $("api-key").addEventListener("change", (e) => {
    state.key = e.target.value.trim();
    // sessions belong to the key that made them: start again under the new one
    state.sessionId = null;
    state.fed = null;
    exclusive(loadModels).catch(() => {});
  });
  $("continue").addEventListener("click", () => exclusive(continueText).catch(() => {}));
  $("stop").addEventListener("click", () => state.stream?.abort());
  $("reset").addEventListener("click", () => {
    state.stream?.abort();
    exclusive(resetAll).catch(showError);
  });
  exclusive(loadModels).catch(() => {});
}

main();
