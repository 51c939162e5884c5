"""Remote checkpoints on a real S3-compatible server (moto in server mode, on 127.0.0.1).

Multipart publication, ranged reads, CRCs, retention over listings, errors
that name the setting, and kill -9 of a saving process mid-upload.
"""

from __future__ import annotations

import importlib.util
import itertools
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trainsvc_checkpoint as ckpt
from trainsvc_checkpoint.testing import LocalS3, free_port, local_s3

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

BUCKET = "ckpt-bucket"
CHILD = Path(__file__).parent / "remote_crash_child.py"
_spec = importlib.util.spec_from_file_location("ckpt_remote_crash_child", CHILD)
assert _spec is not None and _spec.loader is not None
child: Any = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(child)


S3 = LocalS3


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    """A bucket on a local S3-compatible server (moto in server mode, 127.0.0.1)."""
    with local_s3(BUCKET) as server:
        yield server


@pytest.fixture
def prefix() -> str:
    return f"run-{uuid.uuid4().hex[:8]}"


def keys(s3: S3, prefix: str) -> list[str]:
    reply = s3.client.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/")
    return sorted(o["Key"].removeprefix(f"{prefix}/") for o in reply.get("Contents", []))


def uploads(s3: S3, prefix: str) -> list[dict[str, Any]]:
    return list(
        s3.client.list_multipart_uploads(Bucket=BUCKET, Prefix=f"{prefix}/").get("Uploads", [])
    )


def big_state(step: int) -> dict[str, Any]:
    return {
        "params": {"w": np.full(3 * 1024 * 1024, step, np.float32), "b": np.arange(5) + step},
        "step": step,
    }


def test_multipart_upload_parallel_parts_and_ranged_reads(
    s3: S3, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = s3.url(f"{prefix}/big.safetensors")
    ckpt.save(url, big_state(7), storage_options=s3.storage_options)
    head = s3.client.head_object(Bucket=BUCKET, Key=f"{prefix}/big.safetensors")
    assert head["ETag"].strip('"').endswith("-2")  # 12 MiB in 8 MiB parts (the default)
    ckpt.save(
        s3.url(f"{prefix}/small.safetensors"), {"a": np.ones(3)}, storage_options=s3.storage_options
    )
    head = s3.client.head_object(Bucket=BUCKET, Key=f"{prefix}/small.safetensors")
    assert "-" not in head["ETag"]  # at most one part: a single PutObject
    manager = ckpt.RemoteCheckpointManager(
        s3.url(prefix), storage_options=s3.storage_options, part_size=5 * 1024 * 1024, concurrency=3
    )
    manager.save(7, big_state(7), blocking=True)
    head = s3.client.head_object(Bucket=BUCKET, Key=f"{prefix}/step_7.safetensors")
    assert head["ETag"].strip('"').endswith("-3")  # a completed multipart upload of 3 parts
    assert keys(s3, prefix) == [
        "big.safetensors",
        "latest",
        "small.safetensors",
        "step_7.safetensors",
    ]

    # Ranged reads: record every request of the (cached, shared) filesystem instance.
    fs = manager.location.fs
    ranges: list[tuple[int | None, int | None]] = []
    real = fs.cat_file

    def spy(path: str, start: int | None = None, end: int | None = None, **kw: Any) -> Any:
        ranges.append((start, end))
        return real(path, start=start, end=end, **kw)

    monkeypatch.setattr(fs, "cat_file", spy)
    info = ckpt.read_info(manager.url_of("step_7.safetensors"), storage_options=s3.storage_options)
    assert info.tensors["params/w"] == ("F32", (3 * 1024 * 1024,))
    assert ranges == [(0, 64 * 1024)]  # the header, from one ranged request
    ranges.clear()
    b = ckpt.read_tensor(url, "params/b", storage_options=s3.storage_options)
    assert b.tolist() == [7, 8, 9, 10, 11]
    assert ranges[0] == (0, 64 * 1024) and len(ranges) == 2
    start, end = ranges[1]
    assert start is not None and end is not None and end - start == b.nbytes
    ranges.clear()
    from trainsvc_checkpoint import _remote

    # 5 MiB ranges: params/w is cut across three, read in parallel, CRCs combined.
    monkeypatch.setattr(_remote, "READ_CHUNK", 5 * 1024 * 1024)
    restored = manager.restore_checkpoint()
    np.testing.assert_array_equal(restored.tree["params"]["w"], big_state(7)["params"]["w"])
    data = sorted(r for r in ranges[1:] if r[0] is not None and r[1] is not None)
    assert ranges[0] == (0, 64 * 1024) and len(data) == 3  # the header, then 3 data ranges
    assert all(b[1] == a[0] for b, a in itertools.pairwise(data))  # contiguous


def test_every_crc_checked_on_load(s3: S3, prefix: str) -> None:
    url = s3.url(f"{prefix}/c.safetensors")
    ckpt.save(url, big_state(1), storage_options=s3.storage_options)
    key = f"{prefix}/c.safetensors"
    data = bytearray(s3.client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    data[len(data) // 2] ^= 0x10  # inside params/w
    s3.client.put_object(Bucket=BUCKET, Key=key, Body=bytes(data))
    with pytest.raises(ckpt.CorruptCheckpointError, match="tensor 'params/w': CRC32C"):
        ckpt.load(url, storage_options=s3.storage_options)
    with pytest.raises(ckpt.CorruptCheckpointError, match="tensor 'params/w': CRC32C"):
        ckpt.verify(url, storage_options=s3.storage_options)
    assert ckpt.read_tensor(url, "params/b", storage_options=s3.storage_options).tolist() == [
        1,
        2,
        3,
        4,
        5,
    ]
    with pytest.raises(ckpt.CheckpointNotFoundError, match="not found"):
        ckpt.load(s3.url(f"{prefix}/nope.safetensors"), storage_options=s3.storage_options)


def test_compressed_and_retention_over_listing(s3: S3, prefix: str) -> None:
    with ckpt.RemoteCheckpointManager(
        s3.url(prefix), keep_last=2, compression="zstd", storage_options=s3.storage_options
    ) as manager:
        for step in (1, 2, 3, 4):
            manager.save(step, big_state(step))
        manager.wait()
        assert keys(s3, prefix) == ["latest", "step_3.safetensors.zst", "step_4.safetensors.zst"]
        restored = manager.restore_checkpoint()
        assert restored.step == 4 and restored.url == s3.url(f"{prefix}/step_4.safetensors.zst")
        assert ckpt.read_info(restored.url, storage_options=s3.storage_options).compressed


def test_missing_bucket_and_unreachable_endpoint_are_named(s3: S3) -> None:
    with pytest.raises(ckpt.CheckpointNotFoundError, match="bucket 'no-such-bucket'"):
        ckpt.RemoteCheckpointManager("s3://no-such-bucket/run", storage_options=s3.storage_options)
    closed = f"http://127.0.0.1:{free_port()}"
    options = {
        "key": "AKIDEXAMPLE",
        "secret": "very-secret-value-42",
        "client_kwargs": {"endpoint_url": closed, "region_name": "us-east-1"},
        "config_kwargs": {"retries": {"max_attempts": 1}},
    }
    with pytest.raises(ckpt.RemoteStorageError) as err:
        ckpt.load("s3://bkt/x.safetensors", storage_options=options)
    assert f"cannot reach the storage at {closed} (storage_options endpoint_url)" in str(err.value)
    assert "very-secret-value-42" not in str(err.value)


def test_refused_credentials_are_named_and_never_shown(tmp_path: Path) -> None:
    """A moto server that checks signatures (its IAM emulation on from the first call)."""
    server = local_s3(auth=True, key="AKIAUNKNOWNKEY000000", secret="very-secret-value-42")
    with server as s3, pytest.raises(ckpt.RemoteStorageError) as err:
        ckpt.save(
            "s3://bkt/run/x.safetensors", {"a": np.ones(3)}, storage_options=s3.storage_options
        )
    message = str(err.value)
    assert "storage_options key/secret" in message and "AWS_ACCESS_KEY_ID" in message
    assert "very-secret-value-42" not in message


def _check_prefix(s3: S3, prefix: str) -> int:
    """Every object under a checkpoint name loads as exactly its step's state; return the
    step a fresh manager restores (after it aborted what the killed save left)."""
    manager = ckpt.RemoteCheckpointManager(
        s3.url(prefix), keep_last=2, storage_options=s3.storage_options
    )
    assert uploads(s3, prefix) == []  # the killed upload was aborted
    assert not [k for k in keys(s3, prefix) if k.startswith(".tmp-")]
    for c in manager.checkpoints():
        tree = ckpt.load(manager.url_of(c), storage_options=s3.storage_options)
        child.check(tree, c.step)
    restored = manager.restore_checkpoint()
    child.check(restored.tree, restored.step)
    assert restored.step == manager.latest_step()
    return restored.step


def test_kill_9_mid_upload_never_publishes_a_partial_checkpoint(s3: S3, prefix: str) -> None:
    with ckpt.RemoteCheckpointManager(
        s3.url(prefix), keep_last=2, storage_options=s3.storage_options
    ) as manager:
        manager.save(1, child.state(1), blocking=True)
    rng = random.Random(1234)
    step = 2
    saw_partial = False
    for attempt in range(4):
        proc = subprocess.Popen(
            [sys.executable, str(CHILD), s3.endpoint, s3.url(prefix), str(step)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        try:
            line = proc.stdout.readline()
            assert line == f"saving {step}\n", (line, proc.stderr and proc.stderr.read())
            if attempt == 0:
                # The first kill lands while parts of step 2 are uploaded, not completed.
                deadline = time.monotonic() + 60
                while True:
                    pending = [u for u in uploads(s3, prefix) if "step_2" in u["Key"]]
                    if pending:
                        parts = s3.client.list_parts(
                            Bucket=BUCKET, Key=pending[0]["Key"], UploadId=pending[0]["UploadId"]
                        ).get("Parts", [])
                        if parts:
                            break
                    assert time.monotonic() < deadline, "no part of step 2 was ever uploaded"
                    time.sleep(0.005)
            else:
                time.sleep(rng.uniform(0.0, 2.0))  # any instant: mid-part, between saves...
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
            if proc.stderr is not None:
                proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL
        if attempt == 0 and "step_2.safetensors" not in keys(s3, prefix):
            saw_partial = True
            assert uploads(s3, prefix), "the killed upload should be pending, invisible"
            # The previous checkpoint still loads; the partial one is nowhere to be read.
            with pytest.raises(ckpt.CheckpointNotFoundError):
                ckpt.load(
                    s3.url(f"{prefix}/step_2.safetensors"), storage_options=s3.storage_options
                )
        step = _check_prefix(s3, prefix) + 1
    assert saw_partial
