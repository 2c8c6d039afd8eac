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

const state = {
  info: null,            // GET /info
  text: "",              // prompt + generated: what the output shows
  promptLength: 0,
  pointed: null,         // index of the character pointed at, or null: the end
  controller: null,      // the AbortController of the stream in flight
  acts: null,            // the last /activations answer
  maxActChars: 200,
  nextSeq: 0,            // answers to older /next requests are dropped
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

async function api(path, body) {
  const opts = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  const resp = await authorizedFetch(path, opts);
  const data = await resp.json().catch(() => ({ error: `${resp.status} ${resp.statusText}` }));
  if (!resp.ok) throw new Error(data.error || `HTTP ${resp.status}`);
  return data;
}

function model() {
  return $("model").value || undefined;
}

function maxPrompt() {
  return state.info ? state.info.limits.max_prompt_chars : 200;
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
  state.text = prompt;
  state.promptLength = prompt.length;
  state.pointed = null;
  renderOutput();
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
      throw new Error(err.error || `HTTP ${resp.status}`);
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
          if (msg.error) throw new Error(msg.error);
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
    else setStatus(e.message, true);
  } finally {
    state.controller = null;
    $("generate").disabled = false;
    $("stop").disabled = true;
  }
  refreshNext();
  analyse();
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
    }
  }
  refreshNext();
}

async function refreshNext() {
  const end = state.pointed === null ? state.text.length : state.pointed + 1;
  const context = state.text.slice(0, end).slice(-maxPrompt());
  const seq = ++state.nextSeq;
  const tail = context.slice(-24);
  $("next-context").textContent = state.pointed === null
    ? `After the end of the text: “…${tail}”`
    : `After character ${state.pointed} (“${show(state.text[state.pointed])}”): “…${tail}”`;
  try {
    const temperature = parseFloat($("temperature").value);
    const body = { prompt: context, model: model(), top_n: 10 };
    if (temperature > 0) body.temperature = temperature;
    const data = await api("/next", body);
    if (seq !== state.nextSeq) return;
    drawNext(data);
  } catch (e) {
    if (seq === state.nextSeq) $("next-chart").textContent = e.message;
  }
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
  const note = document.createElement("p");
  note.className = "help";
  note.textContent = `entropy ${data.entropy_bits.toFixed(2)} bits`;
  chart.append(note);
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

async function analyse() {
  const text = state.text.slice(-state.maxActChars);
  if (!text) return;
  try {
    state.acts = await api("/activations", { text, model: model() });
  } catch (e) {
    $("cell-text").textContent = e.message;
    return;
  }
  const layer = $("layer");
  const keep = layer.value;
  layer.replaceChildren();
  for (let l = 0; l < state.acts.n_layer; l++) layer.add(new Option(`layer ${l + 1}`, String(l)));
  layer.value = keep && keep < state.acts.n_layer ? keep : "0";
  $("cell").max = state.acts.n_hidden - 1;
  const show = $("show");
  const keepShow = show.value;
  show.replaceChildren(new Option(VALUE_LABELS[state.acts.values] || state.acts.values,
    state.acts.values));
  for (const g of state.acts.gates) show.add(new Option(GATE_LABELS[g] || `gate ${g}`, g));
  show.value = [state.acts.values, ...state.acts.gates].includes(keepShow) ? keepShow
    : state.acts.values;
  drawCell();
  drawRanking();
  drawSaturation();
}

function cellValues(layer, unit, what = state.acts.values) {
  const v = state.acts.layers[layer][what];
  return v.map((row) => row[unit]);
}

function unitName(layer, unit) {
  // the checkpoint's name for the unit (a handmade model names its units), or ""
  const names = state.acts && state.acts.unit_names;
  return names && names[layer] ? names[layer][unit] || "" : "";
}

function drawCell() {
  if (!state.acts) return;
  const layer = parseInt($("layer").value, 10) || 0;
  const unit = Math.min(Math.max(parseInt($("cell").value, 10) || 0, 0), state.acts.n_hidden - 1);
  const what = $("show").value || state.acts.values;
  const vals = cellValues(layer, unit, what);
  const name = unitName(layer, unit);
  $("cell-name").textContent = name;
  const box = $("cell-text");
  box.replaceChildren();
  state.acts.chars.forEach((ch, t) => {
    const s = document.createElement("span");
    s.textContent = ch;
    const v = vals[t];
    // values in [-1, 1]: red up, blue down; a gate in [0, 1]: red as it opens
    s.style.background = v >= 0 ? `rgba(220,60,40,${v})` : `rgba(40,100,220,${-v})`;
    s.title = `${what} = ${v.toFixed(3)}`;
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
  const feats = features(state.acts.chars);
  const table = document.createElement("table");
  const head = table.insertRow();
  for (const h of ["feature", "most correlated cells (layer.cell r)"]) {
    const th = document.createElement("th");
    th.textContent = h;
    head.append(th);
  }
  for (const [name, f] of Object.entries(feats)) {
    const row = table.insertRow();
    row.insertCell().textContent = name;
    const cell = row.insertCell();
    if (Math.min(...f) === Math.max(...f)) {
      cell.textContent = "does not vary in this text";
      continue;
    }
    const scored = [];
    state.acts.layers.forEach((layer, l) => {
      const v = layer[state.acts.values];
      for (let u = 0; u < state.acts.n_hidden; u++) {
        scored.push({ l, u, r: correlation(v.map((row) => row[u]), f) });
      }
    });
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
  const box = $("saturation");
  box.replaceChildren();
  const S = 130, pad = 18;
  state.acts.layers.forEach((layer, l) => {
    for (const g of state.acts.gates) {
      const vals = layer[g];
      const T = vals.length;
      const fig = document.createElement("figure");
      const plot = svg("svg", { width: S + pad, height: S + pad, role: "img" });
      svg("rect", { x: pad, y: 0, width: S, height: S, fill: "#f6f7f9", stroke: "#d5d8de" }, plot);
      svg("line", { x1: pad, y1: S, x2: pad + S, y2: 0, stroke: "#d5d8de" }, plot);
      let left = 0, right = 0;
      for (let u = 0; u < state.acts.n_hidden; u++) {
        let lo = 0, hi = 0;
        for (let t = 0; t < T; t++) {
          if (vals[t][u] < 0.1) lo++;
          else if (vals[t][u] > 0.9) hi++;
        }
        left += lo; right += hi;
        svg("circle", { cx: pad + (S * lo) / T, cy: S - (S * hi) / T, r: 2.5,
          fill: GATE_COLOURS[g] || "#555", "fill-opacity": 0.6 }, plot);
      }
      const total = T * state.acts.n_hidden;
      const summary = `layer ${l + 1}, gate ${g}: ${(100 * left / total).toFixed(0)}% below 0.1, `
        + `${(100 * right / total).toFixed(0)}% above 0.9`;
      plot.setAttribute("aria-label", summary);
      svg("text", { x: pad + S / 2, y: S + 13, "text-anchor": "middle" }, plot).textContent = "< 0.1";
      svg("text", { x: 10, y: S / 2, transform: `rotate(-90 10 ${S / 2})`, "text-anchor": "middle" },
        plot).textContent = "> 0.9";
      const cap = document.createElement("figcaption");
      cap.textContent = summary;
      fig.append(plot, cap);
      box.append(fig);
    }
  });
}

// ---- the training curve ----

async function drawCurve() {
  const box = $("curve");
  let h;
  try {
    h = await api(`/history${model() ? `?model=${encodeURIComponent(model())}` : ""}`);
  } catch (e) {
    box.textContent = e.message;
    return;
  }
  state.maxActChars = h.max_activation_chars;
  box.replaceChildren();
  const rows = h.train.concat(h.val);
  if (!rows.length) {
    box.textContent = "This checkpoint has no loss history.";
    return;
  }
  const W = 560, H = 260, L = 44, B = 28, R = 20, top = 10;
  const steps = rows.map((r) => r[0]), losses = rows.map((r) => r[1]);
  let x0 = Math.min(...steps), x1 = Math.max(...steps);
  let y0 = Math.min(...losses), y1 = Math.max(...losses);
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
  const X = (s) => L + ((W - L - R) * (s - x0)) / (x1 - x0);
  const Y = (v) => top + ((H - top - B) * (y1 - v)) / (y1 - y0);
  const plot = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img",
    "aria-label": `Loss by step: ${h.train.length} train points, ${h.val.length} validation points` });
  svg("rect", { x: L, y: top, width: W - L - R, height: H - top - B, fill: "none", stroke: "#d5d8de" }, plot);
  for (let k = 0; k <= 4; k++) {
    const v = y0 + ((y1 - y0) * k) / 4, s = x0 + ((x1 - x0) * k) / 4;
    svg("text", { x: L - 4, y: Y(v) + 4, "text-anchor": "end" }, plot).textContent = v.toFixed(2);
    const label = x1 - x0 >= 8 ? String(Math.round(s)) : s.toFixed(1);
    svg("text", { x: X(s), y: H - 10, "text-anchor": "middle" }, plot).textContent = label;
  }
  const series = [["train", h.train, "#2d5fd3"], ["val", h.val, "#c7512c"]];
  series.forEach(([name, pts, colour], k) => {
    if (!pts.length) return;
    const d = pts.map((p) => `${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join(" ");
    svg("polyline", { points: d, fill: "none", stroke: colour, "stroke-width": 1.6 }, plot);
    if (pts.length === 1) svg("circle", { cx: X(pts[0][0]), cy: Y(pts[0][1]), r: 3, fill: colour }, plot);
    svg("text", { x: W - R - 4, y: top + 14 + 14 * k, "text-anchor": "end", fill: colour }, plot)
      .textContent = `${name} loss (nats/char)`;
  });
  box.append(plot);
}

// ---- start ----

async function init() {
  $("gen-form").addEventListener("submit", generate);
  $("stop").addEventListener("click", stop);
  const out = $("output");
  out.addEventListener("mouseover", (e) => { if (e.target.dataset.i) point(+e.target.dataset.i); });
  out.addEventListener("click", (e) => { if (e.target.dataset.i) point(+e.target.dataset.i); });
  out.addEventListener("keydown", outputKeys);
  $("analyse").addEventListener("click", analyse);
  $("layer").addEventListener("change", drawCell);
  $("cell").addEventListener("input", drawCell);
  $("show").addEventListener("change", drawCell);
  $("model").addEventListener("change", () => { drawCurve(); refreshNext(); });
  try {
    state.info = await api("/info");
  } catch (e) {
    setStatus(`the service is not ready: ${e.message}`, true);
    return;
  }
  for (const m of state.info.models) $("model").add(new Option(m.name, m.name));
  $("model").value = state.info.default_model;
  $("length").max = state.info.limits.max_new_tokens;
  state.text = $("prompt").value;
  state.promptLength = state.text.length;
  renderOutput();
  await drawCurve();
  refreshNext();
  analyse();
}

init();
