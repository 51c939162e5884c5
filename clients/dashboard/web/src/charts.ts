// Metric charts: one small uPlot chart per metric (or per group of metrics
// drawn together, such as train and validation loss), on a step axis, with EMA
// smoothing (bias-corrected, as TensorBoard does) and a log-scale toggle.
import uPlot from "uplot";

const MAX_POINTS = 4000;
const PALETTE = ["#60a5fa", "#f472b6", "#34d399", "#fbbf24", "#a78bfa", "#f87171", "#22d3ee", "#a3e635"];
// Tracker metrics and the usual training curves first, the rest by name.
const PRIORITY = ["league", "emergence", "specialization", "convergence", "divergence", "reward", "return", "loss", "entropy"];

/** Metrics drawn in one chart: chart name -> its members, in legend order. */
export const GROUPS: Record<string, string[]> = {
  "train/val loss": ["train_loss", "val_loss"],
};

function rank(name: string): number {
  const lower = name.toLowerCase();
  const i = PRIORITY.findIndex((p) => lower.includes(p));
  return i < 0 ? PRIORITY.length : i;
}

/** Metric history of one run: a shared step column and one column per metric. */
export class MetricStore {
  steps: number[] = [];
  series = new Map<string, (number | null)[]>();

  /** Appends one point per metric at `step` (a repeated step replaces the last point). */
  add(step: number, metrics: Map<string, number>): void {
    const n = this.steps.length;
    if (n > 0 && step < this.steps[n - 1]) this.clear(); // a resumed-from-earlier run
    const replace = this.steps.length > 0 && this.steps[this.steps.length - 1] === step;
    if (!replace) this.steps.push(step);
    const len = this.steps.length;
    for (const [name, value] of metrics) {
      let col = this.series.get(name);
      if (!col) {
        col = new Array<number | null>(len - 1).fill(null);
        this.series.set(name, col);
      }
      if (replace && col.length === len) col[len - 1] = value;
      else col.push(Number.isFinite(value) ? value : null);
    }
    for (const col of this.series.values()) while (col.length < len) col.push(null);
    if (this.steps.length > MAX_POINTS) this.thin();
  }

  /** Replaces the history with a bridge `history` message. */
  load(steps: number[], metrics: Record<string, (number | null)[]>): void {
    this.steps = steps.slice();
    this.series = new Map(Object.entries(metrics).map(([k, v]) => [k, v.slice()]));
  }

  clear(): void {
    this.steps = [];
    this.series.clear();
  }

  /** Keeps every other point when the history gets long. */
  private thin(): void {
    this.steps = this.steps.filter((_, i) => i % 2 === 0);
    for (const [k, col] of this.series) this.series.set(k, col.filter((_, i) => i % 2 === 0));
  }

  names(): string[] {
    return [...this.series.keys()].sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
  }
}

/** Bias-corrected exponential moving average; nulls pass through. */
export function ema(values: (number | null)[], weight: number): (number | null)[] {
  if (weight <= 0) return values;
  const out: (number | null)[] = new Array(values.length);
  let last = 0;
  let n = 0;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (v === null || !Number.isFinite(v)) {
      out[i] = null;
      continue;
    }
    last = last * weight + (1 - weight) * v;
    n++;
    out[i] = last / (1 - weight ** n);
  }
  return out;
}

/** A y-axis tick: exponent notation for very small or large values (learning rates). */
export function tickLabel(v: number | null): string {
  if (v === null || !Number.isFinite(v)) return "";
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-2 || a >= 1e6)) return v.toExponential(1);
  return String(Number(v.toPrecision(4)));
}

/**
 * The y range of a linear chart. uPlot's own collapses to a single value for a series
 * that barely moves (a learning rate of 2e-4 on a long cosine schedule) or whose values
 * are tiny, and then draws nothing; such a series is padded by hand instead.
 */
export function linearRange(_u: uPlot, min: number | null, max: number | null): uPlot.Range.MinMax {
  if (min === null || max === null || !Number.isFinite(min) || !Number.isFinite(max)) return [0, 1];
  const span = max - min;
  if (span <= Math.abs(max) * 1e-6) {
    const pad = Math.abs(max) * 0.05 || 1;
    return [min - pad, max + pad];
  }
  const [lo, hi] = uPlot.rangeNum(min, max, 0.1, true);
  if (lo !== null && hi !== null && hi > lo && lo <= min && hi >= max) return [lo, hi];
  return [min - span * 0.1, max + span * 0.1];
}

function positiveOnly(values: (number | null)[]): (number | null)[] {
  return values.map((v) => (v !== null && v > 0 ? v : null));
}

interface Chart {
  plot: uPlot;
  box: HTMLElement;
  index: number;
  members: string[];
}

/** The grid of metric charts. */
export class ChartGrid {
  private charts = new Map<string, Chart>();
  smoothing = 0.6;
  logScale = false;
  /** Only metrics whose name matches are shown, when set. */
  filter: ((name: string) => boolean) | null = null;

  constructor(private readonly root: HTMLElement) {}

  /** Removes every chart (after a run switch or an option change). */
  reset(): void {
    for (const { plot, box } of this.charts.values()) {
      plot.destroy();
      box.remove();
    }
    this.charts.clear();
  }

  /** The charts to show: (chart name, its metrics), grouped metrics together. */
  private layout(store: MetricStore): [string, string[]][] {
    const names = store.names().filter((n) => !this.filter || this.filter(n));
    const out: [string, string[]][] = [];
    const placed = new Set<string>();
    for (const name of names) {
      if (placed.has(name)) continue;
      const group = Object.entries(GROUPS).find(([, members]) => members.includes(name));
      const members = group ? group[1].filter((m) => names.includes(m)) : [name];
      members.forEach((m) => placed.add(m));
      out.push([group ? group[0] : name, members]);
    }
    return out;
  }

  /** Creates charts for new metrics and pushes the latest data to all of them. */
  update(store: MetricStore): void {
    this.layout(store).forEach(([name, members], i) => {
      const chart = this.charts.get(name);
      if (chart && chart.members.join() === members.join()) return;
      if (chart) {
        // A group gained a member (validation loss comes after the first steps).
        chart.plot.destroy();
        chart.box.remove();
      }
      this.charts.set(name, this.create(name, members, chart ? chart.index : i));
    });
    for (const { plot, members } of this.charts.values()) {
      const data: (number | null)[][] = [store.steps];
      for (const m of members) {
        const raw = store.series.get(m) ?? [];
        const shown = this.logScale ? positiveOnly(raw) : raw;
        data.push(shown, ema(shown, this.smoothing));
      }
      plot.setData(data as uPlot.AlignedData);
    }
    const empty = this.root.querySelector<HTMLElement>(".charts-empty");
    if (empty) empty.hidden = this.charts.size > 0;
  }

  /** Resizes the charts to their boxes. */
  resize(): void {
    for (const { plot, box } of this.charts.values()) {
      plot.setSize({ width: this.width(box), height: 150 });
    }
  }

  private width(box: HTMLElement): number {
    return Math.max(200, box.clientWidth - 16);
  }

  private create(name: string, members: string[], index: number): Chart {
    const box = document.createElement("div");
    box.className = "chart";
    box.dataset.metric = name;
    box.dataset.members = members.join(",");
    const title = document.createElement("div");
    title.className = "chart-title";
    title.textContent = members.length > 1 ? `${name} (${members.join(", ")})` : name;
    box.append(title);
    this.root.append(box);
    const series: uPlot.Series[] = [{ label: "step" }];
    members.forEach((m, j) => {
      const color = PALETTE[(index + j) % PALETTE.length];
      // Sparse metrics (a validation loss every N steps) are drawn as connected points.
      series.push({ label: `${m} (raw)`, stroke: `${color}55`, width: 1, spanGaps: true });
      series.push({ label: m, stroke: color, width: 2, spanGaps: true });
    });
    const axis: uPlot.Axis = {
      stroke: "#8b95a7",
      grid: { stroke: "#1f2633", width: 1 },
      ticks: { stroke: "#1f2633", width: 1 },
      font: "11px ui-sans-serif, system-ui, sans-serif",
    };
    const plot = new uPlot(
      {
        width: this.width(box),
        height: 150,
        legend: { show: false },
        cursor: { drag: { x: true, y: false } },
        scales: { x: { time: false }, y: this.logScale ? { distr: 3 } : { distr: 1, range: linearRange } },
        axes: [
          { ...axis, label: "" },
          { ...axis, size: 56, values: (_u: uPlot, splits: number[]) => splits.map(tickLabel) },
        ],
        series,
      },
      [[], ...members.flatMap(() => [[], []])] as uPlot.AlignedData,
      box,
    );
    return { plot, box, index, members };
  }
}
