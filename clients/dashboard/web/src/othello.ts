// The othello view: the current self-play game's board.
import type { OthelloFrame } from "./protocol";

/** Draws Othello boards onto one canvas. */
export class BoardView {
  private readonly ctx: CanvasRenderingContext2D;

  constructor(private readonly canvas: HTMLCanvasElement) {
    const ctx = canvas.getContext("2d");
    if (!ctx) throw new Error("no 2d canvas");
    this.ctx = ctx;
  }

  /** Renders a board (all empty when `f` is null). */
  draw(f: OthelloFrame | null): void {
    const { ctx } = this;
    const size = Math.min(this.canvas.width, this.canvas.height);
    const cell = size / 8;
    ctx.fillStyle = "#14532d";
    ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
    ctx.strokeStyle = "#0b3b20";
    ctx.lineWidth = 2;
    for (let i = 0; i <= 8; i++) {
      ctx.beginPath();
      ctx.moveTo(i * cell, 0);
      ctx.lineTo(i * cell, size);
      ctx.moveTo(0, i * cell);
      ctx.lineTo(size, i * cell);
      ctx.stroke();
    }
    for (const [r, c] of [[2, 2], [2, 6], [6, 2], [6, 6]]) {
      ctx.fillStyle = "#0b3b20";
      ctx.beginPath();
      ctx.arc(c * cell, r * cell, 4, 0, Math.PI * 2);
      ctx.fill();
    }
    if (!f) return;
    for (let i = 0; i < 64; i++) {
      const v = f.board[i];
      if (v !== 1 && v !== 2) continue;
      const x = (i % 8) * cell + cell / 2;
      const y = Math.floor(i / 8) * cell + cell / 2;
      ctx.beginPath();
      ctx.arc(x, y, cell * 0.4, 0, Math.PI * 2);
      ctx.fillStyle = v === 1 ? "#111827" : "#f3f4f6";
      ctx.fill();
      ctx.lineWidth = 1.5;
      ctx.strokeStyle = v === 1 ? "#000" : "#9ca3af";
      ctx.stroke();
    }
  }
}

/** Counts the discs of each colour. */
export function discCounts(board: Uint8Array): { black: number; white: number } {
  let black = 0;
  let white = 0;
  for (const v of board) {
    if (v === 1) black++;
    else if (v === 2) white++;
  }
  return { black, white };
}
