// The emergence view: the field as a heatmap with the agents drawn on top.
import type { EmergenceFrame } from "./protocol";

// A perceptually ordered colour map (magma-like), 256 RGB entries.
const STOPS: [number, number, number][] = [
  [0, 0, 4],
  [28, 16, 68],
  [79, 18, 123],
  [129, 37, 129],
  [181, 54, 122],
  [229, 80, 100],
  [251, 135, 97],
  [254, 194, 135],
  [252, 253, 191],
];
const LUT = new Uint8ClampedArray(256 * 3);
for (let i = 0; i < 256; i++) {
  const t = (i / 255) * (STOPS.length - 1);
  const k = Math.min(Math.floor(t), STOPS.length - 2);
  const f = t - k;
  for (let c = 0; c < 3; c++) LUT[i * 3 + c] = STOPS[k][c] + (STOPS[k + 1][c] - STOPS[k][c]) * f;
}

/** Where a non-empty cell starts on the colour map (0..1). */
const FLOOR = 0.2;

/** Draws emergence frames onto one canvas. */
export class FieldView {
  private readonly ctx: CanvasRenderingContext2D;
  private readonly scratch = document.createElement("canvas");
  private image: ImageData | null = null;

  constructor(private readonly canvas: HTMLCanvasElement) {
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    if (!ctx) throw new Error("no 2d canvas");
    this.ctx = ctx;
    this.clear();
  }

  /** Fills the canvas with the empty-field background. */
  clear(): void {
    this.ctx.fillStyle = "#0b0d12";
    this.ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
  }

  /** Renders one frame: heatmap scaled to the canvas, then the agents. */
  draw(f: EmergenceFrame): void {
    const { fieldHeight: h, fieldWidth: w, fieldChannels: ch } = f;
    const W = this.canvas.width;
    const H = this.canvas.height;
    if (h > 0 && w > 0) {
      if (!this.image || this.image.width !== w || this.image.height !== h) {
        this.scratch.width = w;
        this.scratch.height = h;
        this.image = new ImageData(w, h);
      }
      const px = this.image.data;
      // Normalise by the frame's own range (from zero for a non-negative field), on a
      // square-root scale, and start every non-empty cell above the darkest colours:
      // a faint field (an episode's first steps, a weak trail) stays visible.
      let lo = Infinity;
      let hi = -Infinity;
      for (let i = 0; i < f.field.length; i++) {
        const v = f.field[i];
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
      lo = Math.min(lo, 0);
      const span = hi > lo ? hi - lo : 1;
      for (let i = 0; i < h * w; i++) {
        const o = i * 4;
        if (ch === 1) {
          const t = (f.field[i] - lo) / span;
          const k = (t > 0 ? Math.round((FLOOR + (1 - FLOOR) * Math.sqrt(Math.min(t, 1))) * 255) : 0) * 3;
          px[o] = LUT[k];
          px[o + 1] = LUT[k + 1];
          px[o + 2] = LUT[k + 2];
        } else {
          // Several channels: the first three as red, green, blue.
          for (let c = 0; c < 3; c++) {
            px[o + c] = c < ch ? ((f.field[i * ch + c] - lo) / span) * 255 : 0;
          }
        }
        px[o + 3] = 255;
      }
      const sctx = this.scratch.getContext("2d");
      if (sctx) {
        sctx.putImageData(this.image, 0, 0);
        this.ctx.imageSmoothingEnabled = false;
        this.ctx.drawImage(this.scratch, 0, 0, W, H);
      }
    } else {
      this.clear();
    }
    const sy = H / Math.max(1, f.worldHeight);
    const sx = W / Math.max(1, f.worldWidth);
    const r = Math.max(2.5, Math.min(7, Math.min(sx, sy) * 0.45));
    this.ctx.lineWidth = 1.5;
    this.ctx.strokeStyle = "rgba(5, 8, 15, 0.9)";
    this.ctx.fillStyle = "#5eead4";
    this.ctx.beginPath();
    for (let i = 0; i < f.numAgents; i++) {
      const y = (f.positions[2 * i] + 0.5) * sy;
      const x = (f.positions[2 * i + 1] + 0.5) * sx;
      this.ctx.moveTo(x + r, y);
      this.ctx.arc(x, y, r, 0, Math.PI * 2);
    }
    this.ctx.fill();
    this.ctx.stroke();
  }
}
