// The bridge's WebSocket protocol, as the page sees it (see the package
// README for the full description). Text messages are JSON; binary messages
// are frames in the compact layout decoded by `decodeFrame`.

/** A run as the bridge describes it in `runs` messages. */
export interface RunInfo {
  name: string;
  id: string;
  display_name: string;
  kind: string;
  state: string;
  step: number;
  step_budget: number;
  steps_per_second: number;
  state_message: string;
  restarts: number;
  latest_checkpoint: string;
  metrics: Record<string, number>;
  create_time: number | null;
  update_time: number | null;
}

export interface EventInfo {
  sequence: number;
  run: string;
  type: string;
  time: number | null;
  message: string;
  state: string;
  previous_state: string;
  checkpoint: string;
  step: number;
}

export interface CheckpointInfo {
  name: string;
  step: number;
  size_bytes: number;
  create_time: number | null;
  emergency: boolean;
}

/** A language-model run's sample completion of its fixed validation prompt. */
export interface SampleInfo {
  step: number;
  prompt: string;
  completion: string;
}

/** A trajectory window with its data-quality report (TrajectoryService.ListWindows). */
export interface WindowInfo {
  id: string;
  start_time: number | null;
  end_time: number | null;
  first_start_time: number | null;
  last_start_time: number | null;
  trajectories: number;
  by_status: Record<string, number>;
  completed: number;
  complete_fraction: number;
  steps: number;
  steps_with_llm_calls: number;
  llm_step_fraction: number;
  reward_coverage: number;
  duplicates: number;
  duplicate_fraction: number;
  mean_reward: number | null;
  scenarios: { id: string; trajectories: number; completed: number }[];
  complete_groups: number;
  quality_score: number;
  passed: boolean;
  failures: string[];
}

export interface TrajectoryStats {
  total: number;
  bucket_seconds: number;
  /** Trajectories started per bucket, oldest first (empty buckets included). */
  collection: { time: number | null; trajectories: number; completed: number }[];
  /** Newest first. */
  windows: WindowInfo[];
}

export interface ModelVersionInfo {
  version: number;
  artifact_kind: string;
  base_model: string;
  source_run: string;
  metrics: Record<string, number>;
  windows: string[];
  evaluation: string;
  evaluation_metrics: Record<string, number>;
  create_time: number | null;
  /** Its share of the model's traffic (0 when not deployed). */
  share: number;
}

export interface ModelInfo {
  name: string;
  model: string;
  deployed: boolean;
  traffic: Record<string, number>;
  update_time: number | null;
  versions: ModelVersionInfo[];
}

export interface ModelEventInfo {
  sequence: number;
  model: string;
  version: number;
  type: string;
  time: number | null;
  principal: string;
  reason: string;
  details: string;
  /** "info", "warning" or "error"; null from a service whose events have none. */
  severity: string | null;
}

export interface RpcError {
  code: string;
  message: string;
}

export interface AdminMessage {
  type: "admin";
  trajectories: TrajectoryStats | null;
  trajectories_error: RpcError | null;
  models: ModelInfo[];
  models_error: RpcError | null;
  /** Newest first. */
  events: ModelEventInfo[];
}

export interface Preset {
  id: string;
  label: string;
  kind: string;
}

export type ServerMessage =
  | { type: "hello"; protocol: number; presets: Preset[]; rate: number; max_rate: number; service: ServiceState }
  | ({ type: "service" } & ServiceState)
  | { type: "runs"; runs: RunInfo[]; active: string | null }
  | { type: "selected"; run: string | null; auto: boolean; feed: number }
  | { type: "history"; run: string; feed: number; steps: number[]; metrics: Record<string, (number | null)[]> }
  | { type: "samples"; run: string; feed: number; samples: SampleInfo[] }
  | { type: "events"; run: string; events: EventInfo[] }
  | { type: "event"; event: EventInfo }
  | { type: "checkpoints"; run: string; checkpoints: CheckpointInfo[] }
  | AdminMessage
  | {
      type: "reply";
      req: number;
      ok: boolean;
      run?: RunInfo;
      model?: string;
      traffic?: Record<string, number>;
      error?: RpcError;
    }
  | { type: "dropped"; count: number }
  | { type: "error"; message: string };

export interface ServiceState {
  state: "connected" | "disconnected";
  address: string;
  message: string;
}

/** What the page may send (JSON text). */
export type ClientMessage =
  | { type: "select"; run: string | null }
  | { type: "rate"; hz: number }
  | { type: "create"; preset: string; req: number }
  | { type: "pause" | "resume" | "stop" | "checkpoint"; run: string; req: number }
  | { type: "admin"; on: boolean }
  | { type: "promote"; model: string; version: number; fraction: number; reason?: string; req: number }
  | { type: "rollback"; model: string; reason?: string; req: number };

export const FRAME_MAGIC = 0x31465354; // "TSF1" read as a little-endian u32
export const PAYLOAD_NONE = 0;
export const PAYLOAD_EMERGENCE = 1;
export const PAYLOAD_OTHELLO = 2;
export const PAYLOAD_LM = 3;
export const FIELD_UINT8 = 1;
export const FIELD_FLOAT16 = 2;

export interface EmergenceFrame {
  numAgents: number;
  worldHeight: number;
  worldWidth: number;
  fieldHeight: number;
  fieldWidth: number;
  fieldChannels: number;
  /** Field values, row-major [H, W, C], as floats. */
  field: Float32Array;
  fieldMin: number;
  fieldMax: number;
  /** (row, col) pairs in world cells. */
  positions: Uint16Array;
}

export interface OthelloFrame {
  toMove: number;
  games: number;
  /** 64 cells from a1 to h8: 0 empty, 1 black, 2 white. */
  board: Uint8Array;
}

/** A language-model frame: the latest sample (repeated until a newer one). */
export interface LMFrame {
  /** Step the sample was generated at; 0 = none yet. */
  sampleStep: number;
  prompt: string;
  completion: string;
}

export interface Frame {
  feed: number;
  step: number;
  sequence: number;
  time: number;
  metrics: Map<string, number>;
  emergence: EmergenceFrame | null;
  othello: OthelloFrame | null;
  lm: LMFrame | null;
  bytes: number;
}

const utf8 = new TextDecoder();

/** Decodes an IEEE 754 half float. */
export function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * 2 ** -14 * (frac / 1024);
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * 2 ** (exp - 15) * (1 + frac / 1024);
}

/** Decodes one binary frame message; throws on a malformed one. */
export function decodeFrame(buf: ArrayBuffer): Frame {
  const view = new DataView(buf);
  if (buf.byteLength < 40 || view.getUint32(0, true) !== FRAME_MAGIC) {
    throw new Error("not a trainsvc frame");
  }
  const version = view.getUint8(4);
  if (version !== 1) throw new Error(`unsupported frame version ${version}`);
  const kind = view.getUint8(5);
  const metricCount = view.getUint16(6, true);
  const frame: Frame = {
    feed: view.getUint32(8, true),
    step: view.getFloat64(16, true),
    sequence: view.getFloat64(24, true),
    time: view.getFloat64(32, true),
    metrics: new Map(),
    emergence: null,
    othello: null,
    lm: null,
    bytes: buf.byteLength,
  };
  let off = 40;
  for (let i = 0; i < metricCount; i++) {
    const len = view.getUint8(off);
    const name = utf8.decode(new Uint8Array(buf, off + 1, len));
    frame.metrics.set(name, view.getFloat64(off + 1 + len, true));
    off += 1 + len + 8;
  }
  if (kind === PAYLOAD_EMERGENCE) {
    const numAgents = view.getUint32(off, true);
    const e = {
      worldHeight: view.getUint16(off + 4, true),
      worldWidth: view.getUint16(off + 6, true),
      fieldHeight: view.getUint16(off + 8, true),
      fieldWidth: view.getUint16(off + 10, true),
      fieldChannels: view.getUint16(off + 12, true),
      encoding: view.getUint8(off + 14),
      fieldMin: view.getFloat32(off + 16, true),
      fieldMax: view.getFloat32(off + 20, true),
      fieldBytes: view.getUint32(off + 24, true),
    };
    off += 28;
    const positions = new Uint16Array(numAgents * 2);
    for (let i = 0; i < numAgents * 2; i++) positions[i] = view.getUint16(off + 2 * i, true);
    off += numAgents * 4;
    const cells = e.fieldHeight * e.fieldWidth * e.fieldChannels;
    const field = new Float32Array(cells);
    if (e.encoding === FIELD_UINT8 && e.fieldBytes >= cells) {
      const span = e.fieldMax - e.fieldMin;
      const raw = new Uint8Array(buf, off, cells);
      for (let i = 0; i < cells; i++) field[i] = e.fieldMin + (raw[i] / 255) * span;
    } else if (e.encoding === FIELD_FLOAT16 && e.fieldBytes >= cells * 2) {
      for (let i = 0; i < cells; i++) field[i] = halfToFloat(view.getUint16(off + 2 * i, true));
    }
    frame.emergence = {
      numAgents,
      worldHeight: e.worldHeight,
      worldWidth: e.worldWidth,
      fieldHeight: e.fieldHeight,
      fieldWidth: e.fieldWidth,
      fieldChannels: e.fieldChannels,
      field,
      fieldMin: e.fieldMin,
      fieldMax: e.fieldMax,
      positions,
    };
  } else if (kind === PAYLOAD_OTHELLO) {
    frame.othello = {
      toMove: view.getUint8(off),
      games: view.getFloat64(off + 4, true),
      board: new Uint8Array(buf.slice(off + 12, off + 12 + 64)),
    };
  } else if (kind === PAYLOAD_LM) {
    const promptBytes = view.getUint32(off + 8, true);
    const completionBytes = view.getUint32(off + 12, true);
    const start = off + 16;
    frame.lm = {
      sampleStep: view.getFloat64(off, true),
      prompt: utf8.decode(new Uint8Array(buf, start, promptBytes)),
      completion: utf8.decode(new Uint8Array(buf, start + promptBytes, completionBytes)),
    };
  }
  return frame;
}
