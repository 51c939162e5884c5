"""`trainsvc._remote_store` against a real S3-compatible server (moto on 127.0.0.1).

The pieces behind ``serve --data-dir s3://...``: publishing a trainer's file
byte for byte, retention over the remote listing (never the only valid
checkpoint), reconciliation that finds a corrupt object, fetching into the
staging directory, the worker's restore falling back past a corrupt object,
and the command line's parsing of the flags.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from multiprocessing import Pipe
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trainsvc_checkpoint as ckpt
from trainsvc import _cli
from trainsvc import _protocol as proto
from trainsvc._remote_store import (
    RemoteRunCheckpoints,
    RemoteStore,
    clear_staging,
    default_state_dir,
    is_url,
    redact_url,
)
from trainsvc._server import ConfigurationError
from trainsvc._worker import WorkerJob, _Worker
from trainsvc_checkpoint.testing import local_s3

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

BUCKET = "store-tests"


@pytest.fixture(scope="module")
def store_options() -> Iterator[tuple[Any, dict[str, Any]]]:
    """A bucket on moto's S3 server: (a boto3 client, storage options)."""
    with local_s3(BUCKET, key="k", secret="s") as s3:
        yield s3.client, {"key": "k", "secret": "s", "endpoint_url": s3.endpoint}


def _save_local(staging: Path, step: int) -> Path:
    with ckpt.CheckpointManager(staging, keep_last=100) as manager:
        manager.save(step, {"w": np.full(1000, step, np.float32), "step": step}, blocking=True)
    return staging / f"step_{step}.safetensors"


def _corrupt(client: Any, key: str) -> None:
    data = bytearray(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    data[-3] ^= 0xFF  # a byte of the last tensor's data: its CRC fails
    client.put_object(Bucket=BUCKET, Key=key, Body=bytes(data))


def test_publish_retention_reconcile_fetch(
    store_options: tuple[Any, dict[str, Any]], tmp_path: Path
) -> None:
    client, options = store_options
    store = RemoteStore(f"s3://{BUCKET}/a/", options)
    store.check()
    assert store.url == f"s3://{BUCKET}/a" and "secret" not in repr(store)
    staging = tmp_path / "staging"
    remote = RemoteRunCheckpoints(store, "r1", staging, keep_last=2, keep_every=0)
    prefix = "a/runs/r1/checkpoints"
    deleted: list[str] = []
    for step in (1, 2, 3, 4):
        path = _save_local(staging, step)
        published = remote.publish(path)
        assert published.url == f"s3://{BUCKET}/{prefix}/step_{step}.safetensors"
        obj = client.get_object(Bucket=BUCKET, Key=f"{prefix}/step_{step}.safetensors")
        assert obj["Body"].read() == path.read_bytes()
        assert published.size_bytes == path.stat().st_size
        deleted += published.deleted  # the run's retention, after each publication
    assert deleted == [remote.url_of(f"step_{s}.safetensors") for s in (1, 2)]
    assert [o.step for o in store.list("r1")] == [3, 4]
    latest = client.get_object(Bucket=BUCKET, Key=f"{prefix}/latest")["Body"].read()
    assert latest == b"step_4.safetensors\n"
    assert store.owns("r1", remote.url_of("step_4.safetensors"))
    assert not store.owns("r1", f"s3://{BUCKET}/a/runs/r2/checkpoints/step_4.safetensors")
    assert not store.owns("r1", remote.url_of("x/step_4.safetensors"))

    # Reconciliation verifies every object: the corrupt one is dropped, with the CRC's reason.
    _corrupt(client, f"{prefix}/step_4.safetensors")
    result = store.reconcile("r1", {"step_3", "step_4"}, trust_indexed=False)
    assert result.removed == ("step_4",) and not result.added
    assert "CRC" in result.unusable["step_4"] or "crc" in result.unusable["step_4"].lower()
    fresh = store.reconcile("r1", set(), trust_indexed=False)
    assert [o.checkpoint_id for o in fresh.added] == ["step_3"]
    assert fresh.added[0].size_bytes == (staging / "step_3.safetensors").stat().st_size

    # Restore fallbacks: the older objects, newest first (retention that never deletes the
    # only valid checkpoint is RemoteCheckpointManager's, tested with the library).
    client.put_object(
        Bucket=BUCKET, Key=f"{prefix}/step_5.safetensors", Body=b"not a checkpoint at all"
    )
    again = RemoteRunCheckpoints(store, "r1", staging, keep_last=2, keep_every=0)
    assert [o.step for o in store.list("r1")] == [3, 4, 5]
    assert again.older(5, remote.url_of("step_5.safetensors")) == [
        remote.url_of("step_4.safetensors"),
        remote.url_of("step_3.safetensors"),
    ]

    # Fetch: into the staging directory under its name, nothing temporary left.
    clear_staging(staging)
    (staging / "metrics.jsonl").write_text("{}")
    assert sorted(p.name for p in staging.iterdir()) == ["metrics.jsonl"]
    local = again.fetch(remote.url_of("step_3.safetensors"))
    assert local == staging / "step_3.safetensors"
    assert ckpt.load(local)["step"] == 3
    assert sorted(p.name for p in staging.iterdir()) == ["metrics.jsonl", "step_3.safetensors"]
    with pytest.raises(ckpt.CheckpointNotFoundError):
        again.fetch(remote.url_of("step_9.safetensors"))


class _Adapter:
    """The part of a trainer adapter a restore uses: a real load, every CRC checked."""

    def restore(self, path: Path) -> int:
        return int(ckpt.load(path)["step"])


def test_worker_restore_falls_back_past_a_corrupt_remote_checkpoint(
    store_options: tuple[Any, dict[str, Any]], tmp_path: Path
) -> None:
    client, options = store_options
    store = RemoteStore(f"s3://{BUCKET}/b", options)
    source = tmp_path / "trainer"
    remote = RemoteRunCheckpoints(store, "r1", source, keep_last=5, keep_every=0)
    for step in (3, 4):
        remote.publish(_save_local(source, step))
    _corrupt(client, "b/runs/r1/checkpoints/step_4.safetensors")

    staging = tmp_path / "staging"
    newest = remote.url_of("step_4.safetensors")
    job = WorkerJob("r1", "emergence", {}, str(staging), 10, newest, restore_fallback=True)
    service, worker_end = Pipe()
    worker = _Worker(worker_end, job)
    worker.remote = RemoteRunCheckpoints(store, "r1", staging, keep_last=5, keep_every=0)
    restored = worker.restore(_Adapter(), newest, staging)
    assert restored == (remote.url_of("step_3.safetensors"), 3)
    skipped = service.recv()
    assert isinstance(skipped, proto.CheckpointSkipped) and skipped.path == newest
    assert "CorruptCheckpointError" in skipped.reason
    # only the restored file is staged (the engine resumes from the newest file there)
    assert [p.name for p in staging.iterdir()] == ["step_3.safetensors"]


def test_flags_and_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parser = _cli._parser()

    def location(*argv: str) -> tuple[Path, str, dict[str, Any]]:
        return _cli._data_location(parser.parse_args(["serve", *argv]))

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    state, url, options = location(
        "--data-dir",
        "s3://bkt/p/",
        "--storage-option",
        "endpoint_url=http://127.0.0.1:9000",
        "--storage-option",
        'config_kwargs={"retries": {"max_attempts": 3}}',
        "--storage-option",
        "use_ssl=false",
    )
    assert url == "s3://bkt/p" and state == default_state_dir("s3://bkt/p")
    assert state.parent == tmp_path / "cache" / "trainsvc" and len(state.name) == 16
    assert options == {
        "endpoint_url": "http://127.0.0.1:9000",
        "config_kwargs": {"retries": {"max_attempts": 3}},
        "use_ssl": False,
    }
    assert location("--data-dir", "s3://bkt/p", "--state-dir", "st")[0] == Path("st")
    assert location("--data-dir", str(tmp_path))[:2] == (tmp_path, "")
    assert location("--data-dir", f"file://{tmp_path}")[:2] == (tmp_path, "")
    with pytest.raises(ConfigurationError, match="--state-dir: only with a URL --data-dir"):
        location("--state-dir", "st")
    with pytest.raises(ConfigurationError, match="--storage-option: only with a URL"):
        location("--storage-option", "a=b")
    for bad in ("novalue", "=x", 'k={"a":'):
        with pytest.raises(argparse.ArgumentTypeError):
            _cli._storage_option(bad)

    # Workers elsewhere (Ray nodes) get the service's AWS_* variables, never over their own.
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "service-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("UNRELATED_SECRET", "x")
    store = RemoteStore.from_environment("s3://bkt/p", {"endpoint_url": "http://h:1"})
    assert store.env["AWS_SECRET_ACCESS_KEY"] == "service-secret"
    assert "UNRELATED_SECRET" not in store.env and "service-secret" not in repr(store)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")  # the node's own setting
    store.export_env()
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == "service-secret"
    assert os.environ["AWS_DEFAULT_REGION"] == "us-west-2"
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")

    assert is_url("s3://b/p") and is_url("gs://b") and not is_url("/data")
    assert not is_url("file:///data") and not is_url("relative/dir")
    assert redact_url("s3://user:pw@host/bkt/x") == "s3://***@host/bkt/x"
    assert redact_url("s3://bkt/x") == "s3://bkt/x"
