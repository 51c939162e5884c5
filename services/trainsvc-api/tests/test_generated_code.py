"""The committed generated code equals what `make proto` produces from the .proto files."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parent.parent
GENERATED = PACKAGE_DIR / "src" / "trainsvc_api" / "v1"


def _load_generator():  # type: ignore[no-untyped-def]
    path = PACKAGE_DIR / "scripts" / "generate_proto.py"
    spec = importlib.util.spec_from_file_location("generate_proto", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_code_matches_the_proto(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # protoc-gen-mypy is a console script of mypy-protobuf beside this interpreter.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{__import__('os').environ['PATH']}")
    written = _load_generator().generate(tmp_path)
    names = sorted(p.name for p in written)
    assert names == sorted(
        p.name for p in GENERATED.iterdir() if p.name.endswith((".py", ".pyi")) and "_pb2" in p.name
    )
    for fresh in written:
        committed = GENERATED / fresh.name
        assert committed.read_text(encoding="utf-8") == fresh.read_text(encoding="utf-8"), (
            f"{committed} differs from the .proto: run `make proto` and commit the result"
        )


def test_descriptor_names_the_service() -> None:
    from trainsvc_api.v1 import trainsvc_pb2 as pb

    service = pb.DESCRIPTOR.services_by_name["TrainService"]
    assert service.full_name == "trainsvc.v1.TrainService"
    assert {m.name for m in service.methods} >= {"CreateRun", "StreamFrames", "StreamEvents"}
    assert pb.Run.State.Name(0) == "STATE_UNSPECIFIED"
