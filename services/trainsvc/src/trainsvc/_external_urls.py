"""External OpenAI-compatible servers named by a deployment's ``external_base_url``.

`parse_external_url` reads the URL's scheme as the kind of server (``vllm+http``,
``ollama+http``, plain ``http``); see `trainsvc._external_backend` for what trainsvc
does with each. This module has no dependencies beyond the standard library, so the
registry's servicer checks a URL when it is set, without the ``serve`` extra.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qs, urlsplit

from trainsvc._domain import InvalidArgumentError

Kind = Literal["vllm", "ollama", "openai"]
KINDS: dict[str, Kind] = {
    "vllm+http": "vllm",
    "vllm+https": "vllm",
    "ollama+http": "ollama",
    "ollama+https": "ollama",
    "http": "openai",
    "https": "openai",
}
SHOWN = {"vllm": "vLLM", "ollama": "Ollama", "openai": "OpenAI-compatible"}


@dataclass(frozen=True)
class ExternalServer:
    """A parsed ``external_base_url``.

    Attributes:
        kind: ``vllm``, ``ollama`` or ``openai`` (a generic OpenAI-compatible server).
        root: ``http(s)://host:port[/prefix]`` without the kind and without ``/v1``.
        ollama_from: for Ollama, the base model that missing adapter versions are
            created from (``?from=``), or empty.
    """

    kind: Kind
    root: str
    ollama_from: str = ""

    def __str__(self) -> str:
        return f"the external {SHOWN[self.kind]} server at {self.root}"

    def model_name(self, model: str, version: int) -> str:
        """The name this server knows version ``version`` of ``model`` by."""
        return f"{model}:v{version}" if self.kind == "ollama" else f"{model}@v{version}"


def parse_external_url(url: str, field: str = "external_base_url") -> ExternalServer:
    """The server ``url`` names (see the module doc for the schemes).

    Raises:
        InvalidArgumentError: (naming ``field``) an unknown scheme, no host, or a
            query other than Ollama's ``from``.
    """
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
    except ValueError as exc:
        raise InvalidArgumentError(field, f"{url!r} is not a URL: {exc}") from None
    kind = KINDS.get(parts.scheme.lower())
    if kind is None:
        raise InvalidArgumentError(
            field,
            f"{url!r}: the scheme must be vllm+http(s):// (vLLM), ollama+http(s):// (Ollama) "
            "or http(s):// (an OpenAI-compatible server), got "
            f"{parts.scheme + '://' if parts.scheme else 'none'}",
        )
    if not parts.hostname:
        raise InvalidArgumentError(field, f"{url!r} has no host")
    query = parse_qs(parts.query, keep_blank_values=True)
    allowed = {"from"} if kind == "ollama" else set()
    if set(query) - allowed or parts.fragment:
        extra = ", ".join(sorted(set(query) - allowed)) or f"#{parts.fragment}"
        raise InvalidArgumentError(
            field,
            f"{url!r}: unexpected {extra} (only ollama+http(s) URLs take a query: ?from=BASE)",
        )
    scheme = parts.scheme.lower().rpartition("+")[2]
    path = parts.path.rstrip("/").removesuffix("/v1").rstrip("/")
    return ExternalServer(kind, f"{scheme}://{parts.netloc}{path}", (query.get("from") or [""])[0])


__all__ = ["KINDS", "ExternalServer", "Kind", "parse_external_url"]
