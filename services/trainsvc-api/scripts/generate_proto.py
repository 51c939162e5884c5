"""Regenerate trainsvc_api's protobuf/gRPC bindings from proto/trainsvc/v1.

Usage: python services/trainsvc-api/scripts/generate_proto.py [OUT_DIR]

Writes `trainsvc_api/v1/*_pb2.py`, `*_pb2_grpc.py` and their `.pyi` stubs under
OUT_DIR (default: this package's src/). Needs grpcio-tools and mypy-protobuf.
protoc emits absolute imports named after the .proto path (`trainsvc.v1`);
they are rewritten to `trainsvc_api.v1`, the one post-processing step.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = PACKAGE_DIR.parent.parent
PROTO_ROOT = REPO_ROOT / "proto"
PROTO_FILES = sorted(
    p.relative_to(PROTO_ROOT) for p in (PROTO_ROOT / "trainsvc" / "v1").glob("*.proto")
)
_IMPORT_FIXES = (
    (re.compile(r"^from trainsvc\.v1 import ", re.M), "from trainsvc_api.v1 import "),
    (re.compile(r"^import trainsvc\.v1\.", re.M), "import trainsvc_api.v1."),
    (re.compile(r"\btrainsvc\.v1\.(\w+_pb2)\b"), r"trainsvc_api.v1.\1"),
)


def generate(out_dir: Path) -> list[Path]:
    """Generate the bindings into out_dir/trainsvc_api/v1 and return the files written."""
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--mypy_out={tmp}",
            f"--mypy_grpc_out={tmp}",
            *[str(p) for p in PROTO_FILES],
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        target = out_dir / "trainsvc_api" / "v1"
        target.mkdir(parents=True, exist_ok=True)
        written = []
        for src in sorted((Path(tmp) / "trainsvc" / "v1").iterdir()):
            text = src.read_text(encoding="utf-8")
            for pattern, repl in _IMPORT_FIXES:
                text = pattern.sub(repl, text)
            dst = target / src.name
            dst.write_text(text, encoding="utf-8")
            written.append(dst)
        return written


def main() -> None:
    """Command-line entry point."""
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else PACKAGE_DIR / "src"
    if shutil.which("protoc-gen-mypy") is None:
        raise SystemExit("protoc-gen-mypy not on PATH: install mypy-protobuf (uv sync)")
    for path in generate(out):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
