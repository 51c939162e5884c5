# %% [markdown]
# # trainsvc on Kaggle
#
# This notebook (or script) trains one trainsvc run inside a Kaggle session and
# survives the 12-hour limit: it resumes from the newest valid checkpoint in its
# inputs (the previous session's output), checkpoints into `/kaggle/working` on a
# wall-clock budget so the last checkpoint lands before the limit, and writes a
# `status.json` summary that `trainsvc-launch kaggle monitor` reads to chain the
# next session. Generated from `trainsvc_launchers/_assets/trainsvc_bootstrap.py`.

# %%
# Configuration: edit DEFAULT_SPEC (notebook users) or let `trainsvc-launch kaggle submit`
# embed the run's spec below. Paths are overridable by environment variables.
from __future__ import annotations

import datetime as dt
import importlib
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

EMBEDDED_SPEC: dict[str, Any] = {}
DEFAULT_SPEC: dict[str, Any] = {
    "launch": {
        "kind": "emergence",
        "run_id": "kaggle-demo",
        "seed": 0,
        "step_budget": 20000,
        "checkpoint": {"interval_steps": 500, "keep_last": 3},
        "emergence": {},
    },
    "kernel_id": "me/trainsvc-demo-s1",
    "session": 1,
    "packages": ["trainsvc", "trainsvc-client", "trainsvc-trainer"],
    "session_hours": 11.5,
    "checkpoint_minutes": 30.0,
    "wandb": False,
    "wandb_project": "trainsvc",
}
STARTED = time.monotonic()
STARTED_AT = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def load_spec() -> dict[str, Any]:
    """The run's spec: $TRAINSVC_BOOTSTRAP_SPEC (a JSON file), else the embedded one, else the default."""
    path = os.environ.get("TRAINSVC_BOOTSTRAP_SPEC")
    if path:
        loaded: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
        return loaded
    return EMBEDDED_SPEC or DEFAULT_SPEC


SPEC = load_spec()
LAUNCH: dict[str, Any] = SPEC["launch"]
INPUT = Path(os.environ.get("TRAINSVC_KAGGLE_INPUT", "/kaggle/input"))
WORKING = Path(os.environ.get("TRAINSVC_KAGGLE_WORKING", "/kaggle/working"))
DATA = WORKING / "trainsvc-data"
# The wall-clock budget of this session; the last checkpoint is taken when it runs out.
BUDGET_S = float(os.environ.get("TRAINSVC_SESSION_SECONDS", float(SPEC["session_hours"]) * 3600))
CHECKPOINT_S = float(
    os.environ.get("TRAINSVC_CHECKPOINT_SECONDS", float(SPEC["checkpoint_minutes"]) * 60)
)
POLL_S = float(os.environ.get("TRAINSVC_POLL_SECONDS", "5"))
# trainsvc's run workers are spawned processes that re-import this file as
# "__mp_main__": only the main process (a script or a notebook) does the work.
MAIN = __name__ == "__main__"


def log(message: str) -> None:
    """One progress line on stdout (Kaggle keeps it in the session log)."""
    elapsed = time.monotonic() - STARTED
    print(f"[trainsvc-bootstrap +{elapsed:7.1f}s] {message}", flush=True)


def write_status(**fields: Any) -> None:
    """Write /kaggle/working/status.json (atomically), the session's summary."""
    summary = {
        "run_id": LAUNCH["run_id"],
        "kernel_id": SPEC["kernel_id"],
        "session": SPEC["session"],
        "step_budget": LAUNCH["step_budget"],
        "started_at": STARTED_AT,
        "updated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **fields,
    }
    WORKING.mkdir(parents=True, exist_ok=True)
    tmp = WORKING / ".tmp-status.json"
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(WORKING / "status.json")


log(
    f"run {LAUNCH['run_id']} ({LAUNCH['kind']}), session {SPEC['session']}, budget {BUDGET_S:.0f} s"
)

# %%
# Install trainsvc (from PyPI when internet is on, else from a wheels dataset) and verify the GPU.


def find_wheels(root: Path) -> Path | None:
    """A folder under the inputs that holds .whl files (the `trainsvc-launch kaggle datasets` upload)."""
    if not root.is_dir():
        return None
    for wheel in sorted(root.rglob("*.whl")):
        return wheel.parent
    return None


def install(packages: list[str]) -> None:
    """Install the trainsvc packages unless they are importable already."""
    if all(importlib.util.find_spec(m) is not None for m in ("trainsvc", "trainsvc_client")):
        log("trainsvc is installed")
        return
    wheels = find_wheels(INPUT)
    cmd = [sys.executable, "-m", "pip", "install", "--quiet"]
    if wheels is not None:
        cmd += ["--no-index", "--find-links", str(wheels)]
        log(f"installing {', '.join(packages)} from the wheels in {wheels}")
    else:
        log(f"installing {', '.join(packages)} from PyPI")
    subprocess.run([*cmd, *packages], check=True)


def verify_gpu() -> None:
    """Print the GPU (nvidia-smi) and what JAX sees; a CPU-only session is reported, not fatal."""
    smi = shutil.which("nvidia-smi")
    if smi:
        out = subprocess.run(
            [smi, "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=False,
        )
        log(f"GPU: {out.stdout.strip() or 'nvidia-smi failed'}")
    else:
        log("GPU: none (nvidia-smi not found): training runs on CPU")


if MAIN:
    install(list(SPEC["packages"]))
    verify_gpu()

# %%
# Resume or start: copy the newest valid checkpointed state from the inputs.


def newest_valid_step(data_dir: Path) -> int:
    """The highest step among the checkpoints under ``data_dir`` that verify; -1 when none."""
    from trainsvc_checkpoint import parse_checkpoint_file_name, verify

    best = -1
    for path in data_dir.rglob("*step_*.safetensors*"):
        name = parse_checkpoint_file_name(path)
        if name is None:  # not a checkpoint (a .tmp- leftover, a stray file)
            continue
        try:
            verify(path)
        except Exception as exc:  # a corrupt file: report it and fall back to an older one
            log(f"skipping invalid checkpoint {path.name}: {exc}")
            continue
        best = max(best, name.step)
    return best


def restore_from_inputs() -> int:
    """Copy the input data dir with the newest valid checkpoint into DATA; return its step (-1: none)."""
    if DATA.exists():
        return newest_valid_step(DATA)
    candidates = [p for p in INPUT.rglob("trainsvc-data") if p.is_dir()] if INPUT.is_dir() else []
    best, best_dir = -1, None
    for candidate in candidates:
        step = newest_valid_step(candidate)
        if step > best:
            best, best_dir = step, candidate
    if best_dir is not None:
        shutil.copytree(best_dir, DATA)
        log(f"restored step {best} from {best_dir}")
    return best


RESTORED_STEP = restore_from_inputs() if MAIN else -1

# %%
# Start trainsvc in this process and create or resume the run through the Python client.


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class InProcessService:
    """trainsvc running in this process: its asyncio loop on a thread (run workers are processes)."""

    def __init__(self, port: int) -> None:
        import asyncio
        import threading

        from trainsvc import ServerOptions, TrainsvcServer

        DATA.mkdir(parents=True, exist_ok=True)
        self.server = TrainsvcServer(ServerOptions(listen=f"127.0.0.1:{port}", data_dir=DATA))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="trainsvc", daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(timeout=300)
        log(f"trainsvc is serving on 127.0.0.1:{port}")

    def stop(self) -> None:
        """Checkpoint active runs, stop serving and end the loop."""
        import asyncio

        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(timeout=900)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=60)


def open_run(address: str) -> Any:
    """Connect, then create the run or resume it; returns (client, run)."""
    from trainsvc_client import NotFoundError, UnavailableError, connect, pb

    client = connect(address)
    deadline = time.monotonic() + 300
    while True:
        try:
            run = client.get_run(LAUNCH["run_id"])
            break
        except NotFoundError:
            ckpt = LAUNCH.get("checkpoint", {})
            policy = pb.CheckpointPolicy(
                interval_steps=int(ckpt.get("interval_steps", 0)),
                keep_last=int(ckpt.get("keep_last", 0)),
            )
            run = client.create_run(
                LAUNCH["kind"],
                step_budget=int(LAUNCH["step_budget"]),
                seed=int(LAUNCH["seed"]),
                config=LAUNCH.get(LAUNCH["kind"]) or None,
                checkpoint_policy=policy,
                run_id=LAUNCH["run_id"],
            )
            log(f"created {run.name}")
            return client, run
        except UnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    state = pb.Run.State.Name(run.state)
    if state in ("PAUSED", "INTERRUPTED"):
        run = client.resume_run(run.name)
        log(f"resumed {run.name} at step {run.step}")
    else:
        log(f"{run.name} is {state} at step {run.step}")
    return client, run


if MAIN:
    PORT = free_port()
    SERVICE = InProcessService(PORT)
    CLIENT, RUN = open_run(f"127.0.0.1:{PORT}")

# %%
# Train until the step budget or the wall-clock budget, checkpointing on the way.


def start_wandb() -> Any:
    """A W&B run with the same id in every chained session (offline when WANDB_MODE says so)."""
    if not SPEC.get("wandb") or importlib.util.find_spec("wandb") is None:
        return None
    wandb = importlib.import_module("wandb")
    return wandb.init(
        project=str(SPEC["wandb_project"]),
        id=str(SPEC.get("wandb_id") or LAUNCH["run_id"]),
        resume="allow",
        dir=str(WORKING),
        config=LAUNCH,
    )


def train(client: Any, run: Any) -> dict[str, Any]:
    """Watch the run, save a checkpoint every CHECKPOINT_S, pause when the budget runs out."""
    from trainsvc_client import pb

    wb = start_wandb()
    last_ckpt = time.monotonic()
    last_logged = -1
    reason = "running"
    while True:
        run = client.get_run(run.name)
        state = pb.Run.State.Name(run.state)
        if run.step != last_logged:
            rate = f", {run.steps_per_second:.1f} steps/s" if run.steps_per_second else ""
            log(f"step {run.step}/{run.step_budget} ({state}{rate})")
            if wb is not None and run.step > 0:
                wb.log(dict(run.metrics), step=int(run.step))
            last_logged = run.step
        if state in ("COMPLETED", "STOPPED", "FAILED"):
            reason = state.lower()
            break
        if time.monotonic() - STARTED >= BUDGET_S:
            run = client.pause_run(run.name, timeout=1800)
            reason = "session_budget"
            log(f"session budget reached: paused at step {run.step}")
            break
        if state == "RUNNING" and time.monotonic() - last_ckpt >= CHECKPOINT_S:
            ckpt = client.save_checkpoint(run.name, timeout=1800)
            last_ckpt = time.monotonic()
            log(f"checkpoint {ckpt.name} at step {ckpt.step}")
        time.sleep(POLL_S)
    if wb is not None:
        wb.finish()
    final_state = pb.Run.State.Name(run.state)
    return {
        "state": "error" if final_state == "FAILED" else "ok",
        "run_state": final_state,
        "step": int(run.step),
        "finished": final_state == "COMPLETED",
        "reason": reason,
        "message": run.state_message,
        "latest_checkpoint": run.latest_checkpoint,
        "wandb_run_id": str(SPEC.get("wandb_id") or LAUNCH["run_id"]) if wb is not None else None,
    }


if MAIN:
    RESULT: dict[str, Any] = {"state": "error", "message": "interrupted", "step": RESTORED_STEP}
    try:
        RESULT = train(CLIENT, RUN)
    except Exception as exc:
        RESULT = {
            "state": "error",
            "message": f"{type(exc).__name__}: {exc}",
            "step": RESTORED_STEP,
        }
        raise
    finally:
        CLIENT.close()
        SERVICE.stop()
        write_status(**RESULT, ended_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
        log(f"status: {RESULT}")
