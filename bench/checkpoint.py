"""Benchmark trainsvc-checkpoint against the usual ways to save a training state.

A ~400 MB state (50 float32 arrays of 2M elements plus small ones) is saved
and loaded several times by each method; every save is fsync'd unless the row
says otherwise; the table shows medians in MB/s and ratios against baselines
measured in the same run:

- raw: ``ndarray.tofile`` of every array into one file + fsync (the floor for
  a durable save) and ``np.fromfile`` to load;
- pickle protocol 5 (+ fsync), ``np.savez`` (+ fsync);
- ``safetensors.numpy`` save_file (which does not fsync: shown with and without
  an added fsync) and load_file;
- Orbax ``StandardCheckpointer`` where it is installed (`make bench` installs it).

Loads are timed twice: from the page cache (file just written) and from disk
(the file's pages dropped with ``posix_fadvise(DONTNEED)`` first, after every
method of the repetition has saved and ``sync`` has returned, so that no read
competes with writeback). The order of the methods rotates each repetition.
The targets are checked on paired ratios: the median over repetitions of our
rate over the baseline's in the same repetition. Our loads check every CRC. Also measured: how long ``CheckpointManager.save(blocking=False)``
blocks the caller, as a fraction of a blocking save, and CRC32C throughput.

Remote rows: the same state saved to and loaded from a local S3 server
(``moto_server`` on 127.0.0.1, in its own process) with ``s3://`` URLs, against
boto3's plain ``upload_file`` / ``download_file`` of the same bytes in the same
repetitions (``CKPT_BENCH_REMOTE_REPS``, default 3; ``CKPT_BENCH_REMOTE=0``
skips them; they need s3fs, boto3 and moto[server], in the workspace's dev
dependencies).

Run: ``uv run --no-sync python bench/checkpoint.py`` (``CKPT_BENCH_REPS`` sets
the repetitions, default 5; ``CKPT_BENCH_DIR`` the scratch directory).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import trainsvc_checkpoint as ckpt
from safetensors.numpy import load_file, save_file
from trainsvc_checkpoint.testing import local_s3

REPS = int(os.environ.get("CKPT_BENCH_REPS", "5"))
MB = 1e6


def make_state() -> dict[str, Any]:
    """50 float32 arrays of 2M elements plus a few small arrays and scalars (~400 MB)."""
    rng = np.random.default_rng(0)
    return {
        "params": {
            f"layer_{i:02d}": rng.standard_normal(2_000_000, dtype=np.float32) for i in range(50)
        },
        "small": {f"bias_{i}": rng.standard_normal(512).astype(np.float32) for i in range(8)},
        "prng_key": np.array([0, 42], np.uint32),
        "count": np.int64(1000),
    }


def flat_arrays(state: dict[str, Any]) -> dict[str, np.ndarray[Any, Any]]:
    out = {f"params/{k}": v for k, v in state["params"].items()}
    out |= {f"small/{k}": v for k, v in state["small"].items()}
    out["prng_key"] = state["prng_key"]
    out["count"] = np.asarray(state["count"])
    return out


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def drop_cache(path: Path) -> None:
    """Drop a file's (or a directory tree's) clean pages from the page cache."""
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    for p in files:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


@dataclass
class Method:
    """One way to save and load the state."""

    name: str
    save: Callable[[Path], None]
    load: Callable[[Path], Any] | None
    suffix: str = ""
    save_s: list[float] = field(default_factory=list)
    cache_s: list[float] = field(default_factory=list)
    disk_s: list[float] = field(default_factory=list)


def build_methods(state: dict[str, Any]) -> list[Method]:
    arrays = list(flat_arrays(state).values())
    flat = flat_arrays(state)

    def raw_save(path: Path) -> None:
        with path.open("wb") as f:
            for a in arrays:
                a.tofile(f)
            f.flush()
            os.fsync(f.fileno())

    def raw_load(path: Path) -> list[np.ndarray[Any, Any]]:
        with path.open("rb") as f:
            return [np.fromfile(f, a.dtype, a.size).reshape(a.shape) for a in arrays]

    def pickle_save(path: Path) -> None:
        with path.open("wb") as f:
            pickle.dump(state, f, protocol=5)
            f.flush()
            os.fsync(f.fileno())

    def pickle_load(path: Path) -> Any:
        with path.open("rb") as f:
            return pickle.load(f)

    def savez_save(path: Path) -> None:
        with path.open("wb") as f:
            np.savez(f, **flat)
            f.flush()
            os.fsync(f.fileno())

    def savez_load(path: Path) -> Any:
        with np.load(path) as z:
            return {k: z[k] for k in z.files}

    def st_save(path: Path) -> None:
        save_file(flat, path)

    def st_save_fsync(path: Path) -> None:
        save_file(flat, path)
        fsync_path(path)

    methods = [
        Method("raw tofile+fsync", raw_save, raw_load, ".bin"),
        Method(
            "trainsvc-checkpoint", lambda p: ckpt.save(p, state) and None, ckpt.load, ".safetensors"
        ),
        Method(
            "trainsvc-checkpoint zstd",
            lambda p: ckpt.save(p, state, compression="zstd") and None,
            ckpt.load,
            ".safetensors.zst",
        ),
        Method("pickle p5+fsync", pickle_save, pickle_load, ".pkl"),
        Method("np.savez+fsync", savez_save, savez_load, ".npz"),
        Method("safetensors (no fsync)", st_save, None, ".safetensors"),
        Method("safetensors+fsync", st_save_fsync, load_file, ".safetensors"),
    ]
    orbax = orbax_method(state)
    if orbax is not None:
        methods.append(orbax)
    return methods


def orbax_method(state: dict[str, Any]) -> Method | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import orbax.checkpoint as ocp
    except Exception as exc:  # not installed, or no JAX
        print(f"(Orbax not measured: {type(exc).__name__}: {exc})")
        return None
    checkpointer = ocp.StandardCheckpointer()

    def save(path: Path) -> None:
        checkpointer.save(path.absolute(), state)
        checkpointer.wait_until_finished()

    def load(path: Path) -> Any:
        return checkpointer.restore(path.absolute())

    return Method("orbax StandardCheckpointer", save, load, ".orbax")


@contextlib.contextmanager
def timer(out: list[float]) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    out.append(time.perf_counter() - t0)


def rotated(methods: list[Method], rep: int) -> list[Method]:
    """The methods in an order that starts one later each repetition, so that no method is
    always measured first (after a deletion) or right after the same neighbour."""
    k = rep % len(methods)
    return methods[k:] + methods[:k]


def run_methods(methods: list[Method], scratch: Path) -> None:
    """Each repetition: every method saves and loads from the page cache (in a rotated order),
    then every file is dropped from the cache and loaded from disk (again rotated), once all
    saves have reached the disk, so no disk read competes with another method's writeback."""
    for rep in range(REPS):
        paths = {m.name: scratch / f"bench{m.suffix}" for m in methods}
        for m in rotated(methods, rep):
            path = paths[m.name]
            remove(path)
            with timer(m.save_s):
                m.save(path)
            if m.load is not None:
                m.load(path)  # warm the page cache
                with timer(m.cache_s):
                    m.load(path)
        os.sync()
        for m in rotated(methods, rep + 1):
            if m.load is not None:
                drop_cache(paths[m.name])
                with timer(m.disk_s):
                    m.load(paths[m.name])
        for path in paths.values():
            remove(path)
        print(f"  repetition {rep + 1}/{REPS} done", file=sys.stderr, flush=True)


def paired_ratio(ours: list[float], base: list[float]) -> float:
    """Median over repetitions of base time / our time: each repetition's pair was measured
    minutes apart at most, so slow drift of a shared disk cancels out."""
    return statistics.median(b / o for o, b in zip(ours, base, strict=True))


def copy_floor(state: dict[str, Any]) -> float:
    """Median seconds of a plain single-threaded np.copyto of every array into warm buffers."""
    arrays = list(flat_arrays(state).values())
    buffers = [np.empty_like(a) for a in arrays]
    times: list[float] = []
    for _ in range(REPS + 1):
        with timer(times):
            for a, b in zip(arrays, buffers, strict=True):
                np.copyto(b, a)
    return statistics.median(times[1:])


def read_only_state(state: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``state`` whose arrays are read-only (the manager need not snapshot them)."""

    def freeze(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: freeze(v) for k, v in node.items()}
        if isinstance(node, list | tuple):
            return type(node)(freeze(v) for v in node)
        if isinstance(node, np.ndarray):
            out = node.copy()
            out.flags.writeable = False
            return out
        return node

    return cast(dict[str, Any], freeze(state))


def async_fraction(state: dict[str, Any], scratch: Path) -> tuple[float, float, float]:
    """Median seconds the caller is blocked by an async save, a blocking save, and the async total."""
    directory = scratch / "manager"
    manager = ckpt.CheckpointManager(directory, keep_last=1)
    manager.save(0, state)  # first save allocates the snapshot buffers
    manager.wait()
    blocked, blocking, total = [], [], []
    for rep in range(REPS):
        t0 = time.perf_counter()
        manager.save(2 * rep + 1, state)
        blocked.append(time.perf_counter() - t0)
        manager.wait()
        total.append(time.perf_counter() - t0)
        with timer(blocking):
            manager.save(2 * rep + 2, state, blocking=True)
    manager.close()
    shutil.rmtree(directory)
    return statistics.median(blocked), statistics.median(blocking), statistics.median(total)


def orbax_async_fraction(state: dict[str, Any], scratch: Path) -> tuple[float, float] | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import orbax.checkpoint as ocp
    except Exception:
        return None
    checkpointer = ocp.StandardCheckpointer()
    blocked, total = [], []
    for rep in range(REPS):
        path = (scratch / f"orbax_async_{rep}").absolute()
        t0 = time.perf_counter()
        checkpointer.save(path, state)
        blocked.append(time.perf_counter() - t0)
        checkpointer.wait_until_finished()
        total.append(time.perf_counter() - t0)
        shutil.rmtree(path)
    return statistics.median(blocked), statistics.median(total)


def crc_throughput() -> list[tuple[str, float, str]]:
    """GB/s of the CRC32C candidates on a 400 MB NumPy buffer (median of REPS)."""
    import crc32c

    buf = np.random.default_rng(1).integers(0, 255, 400_000_000, dtype=np.uint8)
    view = buf.data
    rows = []
    times: list[float] = []
    for _ in range(REPS):
        with timer(times):
            crc32c.crc32c(view)
    rows.append(
        ("crc32c (used)", buf.nbytes / statistics.median(times) / 1e9, "zero-copy on the buffer")
    )
    try:
        import google_crc32c
    except ImportError:
        rows.append(("google-crc32c", float("nan"), "not installed"))
        return rows
    times = []
    try:  # its C API takes only read-only buffers without a release hook (bytes, not views)
        google_crc32c.value(view.toreadonly()[:10])
        data: Any = view.toreadonly()
        note = "zero-copy on a read-only view"
    except TypeError:
        data = None
        note = "needs a bytes copy of a NumPy buffer; time includes the copy"
    for _ in range(REPS):
        with timer(times):
            value = google_crc32c.value(data if data is not None else bytes(view))
    assert value == crc32c.crc32c(view)
    rows.append(
        (
            f"google-crc32c ({google_crc32c.implementation})",
            buf.nbytes / statistics.median(times) / 1e9,
            note,
        )
    )
    return rows


REMOTE_REPS = int(os.environ.get("CKPT_BENCH_REMOTE_REPS", "3"))
REMOTE_BUCKET = "ckpt-bench"


@dataclass
class RemoteResult:
    """Seconds per repetition of each remote operation, in the same repetitions."""

    ours_save: list[float] = field(default_factory=list)
    ours_load: list[float] = field(default_factory=list)
    boto_up: list[float] = field(default_factory=list)
    boto_down: list[float] = field(default_factory=list)
    object_bytes: int = 0


def remote_bench(state: dict[str, Any], scratch: Path) -> RemoteResult | None:
    """Save and load the state to a local S3 server, against boto3's ``upload_file`` and
    ``download_file`` of the same bytes (the checkpoint file, from the page cache, to a
    file in the page cache), in the same repetitions, alternating which goes first."""
    try:
        import boto3  # noqa: F401  (the baseline)
        import s3fs  # noqa: F401  (the remote path needs it)
    except ImportError as exc:
        print(f"remote rows skipped: {exc} (uv sync --all-packages)", file=sys.stderr)
        return None
    if not Path(sys.executable).with_name("moto_server").exists():
        print("remote rows skipped: no moto_server (moto[server])", file=sys.stderr)
        return None
    result = RemoteResult()
    local = scratch / "remote.safetensors"
    ckpt.save(local, state)
    result.object_bytes = local.stat().st_size
    # moto's server in its own process, so that it does not share this one's GIL.
    with local_s3(REMOTE_BUCKET, key="bench", secret="bench", process=True) as s3:
        client, options = s3.client, s3.storage_options
        url = f"s3://{REMOTE_BUCKET}/ours/step_1.safetensors"

        def ours() -> None:
            with timer(result.ours_save):
                ckpt.save(url, state, storage_options=options)
            with timer(result.ours_load):
                ckpt.load(url, storage_options=options)

        def baseline() -> None:
            with timer(result.boto_up):
                client.upload_file(str(local), REMOTE_BUCKET, "boto/step_1.safetensors")
            back = scratch / "downloaded.safetensors"
            with timer(result.boto_down):
                client.download_file(REMOTE_BUCKET, "boto/step_1.safetensors", str(back))
            remove(back)

        ours()  # warm-up: connections, the server's first allocations
        baseline()
        for rs in (result.ours_save, result.ours_load, result.boto_up, result.boto_down):
            rs.clear()
        for rep in range(REMOTE_REPS):
            for run in (ours, baseline) if rep % 2 == 0 else (baseline, ours):
                run()
            print(f"  remote repetition {rep + 1}/{REMOTE_REPS} done", file=sys.stderr, flush=True)
    remove(local)
    return result


def print_remote(result: RemoteResult | None) -> None:
    if result is None:
        return

    def rate(samples: list[float]) -> float:
        return result.object_bytes / statistics.median(samples) / MB

    up, down = rate(result.boto_up), rate(result.boto_down)
    print(
        f"\nRemote storage: a local S3 server (moto_server on 127.0.0.1), "
        f"{result.object_bytes / MB:.0f} MB object, {REMOTE_REPS} repetitions, medians (MB/s)"
    )
    header = f"| {'method':<40} | {'save':>6} | {'vs boto3':>8} | {'load':>6} | {'vs boto3':>8} |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    rows = [
        (
            "trainsvc-checkpoint s3:// (CRCs checked)",
            rate(result.ours_save),
            rate(result.ours_load),
        ),
        ("boto3 upload_file / download_file", up, down),
    ]
    for name, save_rate, load_rate in rows:
        print(
            f"| {name:<40} | {save_rate:6.0f} | {fmt_ratio(save_rate / up):>8} "
            f"| {load_rate:6.0f} | {fmt_ratio(load_rate / down):>8} |"
        )
    print(
        "  paired: save vs upload_file "
        f"{paired_ratio(result.ours_save, result.boto_up):.2f}x, load vs download_file "
        f"{paired_ratio(result.ours_load, result.boto_down):.2f}x"
    )
    print(
        "  (ours: from the arrays to a published object, parallel 8 MiB parts, 8 at a time;"
        " back into fresh arrays by parallel 16 MiB ranged GETs, 8 at a time, every CRC checked;"
        " boto3: a file already in the page cache, 8 MiB parts, 10 threads, to a file)"
    )


def fmt_ratio(x: float | None) -> str:
    return "" if x is None or x != x else f"{x:.2f}x"


def main() -> int:
    state = make_state()
    nbytes = sum(a.nbytes for a in flat_arrays(state).values())
    base = os.environ.get("CKPT_BENCH_DIR")
    with tempfile.TemporaryDirectory(prefix="ckpt-bench-", dir=base) as tmp:
        scratch = Path(tmp)
        methods = build_methods(state)
        print(
            f"state: {nbytes / MB:.0f} MB in {len(flat_arrays(state))} arrays; {REPS} repetitions, "
            f"medians; scratch dir {scratch}",
            file=sys.stderr,
        )
        run_methods(methods, scratch)
        blocked, blocking, async_total = async_fraction(state, scratch)
        frozen = read_only_state(state)
        ro_blocked, ro_blocking, _ = async_fraction(frozen, scratch)
        del frozen
        orbax_async = orbax_async_fraction(state, scratch)
        remote = (
            remote_bench(state, scratch) if os.environ.get("CKPT_BENCH_REMOTE") != "0" else None
        )
    floor = copy_floor(state)
    crc_rows = crc_throughput()

    by_name = {m.name: m for m in methods}

    def rate(samples: list[float]) -> float:
        return nbytes / statistics.median(samples) / MB if samples else float("nan")

    raw = by_name["raw tofile+fsync"]
    st = by_name["safetensors+fsync"]
    print(f"\nCheckpoint benchmark: {nbytes / MB:.0f} MB state, {REPS} repetitions, medians (MB/s)")
    header = (
        f"| {'method':<28} | {'save':>7} | {'vs raw':>6} | {'load cache':>10} | {'vs st':>6} "
        f"| {'load disk':>9} | {'vs raw':>6} |"
    )
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for m in methods:
        load_c = rate(m.cache_s)
        load_d = rate(m.disk_s)
        print(
            f"| {m.name:<28} | {rate(m.save_s):7.0f} | {fmt_ratio(rate(m.save_s) / rate(raw.save_s)):>6} "
            f"| {load_c:10.0f} | {fmt_ratio(load_c / rate(st.cache_s)):>6} "
            f"| {load_d:9.0f} | {fmt_ratio(load_d / rate(raw.disk_s)):>6} |"
        )
    print("(vs st: ratio to safetensors.numpy.load_file from the page cache)")

    print("\nAsync save (CheckpointManager.save, blocking=False), medians:")
    print(
        f"  caller blocked {blocked * 1e3:.0f} ms; blocking save {blocking * 1e3:.0f} ms; "
        f"async save until on disk {async_total * 1e3:.0f} ms"
    )
    print(f"  blocked fraction: {blocked / blocking:.1%} of a blocking save")
    print(
        f"  read-only state (not copied): caller blocked {ro_blocked * 1e3:.0f} ms; "
        f"blocked fraction {ro_blocked / ro_blocking:.1%} of a blocking save"
    )
    print(
        f"  the floor, a plain np.copyto of the state into warm buffers: {floor * 1e3:.0f} ms "
        f"({floor / blocking:.1%})"
    )
    if orbax_async is not None:
        ob, ot = orbax_async
        print(
            f"  Orbax StandardCheckpointer: caller blocked {ob * 1e3:.0f} ms of {ot * 1e3:.0f} ms "
            f"({ob / ot:.1%})"
        )

    print("\nCRC32C on a 400 MB NumPy buffer:")
    for name, gbs, note in crc_rows:
        print(f"  {name:<32} {gbs:6.1f} GB/s  ({note})")

    print_remote(remote)

    ours = by_name["trainsvc-checkpoint"]
    print(
        "\nPaired ratios (median over repetitions of the ratio within one repetition; the"
        " table's ratios are of medians):"
    )
    pairs = [
        ("save vs raw tofile+fsync", paired_ratio(ours.save_s, raw.save_s)),
        ("save vs safetensors+fsync", paired_ratio(ours.save_s, st.save_s)),
        ("load (page cache) vs safetensors", paired_ratio(ours.cache_s, st.cache_s)),
        ("load (disk) vs raw np.fromfile", paired_ratio(ours.disk_s, raw.disk_s)),
    ]
    for label, value in pairs:
        print(f"  {label:<34} {value:.2f}x")
    checks = [
        ("save >= 0.95x raw tofile+fsync", pairs[0][1], 0.95),
        ("save >= 1.0x safetensors+fsync", pairs[1][1], 1.0),
        ("load (page cache, CRCs checked) >= 1.0x safetensors", pairs[2][1], 1.0),
        ("load (disk, CRCs checked) >= 0.9x raw", pairs[3][1], 0.9),
        ("async save blocks <= 5% of a blocking save", 0.05 / (blocked / blocking), 1.0),
    ]
    print("\nTargets:")
    for label, value, goal in checks:
        shown = f"{blocked / blocking:.1%}" if label.startswith("async") else f"{value:.2f}x"
        print(f"  {'met ' if value >= goal else 'MISS'}  {label}: {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
