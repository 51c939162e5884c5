"""The model registry, traffic splits and artifacts: versions, promote, roll back, events,
sticky routing, and verified artifacts in a local directory and an S3-compatible server."""

from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from trainsvc._artifacts import MANIFEST, ArtifactStore
from trainsvc._domain import FailedPreconditionError, InvalidArgumentError, NotFoundError
from trainsvc._model_registry import ModelRegistry
from trainsvc._traffic import route, validate_split


def _register(reg: ModelRegistry, model: str = "trader", **kw: object) -> int:
    args = {
        "base_model": "tiny-llama",
        "artifact_uri": f"/artifacts/{model}/x",
        "artifact_kind": "adapter",
        "artifact_sha256": "ab" * 32,
        "source_run": "runs/r1",
        "metrics": {"reward": 0.5},
        "windows": ["w1"],
    }
    args.update(kw)
    return reg.register(model, **args).version  # type: ignore[arg-type]


def test_splits_must_sum_to_one_and_name_the_field() -> None:
    assert validate_split({1: 0.8, 2: 0.2, 3: 0.0}) == {1: 0.8, 2: 0.2}
    cases = [
        ({}, "traffic"),
        ({1: 0.5, 2: 0.4}, "sum to 1"),
        ({1: 1.5}, "traffic[1]"),
        ({1: float("nan")}, "traffic[1]"),
        ({0: 1.0}, "positive integer"),
    ]
    for split, words in cases:
        with pytest.raises(InvalidArgumentError, match=words.replace("[", r"\[")):
            validate_split(split)


def test_routing_is_sticky_proportional_and_growing_the_newest_keeps_its_users() -> None:
    keys = [f"agent-{i}" for i in range(4000)]
    split = {1: 0.8, 2: 0.2}
    first = {k: route("trader", split, k) for k in keys}
    assert first == {k: route("trader", split, k) for k in keys}  # sticky
    share = collections.Counter(first.values())[2] / len(keys)
    assert 0.17 < share < 0.23
    grown = {k: route("trader", {1: 0.5, 2: 0.5}, k) for k in keys}
    assert all(grown[k] == 2 for k in keys if first[k] == 2)  # nobody left version 2
    other = {k: route("poster", split, k) for k in keys}
    assert other != first  # models split independently


def test_versions_promote_rollback_and_events(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "models.db")
    assert _register(reg) == 1 and _register(reg) == 2 and _register(reg, "poster") == 1
    assert [v.version for v in reg.versions("trader")] == [1, 2]
    assert reg.models() == ["poster", "trader"]
    with pytest.raises(FailedPreconditionError, match="no previous deployment"):
        reg.rollback("trader")
    reg.promote("trader", 1, principal="alice", reason="first")
    assert reg.deployment("trader").traffic == {1: 1.0}  # type: ignore[union-attr]
    reg.promote("trader", 2, 0.2, principal="bot", reason="canary")
    assert reg.deployment("trader").traffic == pytest.approx({1: 0.8, 2: 0.2})  # type: ignore[union-attr]
    reg.promote("trader", 2, principal="bot", reason="soak passed")
    assert reg.deployment("trader").traffic == {2: 1.0}  # type: ignore[union-attr]
    back = reg.rollback("trader", principal="carol", reason="regression")
    assert back.traffic == pytest.approx({1: 0.8, 2: 0.2})
    events = reg.events("trader")
    assert [e.type for e in events] == [
        "registered", "registered", "promoted", "promoted", "promoted", "rolled_back",
    ]  # fmt: skip
    last = events[-1]
    assert (last.principal, last.reason, last.version) == ("carol", "regression", 2)
    assert last.details["before"] == {"2": 1.0} and last.details["after"]["1"] == pytest.approx(0.8)

    with pytest.raises(InvalidArgumentError, match=r"traffic\[7\]"):
        reg.set_traffic("trader", {7: 1.0})
    with pytest.raises(NotFoundError):
        reg.set_traffic("nobody", {1: 1.0})
    with pytest.raises(InvalidArgumentError, match="model"):
        _register(reg, "Bad Name")
    reg.record_evaluation("trader", 2, passed=False, metrics={"reward": 0.1}, reason="worse")
    with pytest.raises(FailedPreconditionError, match="failed its evaluation"):
        reg.promote("trader", 2)
    assert reg.promote("trader", 2, force=True, reason="override").traffic == {2: 1.0}
    reg.close()
    again = ModelRegistry(tmp_path / "models.db")  # everything was committed
    assert again.deployment("trader").traffic == {2: 1.0}  # type: ignore[union-attr]
    assert len(again.events("trader")) == len(events) + 2


def test_sigkill_during_changes_loses_no_acknowledged_change(tmp_path: Path) -> None:
    """A writer process prints each change after it returns; SIGKILL it mid-stream: every
    printed change is in the database."""
    script = f"""
import sys
from trainsvc._model_registry import ModelRegistry
reg = ModelRegistry({str(tmp_path / "models.db")!r})
for i in range(10_000):
    v = reg.register("trader", base_model="b", artifact_uri=f"/a/{{i}}",
                     artifact_kind="full", artifact_sha256="00")
    print(v.version, flush=True)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    acknowledged = [int(proc.stdout.readline()) for _ in range(30)]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    reg = ModelRegistry(tmp_path / "models.db")
    versions = [v.version for v in reg.versions("trader")]
    assert versions[: len(acknowledged)] == acknowledged
    assert versions == list(range(1, len(versions) + 1))  # no half-written row
    assert len(reg.events("trader")) == len(versions)


def _model_dir(root: Path) -> Path:
    root.mkdir()
    (root / "adapter_config.json").write_text('{"r": 4}')
    (root / "adapter_model.safetensors").write_bytes(os.urandom(4096))
    (root / "sub").mkdir()
    (root / "sub" / "tokenizer.json").write_text("{}")
    return root


def test_local_artifacts_are_content_addressed_and_verified(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    src = _model_dir(tmp_path / "adapter")
    stored = store.put("trader", src)
    assert store.put("trader", src).uri == stored.uri  # same bytes, same place
    out = store.fetch(stored.uri, tmp_path / "cache" / "v1", expected_sha256=stored.sha256)
    assert (out / "sub" / "tokenizer.json").read_text() == "{}"
    assert (out / "adapter_model.safetensors").read_bytes() == (
        src / "adapter_model.safetensors"
    ).read_bytes()
    # A file changed after upload is caught, and nothing half-fetched is left behind.
    (Path(stored.uri) / "adapter_config.json").write_text('{"r": 8}')
    with pytest.raises(FailedPreconditionError, match=r"adapter_config\.json"):
        store.fetch(stored.uri, tmp_path / "cache" / "v2")
    assert not (tmp_path / "cache" / "v2").exists()
    # An upload without its manifest (cut short) is not an artifact.
    (Path(stored.uri) / MANIFEST).unlink()
    with pytest.raises(NotFoundError, match="no complete artifact"):
        store.fetch(stored.uri, tmp_path / "cache" / "v3")
    with pytest.raises(InvalidArgumentError, match="not a directory"):
        store.put("trader", tmp_path / "missing")


@pytest.fixture
def s3_root() -> Iterator[tuple[str, dict[str, object]]]:
    """A bucket on a local S3-compatible server (moto in server mode, 127.0.0.1)."""
    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    options: dict[str, object] = {
        "key": "test",
        "secret": "test",
        "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}", "region_name": "us-east-1"},
    }
    try:
        boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{port}",
            aws_access_key_id="test",
            aws_secret_access_key="test",
            region_name="us-east-1",
        ).create_bucket(Bucket="models-bucket")
        yield "s3://models-bucket/artifacts", options
    finally:
        server.stop()


def test_s3_artifacts_round_trip_and_catch_tampering(
    tmp_path: Path, s3_root: tuple[str, dict[str, object]]
) -> None:
    import s3fs

    root, options = s3_root
    store = ArtifactStore(root, storage_options=options)
    src = _model_dir(tmp_path / "adapter")
    stored = store.put("trader", src)
    assert stored.uri.startswith("s3://models-bucket/artifacts/trader/")
    out = store.fetch(stored.uri, tmp_path / "cache", expected_sha256=stored.sha256)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == sorted(
        stored.files
    )
    fs = s3fs.S3FileSystem(**options)
    fs.pipe(f"{stored.uri}/adapter_config.json".removeprefix("s3://"), b'{"r": 64}')
    with pytest.raises(FailedPreconditionError, match="does not match"):
        store.fetch(stored.uri, tmp_path / "cache2")
    with pytest.raises(FailedPreconditionError, match="registered"):
        store.fetch(stored.uri, tmp_path / "cache3", expected_sha256="0" * 64)
