// The trainsvc dashboard page: one WebSocket to the bridge, a run list,
// the live view of the selected run, its charts, events and checkpoints; and
// the admin view (#/admin, `admin.ts`).
import "uplot/dist/uPlot.min.css";
import "./style.css";
import { AdminView } from "./admin";
import { ChartGrid, MetricStore } from "./charts";
import { FieldView } from "./field";
import { BoardView, discCounts } from "./othello";
import {
  decodeFrame,
  type CheckpointInfo,
  type ClientMessage,
  type EventInfo,
  type Frame,
  type Preset,
  type RunInfo,
  type SampleInfo,
  type ServerMessage,
  type ServiceState,
} from "./protocol";

const $ = <T extends HTMLElement = HTMLElement>(id: string): T => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`#${id} missing`);
  return el as T;
};

type Conn = "connecting" | "live" | "disconnected" | "service-down" | "login";

const state = {
  ws: null as WebSocket | null,
  conn: "connecting" as Conn,
  service: null as ServiceState | null,
  runs: [] as RunInfo[],
  active: null as string | null,
  selected: null as string | null,
  auto: true,
  feed: -1,
  presets: [] as Preset[],
  rate: Number(localStorage.getItem("trainsvc.rate") ?? 30) || 30,
  nextReq: 1,
  frames: 0,
  skipped: 0,
  lastSeq: 0,
  lastFrame: null as Frame | null,
  fpsWindow: [] as number[],
  events: [] as EventInfo[],
  checkpoints: [] as CheckpointInfo[],
  samples: [] as SampleInfo[],
  valLoss: NaN,
  retryMs: 500,
  token: sessionStorage.getItem("trainsvc.token") ?? "",
  authRequired: false,
  everOpened: false,
  admin: false,
};

const store = new MetricStore();
const charts = new ChartGrid($("charts"));
const league = new ChartGrid($("league-chart"));
league.filter = (n) => /league|elo|score/i.test(n);
const fieldView = new FieldView($<HTMLCanvasElement>("field"));
const boardView = new BoardView($<HTMLCanvasElement>("board"));
boardView.draw(null);
const admin = new AdminView({
  send,
  nextReq: () => state.nextReq++,
  select: (run) => select(run),
  toast,
});
const SAMPLES_SHOWN = 20;
const PROMPT_CHARS = 600;

// ---------------------------------------------------------------- helpers

function fmtNum(v: number, digits = 3): string {
  if (!Number.isFinite(v)) return "–";
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(2);
  return Number(v.toPrecision(digits)).toLocaleString();
}

function fmtBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 ** 2) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 ** 2).toFixed(1)} MiB`;
}

function fmtTime(t: number | null): string {
  return t ? new Date(t * 1000).toLocaleTimeString() : "";
}

function el<K extends keyof HTMLElementTagNameMap>(tag: K, cls = "", text = ""): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text) e.textContent = text;
  return e;
}

function send(msg: ClientMessage): void {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(msg));
}

let toastTimer = 0;
function toast(text: string, bad = false): void {
  const t = $("toast");
  t.textContent = text;
  t.className = bad ? "toast bad show" : "toast show";
  clearTimeout(toastTimer);
  toastTimer = window.setTimeout(() => (t.className = "toast"), 4000);
}

function selectedRun(): RunInfo | undefined {
  return state.runs.find((r) => r.name === state.selected);
}

// ---------------------------------------------------------------- rendering

function renderConn(): void {
  const pill = $("conn");
  pill.dataset.state = state.conn;
  const text: Record<Conn, string> = {
    connecting: "connecting…",
    live: "live",
    disconnected: "disconnected",
    "service-down": "service unreachable",
    login: "login required",
  };
  pill.textContent = text[state.conn];
  const banner = $("banner");
  let msg = "";
  if (state.conn === "connecting") msg = "Connecting to the dashboard bridge…";
  else if (state.conn === "disconnected")
    msg = `Disconnected from the dashboard bridge. Retrying in ${(state.retryMs / 1000).toFixed(1)} s…`;
  else if (state.conn === "service-down")
    msg = `The training service at ${state.service?.address ?? "?"} is unreachable (${state.service?.message || "no answer"}). Reconnecting…`;
  banner.textContent = msg;
  banner.hidden = msg === "";
  banner.dataset.state = state.conn;
  $("login").hidden = state.conn !== "login";
}

function renderRuns(): void {
  const list = $("runs");
  list.replaceChildren();
  const follow = el("button", `run follow${state.auto ? " selected" : ""}`);
  follow.append(el("span", "run-name", "Follow the most active run"));
  follow.onclick = () => select(null);
  list.append(follow);
  if (state.runs.length === 0) list.append(el("div", "muted pad", "No runs yet: start one below."));
  for (const r of state.runs) {
    const b = el("button", `run${r.name === state.selected ? " selected" : ""}`);
    b.dataset.run = r.name;
    b.dataset.state = r.state;
    const top = el("div", "run-top");
    top.append(el("span", "run-name", r.display_name || r.id));
    top.append(el("span", `pill state-${r.state.toLowerCase()}`, r.state.toLowerCase()));
    const meta = el("div", "run-meta");
    meta.append(el("span", `kind kind-${r.kind}`, r.kind));
    meta.append(el("span", "", `step ${r.step.toLocaleString()} / ${r.step_budget.toLocaleString()}`));
    meta.append(el("span", "", r.state === "RUNNING" ? `${fmtNum(r.steps_per_second)}/s` : ""));
    const bar = el("div", "progress");
    const fill = el("div", "progress-fill");
    fill.style.width = `${Math.min(100, (100 * r.step) / Math.max(1, r.step_budget))}%`;
    bar.append(fill);
    b.append(top, meta, bar);
    b.onclick = () => select(r.name);
    list.append(b);
  }
}

function renderRunHeader(): void {
  const r = selectedRun();
  $("run-title").textContent = r ? r.display_name || r.id : state.selected ? state.selected : "No run selected";
  $("run-sub").textContent = r
    ? `${r.kind} · ${r.name} · ${r.restarts} restart${r.restarts === 1 ? "" : "s"}${r.latest_checkpoint ? ` · latest ${r.latest_checkpoint.split("/").pop()}` : ""}`
    : "Start a run from a preset, or wait for one to become active.";
  const st = $("run-state");
  st.textContent = r ? r.state.toLowerCase() : "";
  st.className = r ? `pill big state-${r.state.toLowerCase()}` : "pill big";
  st.dataset.state = r?.state ?? "";
  $("stat-step").textContent = r ? r.step.toLocaleString() : "–";
  $("stat-rate").textContent = r && r.state === "RUNNING" ? fmtNum(r.steps_per_second) : "–";
  const can = (states: string[]): boolean => !!r && states.includes(r.state) && state.conn === "live";
  $<HTMLButtonElement>("btn-pause").disabled = !can(["RUNNING"]);
  $<HTMLButtonElement>("btn-resume").disabled = !can(["PAUSED", "INTERRUPTED"]);
  $<HTMLButtonElement>("btn-checkpoint").disabled = !can(["RUNNING", "PAUSED"]);
  $<HTMLButtonElement>("btn-stop").disabled = !can(["PENDING", "RUNNING", "PAUSED", "INTERRUPTED"]);
  const failed = $("run-failed");
  failed.hidden = !(r && r.state === "FAILED");
  if (r && r.state === "FAILED") failed.textContent = `This run failed: ${r.state_message || "no reason given"}`;
  const f = state.lastFrame;
  const kind = r?.kind ?? (f?.othello ? "othello" : f?.lm ? "lora" : "emergence");
  $("view-emergence").hidden = kind !== "emergence";
  $("view-othello").hidden = kind !== "othello";
  $("view-lm").hidden = kind !== "lora";
}

function renderSamples(): void {
  const box = $("samples");
  box.replaceChildren();
  if (state.samples.length === 0) {
    box.append(el("div", "muted pad", "No sample yet: one comes every sample_interval steps."));
  }
  // Model output is shown as text (textContent), never parsed as HTML.
  for (const s of [...state.samples].reverse()) {
    const item = el("div", "sample");
    item.dataset.step = String(s.step);
    item.append(el("div", "sample-head", `step ${s.step.toLocaleString()}`));
    const prompt = s.prompt.length > PROMPT_CHARS ? `…${s.prompt.slice(-PROMPT_CHARS)}` : s.prompt;
    const p = el("pre", "sample-prompt");
    p.textContent = prompt;
    const c = el("pre", "sample-completion");
    c.textContent = s.completion;
    item.append(p, c);
    box.append(item);
  }
}

function addSample(s: SampleInfo): void {
  const last = state.samples[state.samples.length - 1];
  if (last && last.step === s.step) return; // every frame repeats the latest sample
  if (last && s.step < last.step) state.samples = []; // resumed from an earlier checkpoint
  state.samples.push(s);
  if (state.samples.length > SAMPLES_SHOWN) state.samples.splice(0, state.samples.length - SAMPLES_SHOWN);
  renderSamples();
}

function renderLmStats(f: Frame): void {
  const val = f.metrics.get("val_loss");
  if (val !== undefined) state.valLoss = val;
  const show = (id: string, v: number | undefined, digits = 4): void => {
    $(id).textContent = v === undefined ? "–" : fmtNum(v, digits);
  };
  show("lm-train-loss", f.metrics.get("train_loss"));
  show("lm-val-loss", Number.isFinite(state.valLoss) ? state.valLoss : undefined);
  show("lm-tokens", f.metrics.get("tokens_per_s"));
  show("lm-lr", f.metrics.get("learning_rate"), 3);
}

function renderStats(): void {
  const f = state.lastFrame;
  const now = performance.now();
  state.fpsWindow = state.fpsWindow.filter((t) => now - t < 2000);
  $("stat-fps").textContent = (state.fpsWindow.length / 2).toFixed(1);
  $("stat-frame-step").textContent = f ? f.step.toLocaleString() : "–";
  $("stat-frames").textContent = state.frames.toLocaleString();
  $("stat-skipped").textContent = state.skipped.toLocaleString();
  $("stat-bytes").textContent = f ? fmtBytes(f.bytes) : "–";
  const live = $("live-metrics");
  live.replaceChildren();
  if (f) {
    const names = [...f.metrics.keys()].sort();
    for (const n of names.slice(0, 14)) {
      const row = el("div", "kv");
      row.append(el("span", "k", n), el("span", "v", fmtNum(f.metrics.get(n) ?? NaN, 4)));
      live.append(row);
    }
  }
}

function renderEvents(): void {
  const box = $("events");
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 30;
  box.replaceChildren();
  if (state.events.length === 0) box.append(el("div", "muted pad", "No events yet."));
  for (const e of state.events.slice(-300)) {
    const row = el("div", `event ev-${e.type.toLowerCase()}`);
    row.append(el("span", "ev-time", fmtTime(e.time)));
    row.append(el("span", "ev-type", e.type.toLowerCase().replace("_", " ")));
    let text = e.message;
    if (e.type === "STATE_CHANGED" && !text) text = `${e.previous_state.toLowerCase()} → ${e.state.toLowerCase()}`;
    if (e.type === "CHECKPOINT_SAVED" && !text) text = e.checkpoint;
    row.append(el("span", "ev-msg", text));
    row.append(el("span", "ev-step", e.step ? `step ${e.step.toLocaleString()}` : ""));
    box.append(row);
  }
  if (atBottom) box.scrollTop = box.scrollHeight;
}

function renderCheckpoints(): void {
  const body = $("checkpoints");
  body.replaceChildren();
  if (state.checkpoints.length === 0) {
    const tr = el("tr");
    const td = el("td", "muted", "No checkpoints yet.");
    td.colSpan = 4;
    tr.append(td);
    body.append(tr);
  }
  for (const c of [...state.checkpoints].reverse()) {
    const tr = el("tr");
    const id = c.name.split("/").pop() ?? c.name;
    tr.append(el("td", "mono", id + (c.emergency ? " ⚠" : "")));
    tr.append(el("td", "num", c.step.toLocaleString()));
    tr.append(el("td", "num", fmtBytes(c.size_bytes)));
    tr.append(el("td", "num", fmtTime(c.create_time)));
    body.append(tr);
  }
}

let chartsDirty = false;
function scheduleCharts(): void {
  if (chartsDirty) return;
  chartsDirty = true;
  // At most ~5 chart redraws per second, whatever the frame rate.
  setTimeout(() => {
    chartsDirty = false;
    charts.update(store);
    league.update(store);
    if (state.admin) admin.updateCurves(store);
  }, 200);
}

// ---------------------------------------------------------------- messages

function select(run: string | null): void {
  state.auto = run === null;
  send({ type: "select", run });
}

function onFrame(buf: ArrayBuffer): void {
  const f = decodeFrame(buf);
  if (f.feed !== state.feed) return; // from the run we just switched away from
  if (state.lastSeq && f.sequence > state.lastSeq + 1) state.skipped += f.sequence - state.lastSeq - 1;
  state.lastSeq = f.sequence;
  state.frames++;
  state.lastFrame = f;
  state.fpsWindow.push(performance.now());
  if (f.emergence) fieldView.draw(f.emergence);
  if (f.othello) {
    boardView.draw(f.othello);
    const { black, white } = discCounts(f.othello.board);
    $("board-info").textContent =
      `game ${f.othello.games.toLocaleString()} · ● ${black}  ○ ${white} · ${f.othello.toMove === 1 ? "black" : "white"} to move`;
  }
  if (f.lm) {
    renderLmStats(f);
    if (f.lm.sampleStep > 0) addSample({ step: f.lm.sampleStep, prompt: f.lm.prompt, completion: f.lm.completion });
  }
  const view = $("view-live");
  view.dataset.step = String(f.step);
  view.dataset.frames = String(state.frames);
  if (f.metrics.size > 0) {
    store.add(f.step, f.metrics);
    scheduleCharts();
  }
}

function onMessage(m: ServerMessage): void {
  switch (m.type) {
    case "hello":
      state.presets = m.presets;
      renderPresets();
      send({ type: "rate", hz: state.rate });
      if (state.admin) send({ type: "admin", on: true });
      setService(m.service);
      break;
    case "service":
      setService(m);
      break;
    case "runs":
      state.runs = m.runs;
      state.active = m.active;
      renderRuns();
      renderRunHeader();
      admin.setRuns(state.runs, state.selected);
      break;
    case "selected":
      state.selected = m.run;
      state.auto = m.auto;
      state.feed = m.feed;
      state.frames = 0;
      state.skipped = 0;
      state.lastSeq = 0;
      state.lastFrame = null;
      state.events = [];
      state.checkpoints = [];
      state.samples = [];
      state.valLoss = NaN;
      store.clear();
      charts.reset();
      league.reset();
      admin.resetCurves();
      admin.setRuns(state.runs, state.selected);
      fieldView.clear();
      boardView.draw(null);
      renderRuns();
      renderRunHeader();
      renderEvents();
      renderCheckpoints();
      renderSamples();
      break;
    case "samples":
      if (m.feed !== state.feed) break;
      state.samples = m.samples.slice(-SAMPLES_SHOWN);
      renderSamples();
      break;
    case "history":
      if (m.feed !== state.feed) break;
      store.load(m.steps, m.metrics);
      scheduleCharts();
      break;
    case "events":
      if (m.run !== state.selected) break;
      state.events = m.events;
      renderEvents();
      break;
    case "event":
      if (m.event.run !== state.selected) break;
      state.events.push(m.event);
      if (state.events.length > 500) state.events.splice(0, state.events.length - 500);
      renderEvents();
      break;
    case "checkpoints":
      if (m.run !== state.selected) break;
      state.checkpoints = m.checkpoints;
      renderCheckpoints();
      break;
    case "reply":
      if (!admin.onReply(m)) onReply(m);
      break;
    case "admin":
      admin.update(m);
      break;
    case "dropped":
      toast(`${m.count} older messages were dropped (this page fell behind)`);
      break;
    case "error":
      toast(m.message, true);
      break;
  }
}

const pendingCreate = new Set<number>();
function onReply(m: Extract<ServerMessage, { type: "reply" }>): void {
  if (!m.ok) {
    toast(`${m.error?.code ?? "ERROR"}: ${m.error?.message ?? "failed"}`, true);
    pendingCreate.delete(m.req);
    return;
  }
  if (pendingCreate.delete(m.req) && m.run) {
    toast(`Started ${m.run.id}`);
    select(m.run.name);
  }
}

function setService(s: ServiceState): void {
  state.service = s;
  state.conn = s.state === "connected" ? "live" : "service-down";
  renderConn();
  renderRunHeader();
}

// ---------------------------------------------------------------- connection

function connect(): void {
  state.conn = "connecting";
  renderConn();
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const base = new URL("ws", location.href);
  const url = `${proto}//${base.host}${base.pathname}${state.token ? `?token=${encodeURIComponent(state.token)}` : ""}`;
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  state.ws = ws;
  let opened = false;
  ws.onopen = () => {
    opened = true;
    state.everOpened = true;
    state.retryMs = 500;
  };
  ws.onmessage = (ev: MessageEvent) => {
    if (ev.data instanceof ArrayBuffer) onFrame(ev.data);
    else onMessage(JSON.parse(ev.data as string) as ServerMessage);
  };
  ws.onclose = () => {
    state.ws = null;
    if (!opened && state.authRequired) {
      state.conn = "login";
      if (state.token) $("login-error").textContent = "The bridge refused this token.";
      renderConn();
      return;
    }
    state.conn = "disconnected";
    renderConn();
    renderRunHeader();
    setTimeout(connect, state.retryMs);
    state.retryMs = Math.min(5000, state.retryMs * 2);
  };
}

async function start(): Promise<void> {
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromHash) {
    state.token = fromHash;
    sessionStorage.setItem("trainsvc.token", fromHash);
    history.replaceState(null, "", location.pathname + location.search);
  }
  applyRoute();
  try {
    const info = (await (await fetch("api/info")).json()) as { auth_required: boolean };
    state.authRequired = info.auth_required;
  } catch {
    state.authRequired = false;
  }
  if (state.authRequired && !state.token) {
    state.conn = "login";
    renderConn();
    return;
  }
  connect();
}

// ---------------------------------------------------------------- routes

/** `#/admin` shows the admin view (the bridge polls its data only while one does). */
function applyRoute(): void {
  const on = location.hash.startsWith("#/admin");
  const changed = on !== state.admin;
  state.admin = on;
  $("runs-view").hidden = on;
  $("admin-view").hidden = !on;
  $("nav-runs").classList.toggle("current", !on);
  $("nav-admin").classList.toggle("current", on);
  if (changed) send({ type: "admin", on });
  if (on) {
    admin.resize();
    admin.updateCurves(store);
  } else {
    charts.resize();
  }
}
window.addEventListener("hashchange", applyRoute);

// ---------------------------------------------------------------- controls

function renderPresets(): void {
  const sel = $<HTMLSelectElement>("preset");
  sel.replaceChildren();
  for (const p of state.presets) {
    const o = el("option", "", `${p.label}`);
    o.value = p.id;
    sel.append(o);
  }
}

function control(type: "pause" | "resume" | "checkpoint" | "stop"): void {
  const r = selectedRun();
  if (!r) return;
  send({ type, run: r.name, req: state.nextReq++ });
}

$("btn-pause").onclick = () => control("pause");
$("btn-resume").onclick = () => control("resume");
$("btn-checkpoint").onclick = () => control("checkpoint");
const stopDialog = $<HTMLDialogElement>("stop-dialog");
$("btn-stop").onclick = () => {
  const r = selectedRun();
  if (!r) return;
  $("stop-name").textContent = r.display_name || r.id;
  stopDialog.showModal();
};
$("stop-confirm").onclick = () => {
  stopDialog.close();
  control("stop");
};
$("stop-cancel").onclick = () => stopDialog.close();
$("btn-create").onclick = () => {
  const preset = $<HTMLSelectElement>("preset").value;
  if (!preset) return;
  const req = state.nextReq++;
  pendingCreate.add(req);
  send({ type: "create", preset, req });
};
const rateSel = $<HTMLSelectElement>("rate");
rateSel.value = String(state.rate);
rateSel.onchange = () => {
  state.rate = Number(rateSel.value);
  localStorage.setItem("trainsvc.rate", String(state.rate));
  send({ type: "rate", hz: state.rate });
};
const smooth = $<HTMLInputElement>("smoothing");
smooth.oninput = () => {
  charts.smoothing = Number(smooth.value);
  $("smoothing-value").textContent = Number(smooth.value).toFixed(2);
  charts.update(store);
};
charts.smoothing = Number(smooth.value);
$<HTMLInputElement>("logscale").onchange = (ev) => {
  charts.logScale = (ev.target as HTMLInputElement).checked;
  charts.reset();
  charts.update(store);
};
$("login").onsubmit = (ev) => {
  ev.preventDefault();
  state.token = $<HTMLInputElement>("login-token").value.trim();
  sessionStorage.setItem("trainsvc.token", state.token);
  $("login-error").textContent = "";
  connect();
};
window.addEventListener("resize", () => {
  charts.resize();
  league.resize();
  if (state.admin) admin.resize();
});
setInterval(renderStats, 250);

renderConn();
renderRuns();
renderRunHeader();
renderEvents();
renderCheckpoints();
renderSamples();
void start();
