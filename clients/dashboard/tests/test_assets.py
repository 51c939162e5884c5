"""The built page ships inside the package and matches its TypeScript sources."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from trainsvc_dashboard import STATIC_DIR

WEB = Path(__file__).resolve().parents[1] / "web"
INPUTS = ["index.html", "package.json", "package-lock.json", "tsconfig.json", "vite.config.ts"]


def _sources_sha256() -> str:
    """The same hash as web/scripts/stamp.mjs computes at build time."""
    files = sorted(
        INPUTS + [p.relative_to(WEB).as_posix() for p in (WEB / "src").rglob("*") if p.is_file()]
    )
    digest = hashlib.sha256()
    for rel in files:
        digest.update(rel.encode() + b"\0" + (WEB / rel).read_bytes() + b"\0")
    return digest.hexdigest()


def test_committed_build_matches_the_sources() -> None:
    info = json.loads((STATIC_DIR / "build-info.json").read_text())
    assert info["sources_sha256"] == _sources_sha256(), (
        "the built page is older than clients/dashboard/web: run `npm run build` there"
    )


def test_index_references_only_shipped_assets() -> None:
    html = (STATIC_DIR / "index.html").read_text()
    refs = re.findall(r'(?:src|href)="\./(assets/[^"]+)"', html)
    assert "assets/app.js" in refs
    for ref in refs:
        assert (STATIC_DIR / ref).is_file(), ref
