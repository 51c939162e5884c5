"""Remote checkpoints through fsspec's in-memory filesystem: the logic, without a server.

The S3 behaviour (multipart publication, ranged requests, kill -9 mid-upload)
is tested against a real S3-compatible server in ``test_remote_s3.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trainsvc_checkpoint as ckpt

fsspec = pytest.importorskip("fsspec")


@pytest.fixture
def root() -> Iterator[str]:
    """A fresh prefix in fsspec's process-wide memory filesystem."""
    prefix = f"/ckpt-{uuid.uuid4().hex[:8]}"
    yield f"memory://{prefix}"
    fs = fsspec.filesystem("memory")
    if fs.exists(prefix):
        fs.rm(prefix, recursive=True)


def state(step: int) -> dict[str, Any]:
    return {
        "params": {
            "w": np.full((64, 32), step, np.float32),
            "mask": np.arange(10) % 2 == 0,
            "h": np.arange(7, dtype=np.int16) * step,
        },
        "step": step,
        "name": "run",
    }


def memfs() -> Any:
    return fsspec.filesystem("memory")


def path_of(url: str) -> str:
    return url.removeprefix("memory://")


def test_round_trip_info_tensor_and_verify(root: str, tmp_path: Path) -> None:
    url = f"{root}/a.safetensors"
    assert ckpt.save(url, state(3), metadata={"lr": 0.1}) == url
    tree, info = ckpt.load_with_info(url)
    np.testing.assert_array_equal(tree["params"]["w"], state(3)["params"]["w"])
    assert tree["step"] == 3 and info.metadata == {"lr": 0.1} and info.url == url
    header = ckpt.read_info(url)
    assert header.tensors["params/w"] == ("F32", (64, 32)) and not header.compressed
    np.testing.assert_array_equal(ckpt.read_tensor(url, "params/h"), np.arange(7) * 3)
    assert ckpt.verify(url).nbytes == info.nbytes
    # The object's bytes are exactly the local file's.
    ckpt.save(tmp_path / "a.safetensors", state(3), metadata={"lr": 0.1})
    assert memfs().cat_file(path_of(url)) == (tmp_path / "a.safetensors").read_bytes()
    with pytest.raises(KeyError, match="no tensor 'params/nope'"):
        ckpt.read_tensor(url, "params/nope")


def test_compressed_object(root: str) -> None:
    url = f"{root}/a.safetensors.zst"
    ckpt.save(url, state(5), compression="zstd")
    assert memfs().cat_file(path_of(url))[:4] == b"\x28\xb5\x2f\xfd"
    assert ckpt.read_info(url).compressed
    np.testing.assert_array_equal(ckpt.load(url)["params"]["mask"], state(5)["params"]["mask"])
    np.testing.assert_array_equal(ckpt.read_tensor(url, "params/w"), state(5)["params"]["w"])


def test_file_url_is_a_local_path(tmp_path: Path) -> None:
    url = f"file://{tmp_path}/x.safetensors"
    written = ckpt.save(url, state(1))
    assert Path(written) == tmp_path / "x.safetensors"
    assert ckpt.load(url)["step"] == 1 and ckpt.read_info(url).url is None


def test_every_crc_is_checked(root: str) -> None:
    url = f"{root}/a.safetensors"
    ckpt.save(url, state(2))
    data = bytearray(memfs().cat_file(path_of(url)))
    info = ckpt.read_info(url)
    data[-3] ^= 0x01  # inside the last tensor of the data section
    memfs().pipe_file(path_of(url), bytes(data))
    last = list(info.tensors)[-1]
    with pytest.raises(ckpt.CorruptCheckpointError, match=f"tensor '{last}': CRC32C"):
        ckpt.load(url)
    with pytest.raises(ckpt.CorruptCheckpointError, match="CRC32C"):
        ckpt.verify(url)
    with pytest.raises(ckpt.CorruptCheckpointError, match=f"tensor '{last}'"):
        ckpt.read_tensor(url, last)
    # A truncated object is refused before any allocation.
    memfs().pipe_file(path_of(url), bytes(data[:-100]))
    with pytest.raises(ckpt.CorruptCheckpointError):
        ckpt.load(url)
    with pytest.raises(ckpt.CheckpointNotFoundError, match="not found"):
        ckpt.load(f"{root}/missing.safetensors")


def test_generic_store_publishes_by_move(root: str) -> None:
    """Without multipart uploads the object is written as .tmp- and moved into place."""
    fs = memfs()
    seen: list[str] = []
    original = fs.mv

    def spy(src: str, dst: str, **kw: Any) -> Any:
        seen.extend([src, dst])
        assert not fs.exists(dst)  # the final name appears only through the move
        return original(src, dst, **kw)

    fs.mv = spy
    try:
        ckpt.save(f"{root}/b.safetensors", state(1))
    finally:
        del fs.mv
    assert Path(seen[0]).name.startswith(".tmp-b.safetensors-")
    assert seen[1].endswith("/b.safetensors")
    assert [Path(p).name for p in fs.ls(path_of(root), detail=False)] == ["b.safetensors"]


def test_manager_retention_latest_and_leftovers(root: str) -> None:
    fs = memfs()
    fs.pipe_file(f"{path_of(root)}/.tmp-step_9.safetensors-abc", b"partial")
    with ckpt.RemoteCheckpointManager(root, keep_last=2, keep_every=10) as manager:
        assert not fs.exists(f"{path_of(root)}/.tmp-step_9.safetensors-abc")
        for step in (5, 10, 15, 20, 25):
            manager.save(step, state(step))
        manager.save_emergency(26, state(26))
        manager.wait()
        assert manager.steps() == [10, 20, 25, 26]
        assert fs.cat_file(f"{path_of(root)}/latest") == b"emergency_step_26.safetensors\n"
        restored = manager.restore_checkpoint()
        assert (restored.step, restored.url) == (26, f"{root}/emergency_step_26.safetensors")
        assert restored.tree["params"]["h"].tolist() == (np.arange(7) * 26).tolist()
        assert manager.restore(step=10)["step"] == 10


def test_publish_file_download_and_read_only_listing(root: str, tmp_path: Path) -> None:
    """A file a trainer wrote elsewhere goes up byte for byte under its own name, with
    ``latest`` and retention after it (not after an emergency one); it comes back down
    atomically; the listing sees sizes without touching leftovers."""
    fs = memfs()
    local = tmp_path / "staging"
    local.mkdir()
    manager = ckpt.RemoteCheckpointManager(root, keep_last=2)
    deleted: list[str] = []
    for step in (1, 2, 3):
        path = local / ckpt.checkpoint_file_name(step)
        ckpt.save(path, state(step))
        published = manager.publish_file(path)
        assert published.url == f"{root}/step_{step}.safetensors"
        assert published.size_bytes == path.stat().st_size
        assert fs.cat_file(path_of(published.url)) == path.read_bytes()
        deleted += published.deleted
    assert deleted == [f"{root}/step_1.safetensors"]
    emergency = local / ckpt.checkpoint_file_name(4, emergency=True)
    ckpt.save(emergency, state(4))
    assert manager.publish_file(emergency).deleted == ()
    assert fs.cat_file(f"{path_of(root)}/latest") == b"emergency_step_4.safetensors\n"

    fs.pipe_file(f"{path_of(root)}/.tmp-step_9.safetensors-x", b"partial")  # a writer's
    listed = ckpt.list_remote_checkpoints(root)
    assert [(c.checkpoint_id, c.size_bytes) for c in listed] == [
        ("step_2", (local / "step_2.safetensors").stat().st_size),
        ("step_3", (local / "step_3.safetensors").stat().st_size),
        ("emergency_step_4", emergency.stat().st_size),
    ]
    assert fs.exists(f"{path_of(root)}/.tmp-step_9.safetensors-x")  # listing is read-only
    assert ckpt.list_remote_checkpoints(f"{root}/nothing-here") == []

    down = manager.download("step_3.safetensors", tmp_path / "down")
    assert down == tmp_path / "down" / "step_3.safetensors"
    assert down.read_bytes() == (local / "step_3.safetensors").read_bytes()
    assert sorted(p.name for p in down.parent.iterdir()) == ["step_3.safetensors"]
    with pytest.raises(ckpt.CheckpointNotFoundError):
        manager.download("step_99.safetensors", tmp_path / "down")
    assert sorted(p.name for p in down.parent.iterdir()) == ["step_3.safetensors"]
    # The read-only download leaves a writer's upload in progress where it is.
    other = ckpt.download_remote_checkpoint(f"{root}/step_2.safetensors", tmp_path / "other")
    assert other.read_bytes() == (local / "step_2.safetensors").read_bytes()
    assert ckpt.load(other)["step"] == 2
    assert fs.exists(f"{path_of(root)}/.tmp-step_9.safetensors-x")
    with pytest.raises(ckpt.CheckpointNotFoundError):
        ckpt.download_remote_checkpoint(f"{root}/step_1.safetensors", tmp_path / "other")
    assert [p.name for p in other.parent.iterdir()] == ["step_2.safetensors"]
    with pytest.raises(ValueError, match=r"path: 'notes.txt' is not a checkpoint file name"):
        manager.publish_file(tmp_path / "notes.txt")


def test_manager_falls_back_and_never_deletes_the_only_valid(root: str) -> None:
    fs = memfs()
    with ckpt.RemoteCheckpointManager(root, keep_last=1) as manager:
        manager.save(1, state(1), blocking=True)
    # Damage step 1, then write step 2 from a new manager: step 1 is invalid, so
    # retention deletes it; a damaged step 3 written by hand is then the newest.
    one = f"{path_of(root)}/step_1.safetensors"
    good = fs.cat_file(one)
    fs.pipe_file(one, good[:-1] + bytes([good[-1] ^ 1]))
    manager = ckpt.RemoteCheckpointManager(root, keep_last=1)
    manager.save(2, state(2), blocking=True)
    assert manager.steps() == [2]
    fs.pipe_file(f"{path_of(root)}/step_3.safetensors", b"\0" * 64)
    with pytest.warns(ckpt.CheckpointFallbackWarning, match="step_3"):
        restored = manager.restore_checkpoint()
    assert restored.step == 2 and [u.file.step for u in restored.skipped] == [3]
    # Step 3 is corrupt and step 2 the only valid one: saving 4 (kept) may delete 2 and 3.
    manager.save(4, state(4), blocking=True)
    assert manager.steps() == [4]
    # With only corrupt checkpoints kept, the newest valid older one is spared.
    fs.pipe_file(f"{path_of(root)}/step_9.safetensors", b"\0" * 64)
    manager._apply_retention()
    assert manager.steps() == [4, 9]


def test_bad_settings_are_named(root: str) -> None:
    with pytest.raises(ValueError, match="part_size"):
        ckpt.RemoteCheckpointManager(root, part_size=1024)
    with pytest.raises(ValueError, match="concurrency"):
        ckpt.RemoteCheckpointManager(root, concurrency=0)
    with pytest.raises(ValueError, match="keep_last"):
        ckpt.RemoteCheckpointManager(root, keep_last=0)
    with pytest.raises(ckpt.RemoteStorageError, match=r"unknown storage scheme .nosuchscheme."):
        ckpt.load("nosuchscheme://x/y.safetensors")


@pytest.mark.parametrize("compression", [None, "zstd"])
def test_read_tensor_of_a_local_file(tmp_path: Path, compression: str | None) -> None:
    path = tmp_path / ("a.safetensors" + (".zst" if compression else ""))
    ckpt.save(path, state(4), compression=compression)  # type: ignore[arg-type]
    for name in ("params/w", "params/mask", "params/h"):
        want = ckpt.load(path)["params"][name.split("/")[1]]
        got = ckpt.read_tensor(path, name)
        assert got.dtype == want.dtype and got.flags.writeable
        np.testing.assert_array_equal(got, want)
    if compression is None:
        data = bytearray(path.read_bytes())
        info = ckpt.read_info(path)
        data[-1] ^= 0x02  # the last byte belongs to the last tensor in file order
        path.write_bytes(bytes(data))
        last = list(info.tensors)[-1]
        with pytest.raises(ckpt.CorruptCheckpointError, match=f"tensor '{last}'"):
            ckpt.read_tensor(path, last)
        first = next(iter(info.tensors))
        assert ckpt.read_tensor(path, first).shape == info.tensors[first][1]


def test_a_storage_failure_never_makes_retention_delete(
    root: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt.save(f"{root}/step_5.safetensors", state(5), metadata={"step": 5})
    manager = ckpt.RemoteCheckpointManager(root, keep_last=1)
    fs = memfs()
    real = fs.cat_file

    def failing(path: str, *args: Any, **kw: Any) -> Any:
        if "step_5" in path:
            raise ConnectionResetError("connection reset by peer")
        return real(path, *args, **kw)

    monkeypatch.setattr(fs, "cat_file", failing)
    # Step 5 stays (newest) and must be verified before step 3 may go: it cannot be read.
    manager.save(3, state(3), blocking=True)
    assert manager.steps() == [3, 5]
    assert "retention skipped this time" in capsys.readouterr().err
    monkeypatch.undo()
    manager.save(4, state(4), blocking=True)
    assert manager.steps() == [5]


def test_parts_cut_consecutive_pieces_exactly() -> None:
    from trainsvc_checkpoint._remote import _parts

    pieces = [memoryview(bytes(range(37))), memoryview(np.arange(100, dtype=np.uint8).data)]
    parts = _parts([*pieces, pieces[0]], 40)
    assert [sum(len(v) for v in p) for p in parts] == [40, 40, 40, 40, 14]
    joined = b"".join(b"".join(p) for p in parts)
    assert joined == b"".join(bytes(p) for p in [*pieces, pieces[0]])
    assert _parts([memoryview(b"")], 40) == []


def test_async_remote_save_holds_the_values_at_the_call(root: str) -> None:
    tree = state(1)
    with ckpt.RemoteCheckpointManager(root, keep_last=3) as manager:
        manager.save(1, tree)  # returns once the arrays are copied
        tree["params"]["w"][:] = -1  # the caller changes its arrays right away
        manager.wait()
        restored = manager.restore_checkpoint(1)
    np.testing.assert_array_equal(restored.tree["params"]["w"], state(1)["params"]["w"])
