"""`trainsvc serve --data-dir s3://...`: runs' checkpoints in object storage.

Against a real S3-compatible server (moto in server mode on 127.0.0.1, one per
module) and real `trainsvc serve` processes: checkpoints published remotely
(verified with trainsvc_checkpoint on their URLs), retention applied to the
remote listing, SIGKILL of the whole service and a new one with a fresh local
state directory (another machine) resuming from the newest remote checkpoint,
and start-up errors that name --data-dir without the secret.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trainsvc_checkpoint as ckpt
from trainsvc_checkpoint.testing import LocalS3, free_port, local_s3
from trainsvc_client import pb

from .conftest import TERMINAL

pytestmark = pytest.mark.slow(40)

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

BUCKET = "trainsvc-data"
SECRET = "very-secret-value-42"
KEEP_LAST = 2


S3 = LocalS3


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    """The bucket; its credentials reach the services through their environment."""
    with local_s3(BUCKET, key="testing-key", secret=SECRET) as server:
        yield server


def _serve_args(url: str, state: Path, registry: Path, endpoint: str) -> list[str]:
    return [
        "--data-dir",
        url,
        "--state-dir",
        str(state),
        "--registry",
        str(registry),
        "--storage-option",
        f"endpoint_url={endpoint}",
    ]


def _checkpoint_steps(s3: S3, prefix: str) -> list[int]:
    steps = []
    for key in s3.keys(prefix):
        parsed = ckpt.parse_checkpoint_file_name(key)
        if parsed is not None and not parsed.emergency:
            steps.append(parsed.step)
    return sorted(steps)


def _log_records(svc: Any, message: str) -> list[dict[str, Any]]:
    """The service's JSON log records with this message."""
    found = []
    for line in svc.log_path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if record.get("message") == message:
                found.append(record)
    return found


def test_checkpoints_in_s3_resume_on_another_machine_with_retention(
    s3: S3, start_service: Any, tiny: dict[str, Any], wait_for: Any, tmp_path: Path
) -> None:
    url = f"s3://{BUCKET}/svc-a"
    registry = tmp_path / "registry.sqlite3"  # shared, as a PostgreSQL registry would be
    policy = pb.CheckpointPolicy(interval_steps=20, keep_last=KEEP_LAST)
    first = start_service(
        tmp_path / "a",
        extra=_serve_args(url, tmp_path / "state-a", registry, s3.endpoint),
        env=s3.env,
    )
    with first.client() as c:
        run = c.create_run(
            "emergence", step_budget=1_000_000, seed=3, config=tiny, checkpoint_policy=policy
        )
        run_id = run.name.split("/")[1]
        prefix = f"svc-a/runs/{run_id}/checkpoints"
        wait_for(
            c,
            run.name,
            lambda r: r.step >= 120 and r.latest_checkpoint,
            what="checkpoints past step 100",
        )
        paused = c.pause_run(run.name)  # its checkpoint published before the reply
        listed = c.list_checkpoints(run.name)
        assert listed[-1].step == paused.step, (listed, paused.step)
        # Published objects: every CRC verifies on the URL; retention kept keep_last remotely.
        assert all(ck.path.startswith(f"s3://{BUCKET}/{prefix}/") for ck in listed), listed
        for ck in listed:
            info = ckpt.verify(ck.path, storage_options=s3.storage_options)
            assert info.metadata["step"] == ck.step
            key = ck.path.removeprefix(f"s3://{BUCKET}/")
            assert ck.size_bytes == s3.client.head_object(Bucket=BUCKET, Key=key)["ContentLength"]
        assert _checkpoint_steps(s3, prefix) == [ck.step for ck in listed][-KEEP_LAST:]
        assert len(listed) <= KEEP_LAST and "latest" in s3.keys(prefix)
        c.resume_run(run.name)
        wait_for(c, run.name, lambda r: r.step >= paused.step + 60, what="training on")
    first.kill_all()  # SIGKILL of service and worker: this machine is gone

    newest = _checkpoint_steps(s3, prefix)[-1]  # what the killed worker had published
    assert not (tmp_path / "state-b").exists()
    second = start_service(
        tmp_path / "b",
        extra=[
            *_serve_args(url, tmp_path / "state-b", registry, s3.endpoint),
            "--auto-resume",
        ],
        env=s3.env,
    )
    with second.client() as c:
        resumed = wait_for(
            c,
            run.name,
            lambda r: r.state == pb.Run.RUNNING and r.step > newest + 40,
            what="the run training again on the second service",
        )
        assert resumed.state == pb.Run.RUNNING
        # The new worker fetched the newest remote checkpoint and started at its step.
        started = _log_records(second, "worker started")
        assert started[0]["restore"] == f"s3://{BUCKET}/{prefix}/step_{newest}.safetensors"
        running = _log_records(second, "state PENDING -> RUNNING")
        assert running[0]["step"] == newest, second.log()
        later = wait_for(
            c,
            run.name,
            lambda r: r.latest_checkpoint and int(r.latest_checkpoint.rsplit("_", 1)[1]) > newest,
            what="a checkpoint newer than the restored one",
        )
        stopped = c.stop_run(run.name)
        assert stopped.state == pb.Run.STOPPED, stopped.state_message
    # Continuous steps: every checkpoint of the second service is past the restored one.
    after = _checkpoint_steps(s3, prefix)
    assert after and min(after) > newest and len(after) <= KEEP_LAST, (newest, after)
    assert int(later.latest_checkpoint.rsplit("_", 1)[1]) > newest
    # The fetched checkpoint was staged in the new state directory, nothing of it in the old one.
    staged = list((tmp_path / "state-b" / "runs" / run_id / "checkpoints").iterdir())
    assert staged, "the second service staged the run's checkpoints locally"
    for line in (first.log() + second.log()).splitlines():
        assert SECRET not in line


def _serve_exit(
    args: list[str], env: dict[str, str], tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable,
        "-c",
        "from trainsvc import main; main()",
        "serve",
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--metrics-listen",
        "",
        "--log-format",
        "json",
        *args,
    ]
    return subprocess.run(
        cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )


def test_unreachable_endpoint_and_missing_bucket_fail_startup(s3: S3, tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    url = f"s3://{BUCKET}/svc"
    started = time.monotonic()
    done = _serve_exit(
        [
            "--data-dir",
            url,
            "--state-dir",
            str(tmp_path / "state"),
            "--storage-option",
            f"endpoint_url={closed}",
        ],
        s3.env,
        tmp_path,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 1, done.stderr
    assert f"trainsvc: error: --data-dir {url}: " in done.stderr, done.stderr
    assert f"cannot reach the storage at {closed}" in done.stderr, done.stderr
    assert SECRET not in done.stdout + done.stderr
    print(f"unreachable endpoint: exit 1 after {elapsed:.1f} s")

    done = _serve_exit(
        ["--data-dir", "s3://no-such-bucket/x", "--storage-option", f"endpoint_url={s3.endpoint}"],
        {**s3.env, "XDG_CACHE_HOME": str(tmp_path / "cache")},
        tmp_path,
    )
    assert done.returncode == 1, done.stderr
    assert "--data-dir s3://no-such-bucket/x: " in done.stderr
    assert "bucket 'no-such-bucket' does not exist" in done.stderr, done.stderr
    # the default state directory: under XDG_CACHE_HOME, by a hash of the URL
    assert list((tmp_path / "cache" / "trainsvc").iterdir())

    done = _serve_exit(
        [
            "--data-dir",
            url,
            "--state-dir",
            str(tmp_path / "state"),
            "--storage-option",
            f"endpoint_url={s3.endpoint}",
            "--storage-option",
            "no_such_option=1",
        ],
        s3.env,
        tmp_path,
    )
    assert done.returncode == 1 and "--storage-option: refused by the filesystem" in done.stderr
    assert "no_such_option" in done.stderr, done.stderr

    done = _serve_exit(["--state-dir", str(tmp_path / "s")], {}, tmp_path)
    assert done.returncode == 1 and "--state-dir: only with a URL --data-dir" in done.stderr


def test_refused_credentials_fail_startup_without_the_secret(tmp_path: Path) -> None:
    """A moto server that checks signatures (its IAM emulation on from the first call)."""
    with local_s3(auth=True, key="AKIAUNKNOWNKEY000000", secret=SECRET) as server:
        done = _serve_exit(
            [
                "--data-dir",
                "s3://bkt/svc",
                "--state-dir",
                str(tmp_path / "state"),
                "--storage-option",
                f"endpoint_url={server.endpoint}",
            ],
            server.env,
            tmp_path,
        )
    assert done.returncode == 1, done.stderr
    assert "trainsvc: error: --data-dir s3://bkt/svc: " in done.stderr, done.stderr
    assert "credentials" in done.stderr and "AWS_SECRET_ACCESS_KEY" in done.stderr, done.stderr
    assert SECRET not in done.stdout + done.stderr


def test_othello_engine_checkpoints_published_and_resumed_from_s3(
    s3: S3, start_service: Any, wait_for: Any, tmp_path: Path
) -> None:
    """The Rust engine writes its own checkpoints into the staging directory: the same
    publication, retention and fetch-to-resume apply to it."""
    pytest.importorskip("trainsvc_engine")
    url = f"s3://{BUCKET}/svc-othello"
    svc = start_service(
        tmp_path / "o",
        extra=_serve_args(url, tmp_path / "state", tmp_path / "registry.sqlite3", s3.endpoint),
        env=s3.env,
    )
    with svc.client() as c:
        run = c.create_run(
            "othello",
            step_budget=1_000_000,
            seed=5,
            config={"search_depth": 1, "threads": 1, "frame_interval": 64},
            checkpoint_policy=pb.CheckpointPolicy(interval_steps=64, keep_last=KEEP_LAST),
        )
        prefix = f"svc-othello/runs/{run.name.split('/')[1]}/checkpoints"
        wait_for(c, run.name, lambda r: r.step >= 200, what="games")
        paused = c.pause_run(run.name)
        ckpts = c.list_checkpoints(run.name)
        assert ckpts[-1].step == paused.step and len(ckpts) <= KEEP_LAST, ckpts
        assert _checkpoint_steps(s3, prefix) == [ck.step for ck in ckpts]
        for ck in ckpts:
            assert ck.path.startswith(f"s3://{BUCKET}/{prefix}/")
            ckpt.verify(ck.path, storage_options=s3.storage_options)
        # A new worker from the newest checkpoint: its staging directory is emptied, the
        # object fetched into it, and the engine continues from it.
        resumed = c.resume_run(run.name, checkpoint=ckpts[-1].name.rsplit("/", 1)[1])
        assert resumed.step >= paused.step
        seen: list[int] = []

        def progressed(r: pb.Run) -> bool:
            seen.append(r.step)
            return r.state == pb.Run.RUNNING and r.step > paused.step + 64

        wait_for(c, run.name, progressed, what="games after resume")
        assert min(seen) >= paused.step, seen  # counted on from the checkpoint, not from 0
        c.stop_run(run.name)
        final = c.list_checkpoints(run.name)
    assert final[-1].step > paused.step and len(final) <= KEEP_LAST, final
    assert _checkpoint_steps(s3, prefix) == [ck.step for ck in final]


def test_a_model_version_registers_from_a_run_whose_checkpoints_are_in_s3(
    s3: S3, start_service: Any, lm_inputs: Any, wait_for: Any, tmp_path: Path
) -> None:
    """RegisterModelVersion(source_run) downloads the run's newest checkpoint from the
    storage to export it: the version equals one registered from a local export of that
    object."""
    pytest.importorskip("trainsvc_lm")
    url = f"s3://{BUCKET}/svc-models"
    exported = tmp_path / "inputs" / "exported"
    exported.parent.mkdir()
    svc = start_service(
        tmp_path / "m",
        extra=[
            *_serve_args(url, tmp_path / "state", tmp_path / "registry.sqlite3", s3.endpoint),
            "--input-dir",
            str(lm_inputs.root),
            "--input-dir",
            str(exported.parent),
        ],
        env=s3.env,
    )
    with svc.client() as c:
        run = c.create_run("lora", step_budget=4, seed=1, config=lm_inputs.config())
        done = wait_for(c, run.name, lambda r: r.state in TERMINAL, timeout=300)
        assert done.state == pb.Run.COMPLETED, done.state_message
        newest = c.list_checkpoints(run.name)[-1]
        assert newest.path.startswith(f"s3://{BUCKET}/svc-models/runs/"), newest.path
        from_run = c.models.register("trader", "", source_run=run.name)
        assert from_run.source_checkpoint == newest.name
        assert from_run.artifact_kind == "adapter"
        assert from_run.base_model == str(lm_inputs.model)

        local = ckpt.download_remote_checkpoint(
            newest.path, tmp_path / "copy", storage_options=s3.storage_options
        )
        out = subprocess.run(
            [sys.executable, "-m", "trainsvc_lm._export", str(local), str(exported)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        by_hand = c.models.register(  # the same files give the same artifact digest
            "trader",
            str(exported),
            artifact_kind="adapter",
            base_model=str(lm_inputs.model),
        )
        assert by_hand.version == 2
        assert by_hand.artifact_sha256 == from_run.artifact_sha256
    assert svc.terminate() == 0
