"""Kaggle credentials from the environment or a ``.env`` file, never logged.

Accepted: ``KAGGLE_API_TOKEN`` (an access token), or ``KAGGLE_USERNAME`` plus
``KAGGLE_KEY`` (a legacy API key). The environment wins over ``.env``, which
wins over the official client's ``kaggle.json``.
Secrets are kept out of every log and state file: :func:`redact` scrubs them
from any text before it is written.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from trainsvc_launchers._files import ENCODING

__all__ = ["KaggleCredentials", "find_kaggle_credentials", "read_env_file", "redact"]

_KEYS = ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY")


@dataclass(frozen=True)
class KaggleCredentials:
    """Where the credentials came from and the variables to export (secret: never print ``values``)."""

    source: str
    values: dict[str, str] = field(repr=False)

    def apply(self) -> None:
        """Export the variables so the official client finds them."""
        os.environ.update(self.values)

    @property
    def secrets(self) -> list[str]:
        """The secret values, for :func:`redact`."""
        return [v for k, v in self.values.items() if k != "KAGGLE_USERNAME" and v]


def read_env_file(path: Path) -> dict[str, str]:
    """Parse a ``.env`` file: ``KEY=value`` lines, ``#`` comments, optional quotes and ``export``."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for raw in path.read_text(encoding=ENCODING).splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def _pick(values: dict[str, str]) -> dict[str, str] | None:
    if values.get("KAGGLE_API_TOKEN"):
        return {"KAGGLE_API_TOKEN": values["KAGGLE_API_TOKEN"]}
    if values.get("KAGGLE_USERNAME") and values.get("KAGGLE_KEY"):
        return {"KAGGLE_USERNAME": values["KAGGLE_USERNAME"], "KAGGLE_KEY": values["KAGGLE_KEY"]}
    return None


def _kaggle_json() -> tuple[Path, dict[str, str]] | None:
    """``kaggle.json`` where the official client reads it: ``$KAGGLE_CONFIG_DIR`` or ``~/.kaggle``."""
    base = os.environ.get("KAGGLE_CONFIG_DIR")
    path = Path(base) / "kaggle.json" if base else Path.home() / ".kaggle" / "kaggle.json"
    try:
        raw = json.loads(path.read_text(encoding=ENCODING))
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict):
        return None
    values = {
        "KAGGLE_USERNAME": str(raw.get("username") or ""),
        "KAGGLE_KEY": str(raw.get("key") or ""),
    }
    return path, values


def find_kaggle_credentials(env_file: Path | None = None) -> KaggleCredentials | None:
    """Find credentials in the environment, then in ``env_file`` (default ``./.env``), then in
    ``kaggle.json`` (``$KAGGLE_CONFIG_DIR/kaggle.json`` or ``~/.kaggle/kaggle.json``), as the
    official client does."""
    found = _pick({k: os.environ[k] for k in _KEYS if k in os.environ})
    if found is not None:
        return KaggleCredentials("environment", found)
    path = env_file if env_file is not None else Path(".env")
    found = _pick(read_env_file(path))
    if found is not None:
        return KaggleCredentials(str(path), found)
    in_json = _kaggle_json()
    if in_json is not None and (found := _pick(in_json[1])) is not None:
        return KaggleCredentials(str(in_json[0]), found)
    return None


def redact(text: str, secrets: list[str]) -> str:
    """Replace every secret in ``text`` with ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text
