// charlm playground: streams /generate, charts /next, and draws /activations and /history.
"use strict";

const $ = (id) => document.getElementById(id);
const SVGNS = "http://www.w3.org/2000/svg";
const GATE_COLOURS = { i: "#2d8a4e", f: "#2d5fd3", o: "#c7512c", r: "#8a3fc2", z: "#2d8a8a" };
// what the cell view can colour by: the unit's value, or one of its gates, named by role
const VALUE_LABELS = { tanh_c: "tanh(c): the memory", h: "h: the output" };
const GATE_LABELS = {
  i: "input gate i: the write filter", f: "forget gate f: the eraser (0 erases)",
  o: "output gate o: the read filter", r: "reset gate r", z: "update gate z",
};

// the cell view's colour scale: white at 0, RED at +1, BLUE at -1, on straight lines in sRGB.
// Every channel moves one way along each line, so the darkest colours are the ends, and the
// ends keep 5:1 contrast with the view's #111 text (WCAG asks 4.5:1; tests check the scale)
const WHITE = [255, 255, 255], RED = [230, 80, 60], BLUE = [80, 130, 240];
// the API's field names, as the boxes on this page are labelled
const FIELD_WORDS = {
  inputs: "the prompt", prompt: "the text", text: "the text", model: "the model",
  "parameters.temperature": "Temperature", "parameters.top_k": "Top-k",
  "parameters.top_p": "Top-p", "parameters.max_new_tokens": "Length", "parameters.seed": "Seed",
  start: "the first character shown", stop: "the last character shown",
};

const state = {
  info: null,            // GET /info
  text: "",              // prompt + generated: what the output shows
  promptLength: 0,
  pointed: null,         // index of the character pointed at, or null: the end
  controller: null,      // the AbortController of the stream in flight
  acts: null,            // the last /activations answer, its values decoded
  maxActChars: 200,      // the most characters one /activations answer holds (GET /history)
  nextSeq: 0,            // answers to older /next requests are dropped
  actSeq: 0,             // and to older /activations requests
  history: null,         // the last GET /history answer, redrawn when the width changes
};

function show(ch) {
  // characters that would vanish in a chart
  return ch === "\n" ? "⏎" : ch === " " ? "␣" : ch === "\t" ? "⇥" : ch;
}

function setStatus(msg, isError = false) {
  $("status").textContent = msg;
  $("status").classList.toggle("error", isError);
}

function withKey(headers) {
  const key = sessionStorage.getItem("charlm-api-key");
  return key ? { ...headers, Authorization: `Bearer ${key}` } : headers;
}

async function authorizedFetch(path, opts = {}) {
  // a server started with an API key answers 401: ask for the key once, keep it for the tab
  let resp = await fetch(path, { ...opts, headers: withKey(opts.headers || {}) });
  if (resp.status === 401) {
    const key = window.prompt("This server needs an API key:");
    if (key) {
      sessionStorage.setItem("charlm-api-key", key);
      resp = await fetch(path, { ...opts, headers: withKey(opts.headers || {}) });
    }
  }
  return resp;
}

function plain(message, status) {
  // the server's message in the words of this page: its boxes, not the API's field names
  if (status === 429) return "The server is busy with other requests; try again in a moment.";
  if (status === 413) return "That is more text than the server takes in one request.";
  if (status === 401) return "This server needs an API key; reload the page to give it.";
  let m = String(message || `the server answered ${status}`)
    .replace(/`([\w.]+)`/g, (_, f) => FIELD_WORDS[f] || f.replace(/^parameters\./, "").replace(/_/g, " "))
    .replace(/must be in [[(]([^,]+), ([^\]]+)\], got (.+)$/, "must be between $1 and $2 (it is $3)")
    .replace(/has characters outside the vocabulary of model '([^']+)': (.+)$/,
      "has characters the model “$1” does not know: $2")
    .replace(/; the limit is (\d+)/, "; the most the server takes is $1");
  m = m.charAt(0).toUpperCase() + m.slice(1);
  return /[.!?]$/.test(m) ? m : `${m}.`;
}

async function api(path, body) {
  const opts = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  let resp;
  try {
    resp = await authorizedFetch(path, opts);
  } catch (e) {
    throw new Error("Could not reach the server: is it still running?");
  }
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new Error(plain(data.error, resp.status));
  return data;
}

function model() {
  return $("model").value || undefined;
}

function maxPrompt() {
  return state.info ? state.info.limits.max_prompt_chars : 200;
}

function card() {
  // the chosen model's card from /info
  return state.info ? state.info.models.find((m) => m.name === $("model").value) : undefined;
}

function unknownChars(text) {
  // the characters of text that the chosen model has never seen, each once
  const c = card();
  if (!c) return [];
  const vocab = new Set(c.vocab);
  return [...new Set([...text].filter((ch) => !vocab.has(ch)))];
}

function readText() {
  // the text as the model reads it: unknown characters dropped when the server drops them
  if (!state.info || state.info.limits.unknown_chars !== "drop") return state.text;
  const unknown = new Set(unknownChars(state.text));
  return [...state.text].filter((ch) => !unknown.has(ch)).join("");
}

function checkPrompt(prompt) {
  // the server's refusals, said before asking it: the prompt's length and its characters
  if (prompt.length > maxPrompt()) {
    return `The prompt has ${prompt.length.toLocaleString("en")} characters; this server takes `
      + `at most ${maxPrompt().toLocaleString("en")}.`;
  }
  const unknown = unknownChars(prompt);
  if (unknown.length && state.info.limits.unknown_chars !== "drop") {
    const list = unknown.slice(0, 10).map((ch) => `“${show(ch)}”`).join(", ");
    return `The prompt has characters the model “${$("model").value}” does not know: ${list}. `
      + "Remove them, or pick another model.";
  }
  return null;
}

// ---- write: the /generate event stream ----

function renderOutput() {
  const out = $("output");
  out.replaceChildren();
  for (let k = 0; k < state.text.length; k++) out.append(charSpan(k));
}

function charSpan(k) {
  const s = document.createElement("span");
  s.textContent = state.text[k];
  s.dataset.i = k;
  if (k < state.promptLength) s.className = "prompt";
  return s;
}

function append(chars) {
  const start = state.text.length;
  state.text += chars;
  const out = $("output");
  const atBottom = out.scrollTop + out.clientHeight >= out.scrollHeight - 4;
  for (let k = start; k < state.text.length; k++) out.append(charSpan(k));
  if (atBottom) out.scrollTop = out.scrollHeight;  // follow the text unless the user scrolled up
}

function parameters() {
  const t = parseFloat($("temperature").value);
  const p = { max_new_tokens: parseInt($("length").value, 10) || 100 };
  if (!(t > 0)) return p;  // temperature 0: greedy
  p.do_sample = true;
  p.temperature = t;
  const k = parseInt($("top-k").value, 10);
  if (k > 0) p.top_k = k;
  const topP = parseFloat($("top-p").value);
  if (topP > 0 && topP < 1) p.top_p = topP;
  const seed = parseInt($("seed").value, 10);
  if (seed >= 0) p.seed = seed;
  return p;
}

async function generate(event) {
  event.preventDefault();
  if (state.controller) return;
  const prompt = $("prompt").value;
  setStatus("");  // a new submit: the last one's error no longer applies
  const problem = checkPrompt(prompt);
  if (problem) {
    setStatus(problem, true);
    return;
  }
  state.text = prompt;
  state.promptLength = prompt.length;
  state.pointed = null;
  renderOutput();
  cellsWaiting("The cell view reads the text when it is written.");
  const controller = new AbortController();
  state.controller = controller;
  $("generate").disabled = true;
  $("stop").disabled = false;
  setStatus("generating…");
  let n = 0;
  try {
    const resp = await authorizedFetch("/generate", {
      method: "POST", signal: controller.signal,
      headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
      body: JSON.stringify({ inputs: prompt, model: model(), stream: true, parameters: parameters() }),
    });
    if (!resp.ok) {
      const err = await resp.json().catch(() => ({}));
      throw new Error(plain(err.error, resp.status));
    }
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "", lastYield = performance.now();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      if (performance.now() - lastYield > 30) {
        // a fast stream resolves reads as microtasks: yield so the page paints and Stop works
        await new Promise((resolve) => setTimeout(resolve, 0));
        lastYield = performance.now();
      }
      buffer += decoder.decode(value, { stream: true });
      const events = buffer.split("\n\n");
      buffer = events.pop();  // the last piece may be half an event
      let chars = "";
      for (const ev of events) {
        for (const line of ev.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") continue;
          const msg = JSON.parse(data);
          if (msg.error) throw new Error(plain(msg.error));
          if (msg.token) { chars += msg.token.text; n++; }
        }
      }
      if (chars) {
        append(chars);
        setStatus(`generating… ${n} characters`);
      }
    }
    setStatus(`done: ${n} characters`);
  } catch (e) {
    if (e.name === "AbortError") setStatus(`stopped after ${n} characters`);
    else if (e instanceof TypeError) setStatus("The connection to the server was lost.", true);
    else setStatus(e.message, true);
  } finally {
    state.controller = null;
    $("generate").disabled = false;
    $("stop").disabled = true;
  }
  refreshNext();
  analyse();
}

function invalidField(e) {
  // the browser's own check refused the submit (no submit event follows): the old error goes,
  // and the first field it refused is named as its box is labelled
  if (state.invalidShown) return;
  state.invalidShown = true;
  const label = e.target.closest("label");
  const name = label ? label.firstChild.textContent.trim() : "The prompt";
  setStatus(`${name}: ${e.target.validationMessage}`, true);
}

function stop() {
  // aborting the fetch closes the connection, and the server cancels the stream
  if (state.controller) state.controller.abort();
}

// ---- the next-character view ----

function point(k) {
  const out = $("output");
  const old = out.querySelector(".pointed");
  if (old) old.classList.remove("pointed");
  state.pointed = k;
  if (k !== null) {
    const span = out.children[k];
    if (span) {
      span.classList.add("pointed");
      span.scrollIntoView({ block: "nearest" });
      // one column (a phone): the chart sits below the text; bring it into view with it
      if (!matchMedia("(min-width: 900px)").matches) $("next").scrollIntoView({ block: "nearest" });
    }
  }
  refreshNext();
}

async function refreshNext() {
  const end = state.pointed === null ? state.text.length : state.pointed + 1;
  const context = state.text.slice(0, end).slice(-maxPrompt());
  const seq = ++state.nextSeq;
  const tail = context.slice(-24);
  let where = state.pointed === null
    ? `After the end of the text: “…${tail}”`
    : `After character ${state.pointed} (“${show(state.text[state.pointed])}”): “…${tail}”`;
  if (context.length < end) {
    where += ` (read from its last ${context.length.toLocaleString("en")} characters, `
      + "the most the server takes as a prompt)";
  }
  $("next-context").textContent = where;
  const chart = $("next-chart");
  chart.setAttribute("aria-busy", "true");
  try {
    const temperature = parseFloat($("temperature").value);
    const body = { prompt: context, model: model(), top_n: 10 };
    if (temperature > 0) body.temperature = temperature;
    const data = await api("/next", body);
    if (seq !== state.nextSeq) return;
    drawNext(data);
  } catch (e) {
    if (seq !== state.nextSeq) return;
    chart.replaceChildren();
    chart.append(message(e.message, "error"));
    $("next-entropy").textContent = "";
  }
  chart.setAttribute("aria-busy", "false");
}

function message(text, className) {
  const p = document.createElement("p");
  p.className = className;
  p.textContent = text;
  return p;
}

function drawNext(data) {
  const chart = $("next-chart");
  chart.replaceChildren();
  const top = data.distribution[0] ? data.distribution[0].prob : 1;
  for (const d of data.distribution) {
    const row = document.createElement("div");
    row.className = "row";
    row.setAttribute("role", "listitem");
    row.setAttribute("aria-label", `${JSON.stringify(d.char)}: ${(100 * d.prob).toFixed(1)} percent`);
    const ch = document.createElement("span");
    ch.className = "ch";
    ch.textContent = show(d.char);
    const track = document.createElement("div");
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = `${(100 * d.prob) / top}%`;
    track.append(bar);
    const p = document.createElement("span");
    p.className = "p";
    p.textContent = `${(100 * d.prob).toFixed(1)}%`;
    row.append(ch, track, p);
    chart.append(row);
  }
  $("next-entropy").textContent = `entropy ${data.entropy_bits.toFixed(2)} bits`;
}

function outputKeys(e) {
  const n = state.text.length;
  if (!n) return;
  let k = state.pointed === null ? n - 1 : state.pointed;
  if (e.key === "ArrowLeft") k = Math.max(0, k - 1);
  else if (e.key === "ArrowRight") k = Math.min(n - 1, k + 1);
  else if (e.key === "Home") k = 0;
  else if (e.key === "End") k = n - 1;
  else if (e.key === "Escape") k = null;
  else return;
  e.preventDefault();
  point(k);
}

// ---- the cell view ----

function cellsWaiting(text, busy = false) {
  // nothing from an older text stays up while the view waits for a new one
  state.acts = null;
  $("cells").setAttribute("aria-busy", busy ? "true" : "false");
  $("cell-text").replaceChildren(message(text, busy ? "loading" : "help"));
  $("ranking").replaceChildren();
  $("saturation").replaceChildren();
  $("cells-window").textContent = "";
  $("cell-name").textContent = "";
}

function windowFor(n) {
  // which characters to ask for: all of them, or maxActChars from "From character"
  const limit = state.maxActChars;
  $("window-label").hidden = n <= limit;
  if (n <= limit) return [0, n];
  const input = $("window-start");
  input.max = n - limit + 1;
  let first = parseInt(input.value, 10);
  if (!(first >= 1) || state.windowText !== state.text) first = n - limit + 1;  // new text: its end
  first = Math.min(Math.max(first, 1), n - limit + 1);
  input.value = first;
  state.windowText = state.text;
  return [first - 1, first - 1 + limit];
}

async function analyse() {
  const seq = ++state.actSeq;
  const read = readText();
  if (!read.length) {
    cellsWaiting("No text to read yet: write a prompt and Generate.");
    return;
  }
  const [start, stop] = windowFor(read.length);
  cellsWaiting(`Reading ${read.length.toLocaleString("en")} characters…`, true);
  let data;
  try {
    data = await api("/activations", { text: state.text, model: model(), start, stop });
  } catch (e) {
    if (seq === state.actSeq) {
      cellsWaiting("");
      $("cell-text").replaceChildren(message(e.message, "error"));
    }
    return;
  }
  if (seq !== state.actSeq) return;  // the text or the model changed meanwhile
  $("cells").setAttribute("aria-busy", "false");
  state.acts = decode(data);
  state.acts.features = windowFeatures(read, data.start, data.stop);
  describeWindow(data);
  const layer = $("layer");
  const keep = layer.value;
  layer.replaceChildren();
  for (let l = 0; l < data.n_layer; l++) layer.add(new Option(`layer ${l + 1}`, String(l)));
  layer.value = keep && keep < data.n_layer ? keep : "0";
  $("cell").max = data.n_hidden - 1;
  const what = $("show");
  const keepShow = what.value;
  what.replaceChildren(new Option(VALUE_LABELS[data.values] || data.values, data.values));
  for (const g of data.gates) what.add(new Option(GATE_LABELS[g] || `gate ${g}`, g));
  what.value = [data.values, ...data.gates].includes(keepShow) ? keepShow : data.values;
  drawCell();
  drawRanking();
  drawSaturation();
}

function decode(data) {
  // each quantity's base64 int8 block as floats: cell u's values are [u*T, (u+1)*T)
  const T = data.stop - data.start;
  const layers = data.layers.map((layer) => {
    const out = {};
    for (const [name, b64] of Object.entries(layer)) {
      const bytes = atob(b64);
      const v = new Float32Array(bytes.length);
      for (let k = 0; k < bytes.length; k++) {
        const q = bytes.charCodeAt(k);
        v[k] = (q > 127 ? q - 256 : q) / data.scale;
      }
      out[name] = v;
    }
    return out;
  });
  return { ...data, T, layers, chars: [...data.text] };
}

function windowFeatures(read, start, stop) {
  // features of the whole text (a quote opened before the window is open in it), then the window
  const all = features(read);
  const out = {};
  for (const [name, f] of Object.entries(all)) out[name] = f.slice(start, stop);
  return out;
}

function describeWindow(data) {
  // what the view shows, and why, in words
  const n = data.n_chars.toLocaleString("en");
  const m = `model “${data.model}”`;
  if (data.start === 0 && data.stop === data.n_chars) {
    $("cells-window").textContent = `All ${n} characters, read by ${m} from the first one: `
      + "the state the text was written in.";
    return;
  }
  $("cells-window").textContent = `Characters ${(data.start + 1).toLocaleString("en")} to `
    + `${data.stop.toLocaleString("en")} of ${n}. ${m[0].toUpperCase()}${m.slice(1)} read the `
    + "whole text from its first character, so these are in the state the text was written in; "
    + `one answer holds at most ${state.maxActChars.toLocaleString("en")} characters of this `
    + "model's cells. “From character” moves the window.";
}

function cellValues(layer, unit, what = state.acts.values) {
  const T = state.acts.T;
  return state.acts.layers[layer][what].subarray(unit * T, (unit + 1) * T);
}

function unitName(layer, unit) {
  // the checkpoint's name for the unit (a handmade model names its units), or ""
  const names = state.acts && state.acts.unit_names;
  return names && names[layer] ? names[layer][unit] || "" : "";
}

function cellColour(v) {
  // values in [-1, 1]: red up, blue down; a gate in [0, 1]: red as it opens
  const end = v >= 0 ? RED : BLUE, a = Math.min(Math.abs(v), 1);
  return `rgb(${WHITE.map((w, k) => Math.round(w + (end[k] - w) * a)).join(", ")})`;
}

function drawScale(isGate) {
  const steps = isGate ? [0, 0.5, 1] : [-1, 0, 1];
  $("scale-lo").textContent = isGate ? "0" : "−1";
  $("scale-hi").textContent = "+1";
  $("scale-bar").style.background = `linear-gradient(to right, ${steps.map(cellColour).join(", ")})`;
}

function drawCell() {
  if (!state.acts) return;
  const layer = parseInt($("layer").value, 10) || 0;
  const unit = Math.min(Math.max(parseInt($("cell").value, 10) || 0, 0), state.acts.n_hidden - 1);
  const what = $("show").value || state.acts.values;
  const vals = cellValues(layer, unit, what);
  const name = unitName(layer, unit);
  $("cell-name").textContent = name;
  drawScale(what !== state.acts.values);
  const box = $("cell-text");
  box.replaceChildren();
  state.acts.chars.forEach((ch, t) => {
    const s = document.createElement("span");
    s.textContent = ch;
    const v = vals[t];
    s.style.background = cellColour(v);
    s.title = `${what} = ${v.toFixed(2)}`;
    box.append(s);
  });
  let label = `The text coloured by layer ${layer + 1}, cell ${unit}`;
  if (name) label += ` (${name})`;
  if (what !== state.acts.values) label += `, ${GATE_LABELS[what] || `gate ${what}`}`;
  box.setAttribute("aria-label", label);
}

function features(chars) {
  // simple properties of the text after each character, as in the paper's cells
  let quoted = 0, depth = 0, col = 0;
  const f = { "inside quotes": [], "position in line": [], "inside brackets": [] };
  for (const ch of chars) {
    if (ch === '"') quoted = 1 - quoted;
    if ("([{".includes(ch)) depth++;
    if (")]}".includes(ch)) depth = Math.max(0, depth - 1);
    col = ch === "\n" ? 0 : col + 1;
    f["inside quotes"].push(quoted);
    f["position in line"].push(col);
    f["inside brackets"].push(depth > 0 ? 1 : 0);
  }
  return f;
}

function correlation(x, y) {
  const n = x.length;
  let mx = 0, my = 0;
  for (let k = 0; k < n; k++) { mx += x[k]; my += y[k]; }
  mx /= n; my /= n;
  let sxy = 0, sxx = 0, syy = 0;
  for (let k = 0; k < n; k++) {
    const dx = x[k] - mx, dy = y[k] - my;
    sxy += dx * dy; sxx += dx * dx; syy += dy * dy;
  }
  return sxx > 0 && syy > 0 ? sxy / Math.sqrt(sxx * syy) : 0;
}

function drawRanking() {
  const box = $("ranking");
  box.replaceChildren();
  const table = document.createElement("table");
  const head = table.insertRow();
  for (const h of ["feature", "most correlated cells (layer.cell r)"]) {
    const th = document.createElement("th");
    th.textContent = h;
    head.append(th);
  }
  for (const [name, f] of Object.entries(state.acts.features)) {
    const row = table.insertRow();
    row.insertCell().textContent = name;
    const cell = row.insertCell();
    if (Math.min(...f) === Math.max(...f)) {
      cell.textContent = "does not vary in this text";
      continue;
    }
    const scored = [];
    for (let l = 0; l < state.acts.n_layer; l++) {
      for (let u = 0; u < state.acts.n_hidden; u++) {
        scored.push({ l, u, r: correlation(cellValues(l, u), f) });
      }
    }
    scored.sort((a, b) => Math.abs(b.r) - Math.abs(a.r));
    for (const s of scored.slice(0, 5)) {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "plain";
      b.textContent = `${s.l + 1}.${s.u} ${s.r >= 0 ? "+" : "−"}${Math.abs(s.r).toFixed(2)}`;
      if (unitName(s.l, s.u)) b.title = unitName(s.l, s.u);
      b.setAttribute("aria-label", `layer ${s.l + 1} cell ${s.u}, correlation ${s.r.toFixed(2)}`);
      b.addEventListener("click", () => {
        $("layer").value = String(s.l);
        $("cell").value = String(s.u);
        drawCell();
      });
      cell.append(b);
    }
  }
  box.append(table);
}

function svg(tag, attrs, parent) {
  const el = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (parent) parent.append(el);
  return el;
}

function drawSaturation() {
  // the server counts saturation on the exact values: the page's int8 ones would move 0.1 and 0.9
  const box = $("saturation");
  box.replaceChildren();
  const S = 130, pad = 18, T = state.acts.T;
  state.acts.saturation.forEach((layer, l) => {
    for (const g of state.acts.gates) {
      const { below, above } = layer[g];
      const fig = document.createElement("figure");
      const plot = svg("svg", { width: S + pad, height: S + pad, role: "img" });
      svg("rect", { x: pad, y: 0, width: S, height: S, fill: "#f6f7f9", stroke: "#d5d8de" }, plot);
      svg("line", { x1: pad, y1: S, x2: pad + S, y2: 0, stroke: "#d5d8de" }, plot);
      let left = 0, right = 0;
      for (let u = 0; u < state.acts.n_hidden; u++) {
        left += below[u]; right += above[u];
        svg("circle", { cx: pad + (S * below[u]) / T, cy: S - (S * above[u]) / T, r: 2.5,
          fill: GATE_COLOURS[g] || "#555", "fill-opacity": 0.6 }, plot);
      }
      const total = T * state.acts.n_hidden;
      const summary = `layer ${l + 1}, gate ${g}: ${(100 * left / total).toFixed(0)}% below 0.1, `
        + `${(100 * right / total).toFixed(0)}% above 0.9`;
      plot.setAttribute("aria-label", summary);
      svg("text", { x: pad + S / 2, y: S + 14, "text-anchor": "middle" }, plot).textContent = "< 0.1";
      svg("text", { x: 11, y: S / 2, transform: `rotate(-90 11 ${S / 2})`, "text-anchor": "middle" },
        plot).textContent = "> 0.9";
      const cap = document.createElement("figcaption");
      cap.textContent = summary;
      fig.append(plot, cap);
      box.append(fig);
    }
  });
}

// ---- the training curve ----

function niceStep(span, maxTicks, least = 0) {
  // the step of at most maxTicks ticks over span: 1, 2 or 5 times a power of ten, >= least
  const raw = Math.max(span / Math.max(1, maxTicks), least);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const r = raw / mag;
  return (r <= 1 ? 1 : r <= 2 ? 2 : r <= 5 ? 5 : 10) * mag;
}

function niceTicks(lo, hi, maxTicks, least = 0) {
  // round ticks covering [lo, hi], from a multiple of the step below lo to one above hi
  const step = niceStep(hi - lo, maxTicks, least);
  const first = Math.floor(lo / step + 1e-9), last = Math.ceil(hi / step - 1e-9);
  const digits = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
  const ticks = [];
  for (let k = first; k <= last; k++) ticks.push(Number((k * step).toFixed(digits)));
  return { ticks, digits };
}

async function loadCurve() {
  $("curve").replaceChildren(message("Loading the training curve…", "loading"));
  $("legend").replaceChildren();
  try {
    state.history = await api(`/history${model() ? `?model=${encodeURIComponent(model())}` : ""}`);
  } catch (e) {
    state.history = null;
    $("curve").replaceChildren(message(e.message, "error"));
    return;
  }
  state.maxActChars = state.history.max_activation_chars;
  drawCurve();
}

function drawCurve() {
  // drawn at the width it is shown at, so text stays 12 px on a phone: no viewBox scaling
  const h = state.history, box = $("curve");
  if (!h) return;
  const rows = h.train.concat(h.val);
  if (!rows.length) {
    box.replaceChildren(message("This checkpoint has no loss history.", "help"));
    $("legend").replaceChildren();
    return;
  }
  const W = Math.max(260, Math.floor(box.clientWidth)), H = W < 500 ? 220 : 280;
  const L = 58, B = 42, R = 26, top = 8;
  const steps = rows.map((r) => r[0]), losses = rows.map((r) => r[1]);
  let x0 = Math.min(...steps), x1 = Math.max(...steps);
  let y0 = Math.min(...losses), y1 = Math.max(...losses);
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
  const xt = niceTicks(x0, x1, Math.floor((W - L - R) / 80), 1);  // steps are whole
  const yt = niceTicks(y0, y1, Math.floor((H - top - B) / 36));
  // the loss axis runs from tick to tick; the step axis from a tick to the last step (running on
  // to the next round step would leave a phone's narrow plot a quarter empty)
  x0 = xt.ticks[0];
  xt.ticks = xt.ticks.filter((s) => s <= x1);
  [y0, y1] = [yt.ticks[0], yt.ticks[yt.ticks.length - 1]];
  const X = (s) => L + ((W - L - R) * (s - x0)) / (x1 - x0);
  const Y = (v) => top + ((H - top - B) * (y1 - v)) / (y1 - y0);
  const plot = svg("svg", { width: W, height: H, role: "img",
    "aria-label": `Loss by step: ${h.train.length} train points, ${h.val.length} validation points` });
  for (const v of yt.ticks) {
    svg("line", { x1: L, x2: W - R, y1: Y(v), y2: Y(v), stroke: "#eceef1" }, plot);
    svg("text", { x: L - 6, y: Y(v) + 4, "text-anchor": "end", class: "tick y" }, plot)
      .textContent = v.toFixed(yt.digits);
  }
  for (const s of xt.ticks) {
    svg("line", { x1: X(s), x2: X(s), y1: H - B, y2: H - B + 4, stroke: "#9aa0a8" }, plot);
    svg("text", { x: X(s), y: H - B + 17, "text-anchor": "middle", class: "tick x" }, plot)
      .textContent = s.toLocaleString("en", { maximumFractionDigits: xt.digits });
  }
  svg("rect", { x: L, y: top, width: W - L - R, height: H - top - B, fill: "none", stroke: "#d5d8de" }, plot);
  svg("text", { x: L + (W - L - R) / 2, y: H - 6, "text-anchor": "middle", class: "axis" }, plot)
    .textContent = "training step";
  const ym = top + (H - top - B) / 2;
  svg("text", { x: 14, y: ym, transform: `rotate(-90 14 ${ym})`, "text-anchor": "middle", class: "axis" },
    plot).textContent = "loss (nats per character)";
  const series = [["train loss", h.train, "#2d5fd3"], ["validation loss", h.val, "#c7512c"]];
  const legend = $("legend");
  legend.replaceChildren();
  for (const [name, pts, colour] of series) {
    if (!pts.length) continue;
    const d = pts.map((p) => `${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join(" ");
    svg("polyline", { points: d, fill: "none", stroke: colour, "stroke-width": 1.8 }, plot);
    if (pts.length === 1) svg("circle", { cx: X(pts[0][0]), cy: Y(pts[0][1]), r: 3.5, fill: colour }, plot);
    const item = document.createElement("li");
    const swatch = svg("svg", { width: 24, height: 10, "aria-hidden": "true", class: "swatch" });
    svg("line", { x1: 0, x2: 24, y1: 5, y2: 5, stroke: colour, "stroke-width": 3 }, swatch);
    item.append(swatch, name);
    legend.append(item);
  }
  box.replaceChildren(plot);
}

// ---- start ----

function modelChanged() {
  loadCurve().then(analyse);  // the window's size comes with the history
  refreshNext();
}

async function init() {
  $("gen-form").addEventListener("submit", generate);
  $("gen-form").addEventListener("invalid", invalidField, true);  // invalid does not bubble
  $("generate").addEventListener("click", () => {
    // a click submits (Enter in a field too, by clicking the default button); before the
    // browser checks the fields, the last attempt's error goes
    state.invalidShown = false;
    if (!state.controller) setStatus("");
  });
  $("stop").addEventListener("click", stop);
  const out = $("output");
  // the mouse points when it moves. After a scroll Chromium sends a mouse event where the
  // pointer rests, over whatever the scroll put there: that one (same place) must not undo the
  // arrow keys' choice, nor, on a touch screen, the tap's
  out.addEventListener("touchstart", () => { state.touch = true; }, { passive: true });
  out.addEventListener("mousemove", (e) => {
    if (state.touch || (e.clientX === state.mouseX && e.clientY === state.mouseY)) return;
    state.mouseX = e.clientX;
    state.mouseY = e.clientY;
    const k = e.target.dataset.i === undefined ? null : +e.target.dataset.i;
    if (k !== null && k !== state.pointed) point(k);
  });
  out.addEventListener("click", (e) => { if (e.target.dataset.i) point(+e.target.dataset.i); });
  out.addEventListener("keydown", outputKeys);
  $("layer").addEventListener("change", drawCell);
  $("cell").addEventListener("input", drawCell);
  $("show").addEventListener("change", drawCell);
  $("window-start").addEventListener("change", analyse);
  $("model").addEventListener("change", modelChanged);
  new ResizeObserver(() => drawCurve()).observe($("curve"));
  try {
    state.info = await api("/info");
  } catch (e) {
    setStatus(`The service is not ready: ${e.message}`, true);
    return;
  }
  for (const m of state.info.models) $("model").add(new Option(m.name, m.name));
  $("model").value = state.info.default_model;
  $("length").max = state.info.limits.max_new_tokens;
  state.text = $("prompt").value;
  state.promptLength = state.text.length;
  renderOutput();
  await loadCurve();
  refreshNext();
  analyse();
}

init();
