"""The `lora` kind end to end: LoRA fine-tuning of a tiny language model driven by a real service."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file
from trainsvc_client import InvalidArgumentError, pb

from .conftest import TERMINAL, Service

pytestmark = pytest.mark.slow(55)

BUDGET = 3000
"""Steps of the restarted run: more than it trains before the service is stopped."""
VALIDATION_PROMPT = "weather in Riga in fahrenheit"  # the first validation example's user message
LM_METRICS = {"train_loss", "val_loss", "tokens_per_s", "learning_rate"}


def cli(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", "from trainsvc_client._cli import main; main()", *args]
    return subprocess.run([*cmd, "--server", address], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def lm_service(lm_inputs: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A service that may read the tiny model and its data (and nothing else)."""
    svc = Service(
        tmp_path_factory.mktemp("lm-service") / "data",
        extra=["--input-dir", str(lm_inputs.root)],
    )
    try:
        svc.wait_ready()
        yield svc
    finally:
        svc.kill_all()


def _refused(client: Any, config: dict[str, Any], **kw: Any) -> InvalidArgumentError:
    with pytest.raises(InvalidArgumentError) as info:
        client.create_run("lora", step_budget=10, config=config, **kw)
    return info.value


def test_bad_lora_input_is_refused_before_a_run_exists(
    lm_service: Service, lm_inputs: Any, tmp_path: Path
) -> None:
    bad = lm_inputs.root / "bad.jsonl"
    bad.write_text(
        lm_inputs.train.read_text(encoding="utf-8").splitlines()[0] + '\n{"messages": [\n',
        encoding="utf-8",
    )
    outside = tmp_path / "model"
    outside.mkdir()
    with lm_service.client() as c:
        before = list(c.list_runs())
        err = _refused(c, lm_inputs.config(model=str(outside)))
        assert err.field == "run.lora.model" and "outside the directories" in str(err)
        config = lm_inputs.config()
        del config["train_file"]
        assert _refused(c, config).field == "run.lora.train_file"
        err = _refused(c, lm_inputs.config(train_file=str(bad)))
        assert err.field == "run.lora.train_file" and "bad.jsonl:2" in str(err)
        err = _refused(c, lm_inputs.config(rank=4))
        assert err.field == "run.lora.rank" and "[8, 64]" in str(err)
        err = _refused(c, lm_inputs.config(**{"train.seed": 5}))
        assert err.field == "run.lora.overrides[train.seed]" and "run.seed" in str(err)
        err = _refused(c, lm_inputs.config(**{"model.dir": str(lm_inputs.model)}))
        assert err.field == "run.lora.overrides[model.dir]" and "run.lora.model" in str(err)
        err = _refused(c, lm_inputs.config(), checkpoint_policy=pb.CheckpointPolicy(keep_every=10))
        assert err.field == "run.checkpoint_policy.keep_every"
        assert list(c.list_runs()) == before  # nothing was created


def test_input_the_worker_refuses_fails_the_run_at_once(
    lm_service: Service, lm_inputs: Any, wait_for: Any
) -> None:
    """Weights are read by the worker: a corrupt file fails the run without restarts."""
    broken = lm_inputs.root / "broken-model"
    shutil.copytree(lm_inputs.model, broken)
    (broken / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    with lm_service.client() as c:
        run = c.create_run("lora", step_budget=10, config=lm_inputs.config(model=str(broken)))
        done = wait_for(c, run.name, lambda r: r.state in TERMINAL, what="the run to end")
    assert done.state == pb.Run.FAILED and done.restarts == 0
    assert (
        done.state_message.startswith("invalid input:")
        and "model.safetensors" in done.state_message
    )


def _lm_frames(client: Any, name: str, until: Any) -> list[pb.Frame]:
    """Frames of a run until `until(frames)` holds (or the stream's deadline)."""
    frames: list[pb.Frame] = []
    stream = client.stream_frames(name, max_rate_hz=100, timeout=300)
    for frame in stream:
        frames.append(frame)
        if until(frames):
            stream.cancel()
            break
    return frames


def _final_tensors(client: Any, name: str) -> dict[str, Any]:
    final = client.list_checkpoints(name)[-1]
    assert final.step == BUDGET, final
    return load_file(final.path)


def test_lora_run_trains_pauses_resumes_and_survives_a_service_restart_bitwise(
    start_service: Any, lm_inputs: Any, wait_for: Any, tmp_path: Path
) -> None:
    data, inputs = tmp_path / "data", ["--input-dir", str(lm_inputs.root)]
    svc = start_service(data, extra=inputs)
    sets = [
        arg
        for key, value in lm_inputs.config().items()
        if key not in ("model", "train_file", "validation_file")
        for arg in ("--set", f"{key}={json.dumps(value)}")
    ]
    created = cli(
        svc.address,
        *("runs", "create", "--kind", "lora", "--steps", str(BUDGET), "--seed", "3"),
        *("--model", str(lm_inputs.model), "--train", str(lm_inputs.train)),
        *("--validation", str(lm_inputs.validation), "--checkpoint-interval", "50", "--json"),
        *sets,
    )
    assert created.returncode == 0, created.stderr
    run = json.loads(created.stdout)
    assert run["kind"] == "LORA" and run["lora"]["model"] == str(lm_inputs.model)
    assert run["lora"]["rank"] == 8 and run["lora"]["overrides"]["optim.warmup_steps"] == "2"
    name = run["name"]

    with svc.client() as c:
        frames = _lm_frames(
            c,
            name,
            lambda fs: (
                any(f.lm.sample_step for f in fs) and any("val_loss" in f.metrics for f in fs)
            ),
        )
        sampled = next(f for f in frames if f.lm.sample_step)
        assert sampled.WhichOneof("payload") == "lm"
        assert sampled.lm.sample_prompt == VALIDATION_PROMPT
        assert 0 < sampled.lm.sample_step <= sampled.step
        later = _lm_frames(c, name, lambda fs: fs[-1].step > sampled.step)
        assert later[-1].lm.sample_step >= sampled.lm.sample_step  # the sample is repeated
        for f in frames:
            loss = f.metrics["train_loss"]
            assert math.isfinite(loss) and loss > 0 and f.metrics["tokens_per_s"] > 0

        shown = cli(svc.address, "runs", "get", name, "--json")
        assert shown.returncode == 0, shown.stderr
        latest = json.loads(shown.stdout)["latest_sample"]
        assert latest["prompt"] == VALIDATION_PROMPT and latest["step"] > 0
        text = cli(svc.address, "runs", "get", name)
        assert "sample at step" in text.stdout and VALIDATION_PROMPT in text.stdout

        paused = c.pause_run(name)
        assert paused.state == pb.Run.PAUSED
        assert paused.latest_checkpoint.endswith(f"step_{paused.step}")
        assert set(paused.metrics) >= LM_METRICS
        time.sleep(1.0)
        assert c.get_run(name).step == paused.step  # a paused run holds
        assert c.save_checkpoint(name).step == paused.step
        assert c.resume_run(name).state == pb.Run.RUNNING
        wait_for(c, name, lambda r: r.step > paused.step + 5, what="steps after resume")
        assert c.save_checkpoint(name).step > paused.step

    # SIGTERM: the service checkpoints the run, which comes back INTERRUPTED.
    assert svc.terminate() == 0
    svc2 = start_service(data, extra=inputs)
    with svc2.client() as c:
        got = c.get_run(name)
        assert got.state == pb.Run.INTERRUPTED, got
        assert got.latest_checkpoint.endswith(f"step_{got.step}")
        saved = got.step
        c.resume_run(name)
        seen: list[int] = []

        def progressed(r: pb.Run) -> bool:
            seen.append(r.step)
            return r.state == pb.Run.RUNNING and r.step > saved + 5

        wait_for(c, name, progressed, what="steps after the restart")
        assert min(seen) >= saved  # continued from the checkpoint, not from 0
        frame = _lm_frames(c, name, lambda fs: fs[-1].step > saved)[-1]
        assert frame.step > saved and "train_loss" in frame.metrics

        # The same run never interrupted ends with the same adapters and optimizer state.
        baseline = c.create_run(
            "lora",
            step_budget=BUDGET,
            seed=3,
            config=lm_inputs.config(),
            checkpoint_policy=pb.CheckpointPolicy(interval_steps=50),
        )
        for each in (name, baseline.name):
            done = wait_for(c, each, lambda r: r.state in TERMINAL, timeout=600, what="the end")
            assert done.state == pb.Run.COMPLETED, done.state_message
        resumed, uninterrupted = _final_tensors(c, name), _final_tensors(c, baseline.name)
    assert resumed.keys() == uninterrupted.keys() and len(resumed) > 3
    for key, array in uninterrupted.items():
        np.testing.assert_array_equal(resumed[key], array, err_msg=key)


def test_watch_follows_a_lora_run_until_stopped_and_its_checkpoint_needs_the_same_config(
    lm_service: Service, lm_inputs: Any, wait_for: Any
) -> None:
    with lm_service.client() as c:
        run = c.create_run("lora", step_budget=1_000_000, seed=4, config=lm_inputs.config())
        cmd = [sys.executable, "-c", "from trainsvc_client._cli import main; main()"]
        cmd += ["runs", "watch", run.name, "--rate", "50", "--server", lm_service.address]
        watch = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(c, run.name, lambda r: r.step >= 12, what="two samples")
            stopped = c.stop_run(run.name)
            out, err = watch.communicate(timeout=120)
        finally:
            watch.kill()
        assert stopped.state == pb.Run.STOPPED
        assert stopped.latest_checkpoint.endswith(f"step_{stopped.step}")
        assert c.list_checkpoints(run.name)[-1].step == stopped.step

        # Its checkpoint cannot start a run of another rank: FAILED at once, no restarts.
        other = c.create_run(
            "lora",
            step_budget=1_000_000,
            seed=4,
            config=lm_inputs.config(rank=16, alpha=32),
            resume_from=stopped.latest_checkpoint,
        )
        failed = wait_for(c, other.name, lambda r: r.state in TERMINAL, what="the refusal")
        assert failed.state == pb.Run.FAILED and failed.restarts == 0
        assert failed.state_message.startswith("invalid input: step_")
        assert "does not fit this run" in failed.state_message
    assert watch.returncode == 0, err
    assert "STOPPED" in out
    # Each new sample completion gets its own lines above the progress bar.
    assert "sample at step" in err and VALIDATION_PROMPT in err
