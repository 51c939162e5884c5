"""`make dist` builds every package, and each wheel installs alone into a clean environment.

Each package's wheel goes into its own fresh virtual environment with the trainsvc
packages taken from the dist folder alone (every other dependency from PyPI, through
uv's cache), then it is imported and its commands answer ``--help``: "pip install one
library" is checked instead of assumed. The service's bare wheel (no extras) also
serves: it starts without any trainer library, and a run of a kind whose extra is
missing is refused over gRPC with INVALID_ARGUMENT naming the extra to install.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import grpc
import pytest
from google.rpc import error_details_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status
from trainsvc_api.v1 import trainsvc_pb2 as pb
from trainsvc_api.v1 import trainsvc_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow(70), pytest.mark.dist]

TRAINER_LIBRARIES = ("trainsvc_trainer", "trainsvc_engine", "trainsvc_lm", "trainsvc_trajectories")


@dataclass(frozen=True)
class Member:
    """One workspace package, as its pyproject.toml describes it."""

    name: str
    modules: tuple[str, ...]
    scripts: tuple[str, ...]

    @property
    def wheel_prefix(self) -> str:
        return self.name.replace("-", "_") + "-"


def _members() -> list[Member]:
    found = []
    for group in ("packages", "services", "clients"):
        for pyproject in sorted((REPO / group).glob("*/pyproject.toml")):
            project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
            src = pyproject.parent / "src"
            modules = tuple(sorted(p.parent.name for p in src.glob("*/__init__.py")))
            found.append(Member(project["name"], modules, tuple(project.get("scripts", {}))))
    return found


MEMBERS = _members()


def _uv() -> list[str]:
    uv = os.environ.get("UV") or shutil.which("uv")
    if uv:
        return [uv]
    with contextlib.suppress(ImportError):
        import uv as uv_module  # type: ignore[import-not-found,unused-ignore]

        return [uv_module.find_uv_bin()]
    pytest.skip("uv is not installed (`make bootstrap` installs it)")


def _env() -> dict[str, str]:
    """This process's environment without the virtual environment the tests run in."""
    return {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), **kw)  # type: ignore[call-overload]
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    return proc  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def dist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder `make dist` filled (built once for the module; TRAINSVC_DIST_DIR reuses one)."""
    reuse = os.environ.get("TRAINSVC_DIST_DIR")
    if reuse:
        return Path(reuse).resolve()
    out = tmp_path_factory.mktemp("dist")
    uv = " ".join(_uv())
    _run(["make", "--no-print-directory", "dist", f"DIST_DIR={out}", f"UV={uv}"], cwd=REPO)
    return out


def _dist_versions(dist: Path) -> dict[str, str]:
    """Distribution name -> version, of every wheel in `dist`."""
    versions = {}
    for wheel in dist.glob("*.whl"):
        name, version = wheel.name.split("-")[:2]
        versions[name.replace("_", "-")] = version
    return versions


def _install(name: str, dist: Path, root: Path) -> Path:
    """A fresh virtual environment under `root` with `name` installed; returns its bin/ folder."""
    venv = root / "venv"
    uv = _uv()
    _run([*uv, "venv", "--quiet", "--no-config", "--python", sys.executable, str(venv)], cwd=root)
    python = str(venv / "bin" / "python")
    install = [*uv, "pip", "install", "--quiet", "--no-config", "--python", python]
    _run([*install, "--find-links", str(dist), name], cwd=root)
    listed = _run([*uv, "pip", "list", "--no-config", "--python", python, "--format", "json"])
    installed = {p["name"]: p["version"] for p in json.loads(listed.stdout)}
    ours = {n: v for n, v in installed.items() if n.startswith("trainsvc")}
    assert name in ours, f"{name} not installed: {sorted(installed)}"
    expected = _dist_versions(dist)
    for dep, version in ours.items():
        assert expected.get(dep) == version, f"{dep} {version} did not come from {dist}"
    return venv / "bin"


def test_dist_holds_a_wheel_and_an_sdist_of_every_package(dist_dir: Path) -> None:
    for member in MEMBERS:
        wheels = sorted(p.name for p in dist_dir.glob(member.wheel_prefix + "*.whl"))
        sdists = sorted(p.name for p in dist_dir.glob(member.wheel_prefix + "*.tar.gz"))
        assert len(wheels) == 1, f"{member.name}: wheels {wheels}"
        assert len(sdists) == 1, f"{member.name}: sdists {sdists}"
    engine = next(dist_dir.glob("trainsvc_engine-*.whl")).name
    assert "-cp311-abi3-" in engine, engine
    assert "manylinux2014_x86_64" in engine or "manylinux_2_17" in engine, engine


@pytest.mark.parametrize("member", MEMBERS, ids=lambda m: m.name)
def test_each_wheel_installs_alone_imports_and_answers_help(
    member: Member, dist_dir: Path, tmp_path: Path
) -> None:
    bin_dir = _install(member.name, dist_dir, tmp_path)
    assert member.modules, f"{member.name} has no package under src/"
    imports = "; ".join(f"import {m}" for m in member.modules)
    _run([str(bin_dir / "python"), "-W", "error", "-c", imports], cwd=tmp_path)
    for script in member.scripts:
        out = _run([str(bin_dir / script), "--help"], cwd=tmp_path, timeout=120)
        assert "usage" in out.stdout.lower(), f"{script} --help:\n{out.stdout}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _serving(bin_dir: Path, root: Path) -> Iterator[grpc.Channel]:
    address = f"127.0.0.1:{_free_port()}"
    log = root / "service.log"
    cmd = [str(bin_dir / "trainsvc"), "serve", "--listen", address]
    cmd += ["--data-dir", str(root / "data"), "--metrics-listen", "", "--log-format", "json"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=_env(), cwd=root, start_new_session=True
        )
    try:
        with grpc.insecure_channel(address) as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=60)
            except grpc.FutureTimeoutError:
                pytest.fail(f"trainsvc serve did not start: {log.read_text(errors='replace')}")
            yield channel
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text(errors="replace")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


def test_bare_service_serves_and_names_the_extra_of_a_missing_kind(
    dist_dir: Path, tmp_path: Path
) -> None:
    bin_dir = _install("trainsvc", dist_dir, tmp_path)
    probe = "import importlib.util as u, sys; print([m for m in sys.argv[1:] if u.find_spec(m)])"
    found = _run([str(bin_dir / "python"), "-c", probe, *TRAINER_LIBRARIES, "jax"])
    assert found.stdout.strip() == "[]", f"the bare service installed {found.stdout}"

    extras = {
        pb.Run.EMERGENCE: "emergence",
        pb.Run.OTHELLO: "othello",
        pb.Run.LORA: "lm",
        pb.Run.GRPO: "lm",
    }
    with _serving(bin_dir, tmp_path) as channel:
        stub = trainsvc_pb2_grpc.TrainServiceStub(channel)
        for kind, extra in extras.items():
            request = pb.CreateRunRequest(run=pb.Run(kind=kind, step_budget=10))
            with pytest.raises(grpc.RpcError) as raised:
                stub.CreateRun(request, timeout=30)
            error = cast(grpc.Call, raised.value)  # a failed call's error is also its Call
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
            assert f"pip install 'trainsvc[{extra}]'" in (error.details() or ""), error
            status = rpc_status.from_call(error)
            assert status is not None, "no google.rpc.Status in the trailers"
            bad = error_details_pb2.BadRequest()
            assert any(d.Unpack(bad) for d in status.details), status
            assert [v.field for v in bad.field_violations] == ["run.kind"]
        # Refusing those runs left the service serving, with no run created.
        assert list(stub.ListRuns(pb.ListRunsRequest(), timeout=30).runs) == []
