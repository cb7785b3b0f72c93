// The playground: a client of the service's public JSON API, nothing else.
//
// A session keeps the model's hidden state, so as the text grows only the new words are sent
// (POST /v1/sessions/{id}/next-word). When earlier text changes, the session is reset and the
// whole text fed again. Every call on a session runs one at a time (`exclusive`).
//
// Branches: each has its own text and session. Fork copies the shown branch's session on the
// server (POST .../fork); Save downloads its signed state (GET .../state) with its text;
// Restore starts a session from such a file (POST /v1/sessions {state}). None of them feeds a
// word again: a branch's bars come from its own session.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN = /[^\s,]+|,/g; // the service's tokenizer: words, and commas even when touching
const DEBOUNCE_MS = 200;

const SAVE_KIND = "human-numbers-playground-session"; // what a saved file says it is

const state = {
  key: "", // the API key: in this variable only, never stored
  models: [],
  words: new Set(), // what the shown branch's model accepts (lower case)
  vocabularies: new Map(), // model name -> its words, fetched once
  branches: [],
  branch: null, // the one shown: its text is in the textarea, its bars on the page
  forks: 0, // how many forks and restores were made: their branches' numbers
  restores: 0,
  stream: null, // the AbortController of a running continuation
  snapshots: true, // false once the service said it has no signing key (501)
};

// One line of work: its text, and the session that has been fed it.
function newBranch(name, model) {
  return {
    name,
    model,
    text: "", // the textarea's text while another branch is shown
    sessionId: null,
    fed: null, // tokens the session has been fed; null: unknown (reset and feed it all)
    shown: null, // what `next` is for: `${tokens}|${top_k}` of the last answer
    next: [], // the last next-word distribution
    info: null, // the last SessionInfo
  };
}

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

// `stale`: the bars show the text before the fault (not so after a failed save or restore).
function showError(e, stale = true) {
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
  if (stale) $("bars").classList.add("stale");
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
  $("bars").classList.remove("stale");
}

// The shown branch's session (`info` its latest SessionInfo, or null: none yet).
function showSession(info) {
  const b = state.branch;
  b.info = info;
  const main = $("playground");
  main.dataset.branch = b.name;
  main.dataset.sessionId = info ? info.session_id : "";
  main.dataset.fed = info && b.fed ? b.fed.join(" ") : ""; // what the bars are for
  const session = info
    ? `session ${info.session_id.slice(0, 8)}… on ${info.model}: ${info.tokens_seen} tokens seen`
    : "no session yet";
  $("status").textContent = `${b.name}: ${session}`;
  setBranchControls();
}

function note(message) {
  $("branch-note").textContent = message;
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
  const b = state.branch;
  if (!b.model) return;
  const { tokens, partial } = readyTokens($("text").value, all);
  const key = `${tokens.join(" ")}|${topK()}`;
  if (b.sessionId && b.fed && key === b.shown) {
    highlight(partial);
    return;
  }
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      await feed(b, tokens);
      b.shown = key;
      clearError();
      highlight(partial);
      return;
    } catch (e) {
      if (e instanceof ApiError && e.status === 404 && b.sessionId && attempt === 0) {
        b.sessionId = null; // expired, or the service restarted: start a new one
        continue;
      }
      showError(e);
      throw e;
    }
  }
}

// `b` is the shown branch: nothing changes it while a call on its session runs (`exclusive`).
async function feed(b, tokens) {
  if (!b.sessionId) {
    const created = await api("POST", "v1/sessions", {
      model: b.model,
      text: tokens.join(" "),
      top_k: topK(),
    });
    b.sessionId = created.session_id;
    b.fed = tokens;
    showAnswer(created);
    return;
  }
  const base = sessionPath(b);
  if (!b.fed || !isPrefix(b.fed, tokens)) {
    // earlier text changed: back to the zero state, then the whole text
    await api("POST", `${base}/reset`);
    b.fed = [];
  }
  const fresh = tokens.slice(b.fed.length);
  const answer = await api("POST", `${base}/next-word`, { text: fresh.join(" "), top_k: topK() });
  b.fed = tokens;
  showAnswer(answer);
}

const sessionPath = (b) => `v1/sessions/${encodeURIComponent(b.sessionId)}`;

// A session's answer (SessionInfo with `next`) for the shown branch.
function showAnswer(answer) {
  state.branch.next = answer.next;
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
  setBranchControls();
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
  const b = state.branch; // the branch controls are off while it streams
  const path = `${sessionPath(b)}/continuation`;
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
      b.fed.push(event.word);
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
    if (started) b.fed = null;
  } finally {
    state.stream = null;
    setStreaming(false);
  }
  b.shown = null;
  await syncNow().catch(() => {});
}

// --- models and settings -------------------------------------------------------------------

async function loadModels() {
  const select = $("model");
  try {
    const list = await api("GET", "v1/models");
    state.models = list.models;
    state.vocabularies.clear(); // another key may see other models
    select.replaceChildren(
      ...list.models.map((m) => {
        const variant = m.variant === m.name ? "" : ` (${m.variant})`;
        const acc = m.valid_accuracy == null ? "" : ` · accuracy ${m.valid_accuracy.toFixed(3)}`;
        const option = new Option(`${m.name}${variant}${acc}`, m.name);
        option.selected = m.name === (state.branch.model || list.default);
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

// The shown branch moves to model `name`: a new session, fed its text.
async function useModel(name) {
  await dropSession();
  state.branch.model = name;
  await loadWords(name);
  await syncNow();
}

async function loadWords(name) {
  let words = state.vocabularies.get(name);
  if (!words) {
    const detail = await api("GET", `v1/models/${encodeURIComponent(name)}`);
    words = new Set(detail.words.map((w) => w.toLowerCase()));
    state.vocabularies.set(name, words);
  }
  state.words = words;
}

async function dropSession() {
  const b = state.branch;
  const id = b.sessionId;
  Object.assign(b, { sessionId: null, fed: null, shown: null, next: [] });
  showSession(null);
  if (id) await api("DELETE", `v1/sessions/${encodeURIComponent(id)}`).catch(() => {});
}

async function resetAll() {
  $("text").value = "";
  $("continuation").replaceChildren();
  $("finish").textContent = "";
  clearError();
  renderBars([]);
  const b = state.branch;
  b.next = [];
  if (b.sessionId) {
    const info = await api("POST", `${sessionPath(b)}/reset`);
    b.fed = [];
    b.shown = `|${topK()}`;
    showSession(info);
  }
  $("text").focus();
}

// --- branches: fork, save, restore ---------------------------------------------------------

function renderBranches() {
  const list = $("branches");
  const focused = list.contains(document.activeElement);
  list.replaceChildren(
    ...state.branches.map((b) => {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "branch";
      button.textContent = b.name;
      button.setAttribute("aria-pressed", String(b === state.branch));
      button.addEventListener("click", () => exclusive(() => showBranch(b)).catch(showError));
      return button;
    }),
  );
  if (focused) list.children[state.branches.indexOf(state.branch)].focus();
  setBranchControls();
}

function setBranchControls() {
  const streaming = state.stream !== null;
  const ready = Boolean(state.branch?.model) && !streaming;
  for (const button of $("branches").children) button.disabled = streaming;
  $("fork").disabled = !ready;
  $("close-branch").disabled = streaming || state.branches.length < 2;
  $("save").disabled = !ready || !state.snapshots;
  $("restore-file").disabled = streaming || !state.snapshots;
}

// Show branch `b` as the page left it: its text, model, bars and session (nothing is fed
// unless its text has words its session has not seen yet).
async function showBranch(b) {
  if (b === state.branch) return;
  state.branch.text = $("text").value;
  state.branch = b;
  $("text").value = b.text;
  $("text").setSelectionRange(b.text.length, b.text.length); // typing goes on at its end
  $("continuation").replaceChildren();
  $("finish").textContent = "";
  clearError();
  if (state.snapshots) note(""); // (that they are off stays said)
  renderBars(b.next);
  showSession(b.info);
  renderBranches();
  $("model").value = b.model;
  await loadWords(b.model);
  await syncNow().catch(() => {}); // a fault is shown; the branch is shown all the same
}

// `fn(branch)` on the shown branch's session once it has the text's words; a session that
// expired meanwhile is made again from the text, once.
async function onSession(fn) {
  for (let attempt = 0; ; attempt++) {
    await syncNow();
    const b = state.branch;
    if (!b.sessionId) throw new Error("there is no model to start a session on");
    try {
      return await fn(b);
    } catch (e) {
      if (e instanceof ApiError && e.status === 404 && attempt === 0) {
        b.sessionId = null;
        continue;
      }
      throw e;
    }
  }
}

async function forkBranch() {
  const from = state.branch;
  const info = await onSession((b) => api("POST", `${sessionPath(b)}/fork`));
  // the copy's state is the source's: so are the words it has seen and its bars
  const fork = {
    ...from,
    name: `fork ${++state.forks}`,
    text: $("text").value,
    sessionId: info.session_id,
    fed: [...from.fed],
  };
  state.branches.push(fork);
  await showBranch(fork);
  showSession(info);
  note(`Forked “${from.name}” as “${fork.name}”, a session of its own.`);
}

async function closeBranch() {
  const b = state.branch;
  const at = state.branches.indexOf(b);
  if (state.branches.length < 2) return;
  await showBranch(state.branches[at > 0 ? at - 1 : 1]);
  state.branches.splice(at, 1);
  renderBranches();
  note(`Closed “${b.name}”.`);
  if (b.sessionId) await api("DELETE", sessionPath(b)).catch(() => {});
}

const sameTokens = (a, b) => a.length === b.length && isPrefix(a, b);
const textOf = (tokens) => tokens.join(" ").replace(/ ,/g, ",");

async function saveBranch() {
  let doc;
  try {
    doc = await onSession((b) => api("GET", `${sessionPath(b)}/state`));
  } catch (e) {
    if (e instanceof ApiError && e.status === 501) return snapshotsOff(e);
    throw e;
  }
  const b = state.branch;
  const typed = $("text").value;
  // the text as typed if the session has seen all of it, else the words it has seen
  const text = sameTokens(tokensOf(typed), b.fed) ? typed : textOf(b.fed);
  const saved = {
    kind: SAVE_KIND,
    saved_at: new Date().toISOString(),
    branch: b.name,
    text,
    state: doc,
  };
  const stamp = saved.saved_at.slice(0, 19).replace(/:/g, "-");
  const name = `human-numbers-session-${doc.model.replace(/[^\w.-]+/g, "-")}-${stamp}.json`;
  download(name, `${JSON.stringify(saved, null, 2)}\n`);
  note(`Saved “${b.name}” (${doc.tokens_seen} tokens seen) as ${name}.`);
}

function download(name, text) {
  const url = URL.createObjectURL(new Blob([text], { type: "application/json" }));
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

// A file of Save's, checked before anything is sent: its text must be what its state has seen
// (the text is not signed; the state is, and the service checks it).
function readSave(text, name) {
  let saved;
  try {
    saved = JSON.parse(text);
  } catch {
    throw new Error(`${name} is not JSON: choose a file saved by this page's Save`);
  }
  const doc = saved?.state;
  if (typeof saved?.text !== "string" || typeof doc !== "object" || doc === null) {
    throw new Error(`${name} is not a session saved by this page: it has no "text" and "state"`);
  }
  const tokens = tokensOf(saved.text);
  const last = Array.isArray(doc.last_words) ? doc.last_words : [];
  if (
    (Number.isInteger(doc.tokens_seen) && tokens.length !== doc.tokens_seen) ||
    !sameTokens(tokens.slice(Math.max(0, tokens.length - last.length)), last)
  ) {
    throw new Error(
      `${name}: its text (${tokens.length} tokens) is not the text its state has seen ` +
        `(${doc.tokens_seen} tokens): was the text changed after saving?`,
    );
  }
  return saved;
}

// A saved session as a new branch: the current ones stay as they are.
async function restoreFile(file) {
  let saved;
  try {
    saved = readSave(await file.text(), file.name);
  } catch (e) {
    return showError(e, false);
  }
  let created;
  try {
    // the model and version come with the state; the text is not fed again
    created = await api("POST", "v1/sessions", { state: saved.state, top_k: topK() });
  } catch (e) {
    return e instanceof ApiError && e.status === 501 ? snapshotsOff(e) : showError(e, false);
  }
  const b = newBranch(`restored ${++state.restores}`, created.model);
  Object.assign(b, {
    text: saved.text,
    sessionId: created.session_id,
    fed: tokensOf(saved.text),
    next: created.next,
    info: created,
  });
  b.shown = `${b.fed.join(" ")}|${topK()}`;
  state.branches.push(b);
  await showBranch(b);
  note(`Restored ${file.name} as “${b.name}”: ${created.tokens_seen} tokens seen.`);
}

// The service has no signing key: Save and Restore cannot work there, and say so.
function snapshotsOff(e) {
  state.snapshots = false;
  setBranchControls();
  note(`Save and Restore are off (error ${e.status}): ${e.message}`);
}

function main() {
  state.branch = newBranch("main", null);
  state.branches.push(state.branch);
  renderBranches();
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
    // sessions belong to the key that made them: every branch starts again under the new one
    for (const b of state.branches) {
      Object.assign(b, { sessionId: null, fed: null, shown: null, info: null });
    }
    exclusive(loadModels).catch(() => {});
  });
  $("continue").addEventListener("click", () => exclusive(continueText).catch(() => {}));
  $("stop").addEventListener("click", () => state.stream?.abort());
  $("reset").addEventListener("click", () => {
    state.stream?.abort();
    exclusive(resetAll).catch(showError);
  });
  const failed = (e) => showError(e, false);
  $("fork").addEventListener("click", () => exclusive(forkBranch).catch(failed));
  $("close-branch").addEventListener("click", () => exclusive(closeBranch).catch(failed));
  $("save").addEventListener("click", () => exclusive(saveBranch).catch(failed));
  $("restore-file").addEventListener("change", (e) => {
    const file = e.target.files[0];
    e.target.value = ""; // the same file may be chosen again
    if (file) exclusive(() => restoreFile(file)).catch(failed);
  });
  exclusive(loadModels).catch(() => {});
}

main();
