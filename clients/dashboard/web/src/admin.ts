// The admin view (#/admin): trajectories collected over time, data quality per
// window, training runs with their reward curves, model versions with their
// traffic, promote and roll back, model events, and versions' metrics side by side.
// Everything comes from the bridge's `admin` messages; controls go back over the
// same WebSocket as the run controls (the same login rules).
import uPlot from "uplot";
import { ChartGrid, type MetricStore } from "./charts";
import type {
  AdminMessage,
  ClientMessage,
  ModelEventInfo,
  ModelInfo,
  RpcError,
  RunInfo,
  TrajectoryStats,
  WindowInfo,
} from "./protocol";

/** What the view needs from the page around it. */
export interface AdminHost {
  send(msg: ClientMessage): void;
  nextReq(): number;
  select(run: string): void;
  toast(text: string, bad?: boolean): void;
}

const TRAINING_KINDS = ["grpo", "lora"];
const CURVES = /reward|loss|kl|clip/i;
const DEFAULT_FRACTION = "0.2";

const $ = <T extends HTMLElement = HTMLElement>(id: string): T => {
  const e = document.getElementById(id);
  if (!e) throw new Error(`#${id} missing`);
  return e as T;
};

function el<K extends keyof HTMLElementTagNameMap>(tag: K, cls = "", text = ""): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text) e.textContent = text;
  return e;
}

function pct(v: number): string {
  return `${(100 * v).toFixed(v > 0 && v < 0.01 ? 1 : 0)}%`;
}

function num(v: number | null | undefined, digits = 3): string {
  if (v === null || v === undefined || !Number.isFinite(v)) return "–";
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(2);
  return String(Number(v.toPrecision(digits)));
}

function when(t: number | null): string {
  return t ? new Date(t * 1000).toLocaleString() : "";
}

function split(traffic: Record<string, number>): string {
  const parts = Object.entries(traffic).map(([v, s]) => `v${v} ${pct(s)}`);
  return parts.length ? parts.join(" · ") : "not deployed";
}

/** The admin view; `update` it with each `admin` message. */
export class AdminView {
  private runs: RunInfo[] = [];
  private selected: string | null = null;
  private readonly fractions = new Map<string, string>();
  private readonly pending = new Map<number, string>();
  private collectionPlot: uPlot | null = null;
  private readonly curves: ChartGrid;
  private rollbackModel = "";
  private bucketSeconds = 3600;

  constructor(private readonly host: AdminHost) {
    this.curves = new ChartGrid($("reward-charts"));
    this.curves.filter = (n) => CURVES.test(n);
    const dialog = $<HTMLDialogElement>("rollback-dialog");
    $("rollback-cancel").onclick = () => dialog.close();
    $("rollback-confirm").onclick = () => {
      dialog.close();
      const reason = $<HTMLInputElement>("rollback-reason").value.trim();
      const req = this.host.nextReq();
      this.pending.set(req, `rolled back ${this.rollbackModel}`);
      this.host.send({ type: "rollback", model: this.rollbackModel, reason, req });
    };
  }

  /** A new `admin` message from the bridge. */
  update(m: AdminMessage): void {
    this.renderCollection(m.trajectories, m.trajectories_error);
    this.renderWindows(m.trajectories?.windows ?? [], m.trajectories_error);
    this.renderModels(m.models, m.models_error);
    this.renderCompare(m.models);
    this.renderEvents(m.events);
  }

  /** The run list changed (the training runs table follows it). */
  setRuns(runs: RunInfo[], selected: string | null): void {
    this.runs = runs;
    this.selected = selected;
    this.renderTrainingRuns();
  }

  /** The selected run's metrics changed: redraw its reward curves. */
  updateCurves(store: MetricStore): void {
    this.curves.update(store);
  }

  /** The selection changed: its old curves go. */
  resetCurves(): void {
    this.curves.reset();
  }

  resize(): void {
    this.curves.resize();
    const box = $("traj-chart");
    this.collectionPlot?.setSize({ width: Math.max(240, box.clientWidth - 8), height: 180 });
  }

  /** A `reply` to one of this view's controls; false when it was not one of them. */
  onReply(m: { req: number; ok: boolean; model?: string; traffic?: Record<string, number>; error?: RpcError }): boolean {
    const what = this.pending.get(m.req);
    if (what === undefined) return false;
    this.pending.delete(m.req);
    const box = $("admin-error");
    if (m.ok) {
      box.hidden = true;
      this.host.toast(`${what}: ${split(m.traffic ?? {})}`);
    } else {
      // The service's refusal stays on the page (not just a toast) until the next success.
      box.hidden = false;
      box.textContent = `${what} failed — ${m.error?.code ?? "ERROR"}: ${m.error?.message ?? "no message"}`;
      box.dataset.code = m.error?.code ?? "";
      this.host.toast(`${m.error?.code ?? "ERROR"}: ${m.error?.message ?? "failed"}`, true);
    }
    return true;
  }

  // ------------------------------------------------------------ trajectories

  private renderCollection(stats: TrajectoryStats | null, err: RpcError | null): void {
    const empty = $("traj-empty");
    const box = $("traj-chart");
    $("traj-total").textContent = stats
      ? `${stats.total.toLocaleString()} trajectories · per ${stats.bucket_seconds >= 3600 ? `${stats.bucket_seconds / 3600} h` : `${stats.bucket_seconds / 60} min`}`
      : "";
    box.dataset.total = String(stats?.total ?? 0);
    if (!stats || stats.collection.length === 0) {
      empty.hidden = false;
      empty.textContent = err ? `${err.code}: ${err.message}` : "No trajectories recorded yet.";
      box.hidden = true;
      return;
    }
    empty.hidden = true;
    box.hidden = false;
    this.bucketSeconds = stats.bucket_seconds;
    const xs = stats.collection.map((b) => b.time ?? 0);
    const data: uPlot.AlignedData = [
      xs,
      stats.collection.map((b) => b.trajectories),
      stats.collection.map((b) => b.completed),
    ];
    if (!this.collectionPlot) {
      const axis: uPlot.Axis = {
        stroke: "#8b95a7",
        grid: { stroke: "#1f2633", width: 1 },
        ticks: { stroke: "#1f2633", width: 1 },
        font: "11px ui-sans-serif, system-ui, sans-serif",
      };
      const bars = uPlot.paths.bars ? uPlot.paths.bars({ size: [0.7, 40] }) : undefined;
      this.collectionPlot = new uPlot(
        {
          width: Math.max(240, box.clientWidth - 8),
          height: 180,
          legend: { show: true },
          // Half a bucket of margin each side, so that a single bucket is a bar, not a year.
          scales: {
            x: {
              time: true,
              // From the data: uPlot widens a single time point by 86400/ms (years, in seconds).
              range: (u) => {
                const xs = u.data[0];
                const half = this.bucketSeconds / 2;
                return [(xs[0] ?? 0) - half, (xs[xs.length - 1] ?? 0) + half];
              },
            },
            y: { range: (_u, _min, max) => [0, Math.max(1, max ?? 1) * 1.1] } },
          axes: [axis, { ...axis, size: 48 }],
          series: [
            {},
            { label: "trajectories", stroke: "#60a5fa", fill: "#60a5fa55", paths: bars },
            { label: "completed", stroke: "#34d399", width: 2 },
          ],
        },
        data,
        box,
      );
    } else {
      this.collectionPlot.setData(data);
    }
  }

  private renderWindows(windows: WindowInfo[], err: RpcError | null): void {
    const body = $("windows");
    body.replaceChildren();
    if (windows.length === 0) {
      const tr = el("tr");
      const td = el("td", "muted", err ? `${err.code}: ${err.message}` : "No windows yet.");
      td.colSpan = 10;
      tr.append(td);
      body.append(tr);
      return;
    }
    for (const w of windows) {
      const tr = el("tr", w.passed ? "window-ok" : "window-failing");
      tr.dataset.window = w.id;
      tr.dataset.passed = String(w.passed);
      const id = el("td", "mono", w.id);
      id.title = w.start_time ? `${when(w.start_time)} – ${when(w.end_time)}` : w.id;
      const scen = w.scenarios.map((s) => `${s.id || "(none)"}: ${s.completed}/${s.trajectories}`).join(", ");
      const counts = el("td", "num", `${w.completed}/${w.trajectories}`);
      counts.title = `by status: ${Object.entries(w.by_status).map(([k, v]) => `${k} ${v}`).join(", ")}\nscenarios: ${scen}`;
      tr.append(
        id,
        counts,
        el("td", "num", pct(w.complete_fraction)),
        el("td", "num", pct(w.llm_step_fraction)),
        el("td", "num", pct(w.reward_coverage)),
        el("td", "num", String(w.duplicates)),
        el("td", "num", num(w.mean_reward)),
        el("td", "num", `${w.complete_groups}/${w.scenarios.length}`),
        el("td", "num score", num(w.quality_score, 2)),
      );
      const verdict = el("td", "verdict");
      verdict.append(el("span", `pill ${w.passed ? "state-running" : "state-failed"}`, w.passed ? "passes" : "fails"));
      if (!w.passed) verdict.append(el("div", "failures", w.failures.join("; ")));
      tr.append(verdict);
      body.append(tr);
    }
  }

  // ------------------------------------------------------------ training runs

  private renderTrainingRuns(): void {
    const body = $("training-runs");
    body.replaceChildren();
    const runs = this.runs.filter((r) => TRAINING_KINDS.includes(r.kind));
    if (runs.length === 0) {
      const tr = el("tr");
      const td = el("td", "muted", "No grpo or lora runs.");
      td.colSpan = 6;
      tr.append(td);
      body.append(tr);
    }
    for (const r of runs) {
      const tr = el("tr", r.name === this.selected ? "selected" : "");
      tr.dataset.run = r.name;
      const reward = r.metrics.reward_mean ?? r.metrics.reward;
      const loss = r.metrics.loss ?? r.metrics.train_loss;
      const state = el("td");
      state.append(el("span", `pill state-${r.state.toLowerCase()}`, r.state.toLowerCase()));
      const button = el("button", "small-button", r.name === this.selected ? "showing" : "curves");
      button.onclick = () => this.host.select(r.name);
      const act = el("td");
      act.append(button);
      tr.append(
        el("td", "mono", r.display_name || r.id),
        el("td", `kind kind-${r.kind}`, r.kind),
        state,
        el("td", "num", `${r.step.toLocaleString()} / ${r.step_budget.toLocaleString()}`),
        el("td", "num", `${num(reward)} / ${num(loss)}`),
        act,
      );
      body.append(tr);
    }
    const sel = this.runs.find((r) => r.name === this.selected);
    $("curves-title").textContent =
      sel && TRAINING_KINDS.includes(sel.kind)
        ? `Curves of ${sel.display_name || sel.id} (since the dashboard began watching it)`
        : "Pick a training run to see its reward curves.";
  }

  // ------------------------------------------------------------ models

  private renderModels(models: ModelInfo[], err: RpcError | null): void {
    const box = $("models");
    // Re-rendering must not lose a fraction being typed.
    box.querySelectorAll<HTMLInputElement>("input.fraction").forEach((i) => this.fractions.set(i.dataset.key ?? "", i.value));
    box.replaceChildren();
    $("models-error").textContent = err ? `${err.code}: ${err.message}` : "";
    if (models.length === 0 && !err) box.append(el("div", "muted pad", "No models registered."));
    for (const m of models) {
      const card = el("div", "model");
      card.dataset.model = m.model;
      const head = el("div", "model-head");
      const title = el("div");
      title.append(el("span", "model-name", m.model), el("span", "muted split", split(m.traffic)));
      const rollback = el("button", "danger rollback", "Roll back…");
      rollback.dataset.model = m.model;
      rollback.disabled = !m.deployed;
      rollback.onclick = () => this.askRollback(m);
      head.append(title, rollback);
      const table = el("table", "table versions");
      const thead = el("thead");
      const hr = el("tr");
      for (const h of ["version", "kind", "source", "created", "evaluation", "metrics", "traffic", "promote"]) hr.append(el("th", "", h));
      thead.append(hr);
      const tbody = el("tbody");
      for (const v of [...m.versions].reverse()) {
        const key = `${m.model}/${v.version}`;
        const tr = el("tr");
        tr.dataset.version = String(v.version);
        tr.dataset.share = String(v.share);
        const evaluation = el("td");
        const evalClass = v.evaluation === "passed" ? "state-running" : v.evaluation === "failed" ? "state-failed" : "";
        evaluation.append(el("span", `pill ${evalClass}`, v.evaluation));
        const em = Object.entries(v.evaluation_metrics);
        if (em.length) evaluation.append(el("div", "muted small", em.map(([k, x]) => `${k} ${num(x)}`).join(", ")));
        const share = el("td", "share");
        const bar = el("div", "share-bar");
        const fill = el("div", "share-fill");
        fill.style.width = `${100 * v.share}%`;
        bar.append(fill);
        share.append(bar, el("span", "share-text", pct(v.share)));
        const promote = el("td", "promote");
        const input = el("input", "fraction");
        input.type = "number";
        input.min = "0.01";
        input.max = "1";
        input.step = "0.05";
        input.dataset.key = key;
        input.value = this.fractions.get(key) ?? DEFAULT_FRACTION;
        input.title = "the share of traffic to give this version, in (0, 1]";
        input.oninput = () => this.fractions.set(key, input.value);
        const go = el("button", "primary promote-button", "Promote");
        go.onclick = () => this.promote(m.model, v.version, input.value);
        promote.append(input, go);
        tr.append(
          el("td", "mono", `v${v.version}`),
          el("td", "", v.artifact_kind),
          el("td", "mono", v.source_run.replace("runs/", "") || "–"),
          el("td", "", when(v.create_time)),
          evaluation,
          el("td", "small", Object.entries(v.metrics).map(([k, x]) => `${k} ${num(x)}`).join(", ") || "–"),
          share,
          promote,
        );
        tbody.append(tr);
      }
      table.append(thead, tbody);
      card.append(head, table);
      box.append(card);
    }
  }

  private promote(model: string, version: number, text: string): void {
    const fraction = Number(text);
    if (!text.trim() || !Number.isFinite(fraction) || fraction <= 0 || fraction > 1) {
      const box = $("admin-error");
      box.hidden = false;
      box.textContent = `fraction: a number in (0, 1] is needed to promote ${model} v${version}, got ${JSON.stringify(text)}`;
      return;
    }
    const req = this.host.nextReq();
    this.pending.set(req, `promoted ${model} v${version} to ${pct(fraction)}`);
    this.host.send({ type: "promote", model, version, fraction, req });
  }

  private askRollback(m: ModelInfo): void {
    this.rollbackModel = m.model;
    $("rollback-name").textContent = m.model;
    $("rollback-from").textContent = split(m.traffic);
    $<HTMLInputElement>("rollback-reason").value = "";
    $<HTMLDialogElement>("rollback-dialog").showModal();
  }

  // ------------------------------------------------------------ compare

  private renderCompare(models: ModelInfo[]): void {
    const box = $("compare");
    box.replaceChildren();
    let shown = 0;
    for (const m of models) {
      const names = new Set<string>();
      for (const v of m.versions) {
        Object.keys(v.metrics).forEach((k) => names.add(k));
        Object.keys(v.evaluation_metrics).forEach((k) => names.add(`eval ${k}`));
      }
      if (names.size === 0 || m.versions.length === 0) continue;
      const value = (v: ModelInfo["versions"][number], n: string): number | undefined =>
        n.startsWith("eval ") ? v.evaluation_metrics[n.slice(5)] : v.metrics[n];
      for (const n of [...names].sort()) {
        const group = el("div", "compare-metric");
        group.dataset.model = m.model;
        group.dataset.metric = n;
        group.append(el("div", "chart-title", `${m.model} · ${n}`));
        const values = m.versions.map((v) => value(v, n)).filter((x): x is number => x !== undefined && Number.isFinite(x));
        const top = Math.max(1e-12, ...values.map((x) => Math.abs(x)));
        m.versions.forEach((v, i) => {
          const x = value(v, n);
          const row = el("div", "compare-row");
          row.dataset.version = String(v.version);
          const bar = el("div", "compare-bar");
          const fill = el("div", "compare-fill");
          fill.style.width = x === undefined ? "0" : `${(100 * Math.abs(x)) / top}%`;
          fill.style.background = ["#60a5fa", "#f472b6", "#34d399", "#fbbf24", "#a78bfa"][i % 5];
          bar.append(fill);
          row.append(el("span", "mono", `v${v.version}`), bar, el("span", "compare-value", num(x)));
          group.append(row);
        });
        box.append(group);
        shown++;
      }
    }
    if (shown === 0) box.append(el("div", "muted pad", "No version has metrics yet."));
  }

  // ------------------------------------------------------------ events

  private renderEvents(events: ModelEventInfo[]): void {
    const box = $("model-events");
    box.replaceChildren();
    if (events.length === 0) box.append(el("div", "muted pad", "No model events yet."));
    for (const e of events) {
      const row = el("div", `event model-event${e.severity ? ` sev-${e.severity}` : ""}`);
      row.dataset.sequence = String(e.sequence);
      row.dataset.type = e.type;
      if (e.severity) row.dataset.severity = e.severity;
      const what = el("span", "ev-type", `${e.type.replace("_", " ")}`);
      const sev = e.severity ? el("span", `pill severity sev-${e.severity}`, e.severity) : el("span");
      const text = [`${e.model}${e.version ? ` v${e.version}` : ""}`, e.reason, e.principal ? `by ${e.principal}` : ""].filter(Boolean).join(" · ");
      const msg = el("span", "ev-msg", text);
      msg.title = e.details;
      row.append(el("span", "ev-time", when(e.time)), what, msg, sev);
      box.append(row);
    }
  }
}
