"""Build the per-kind typed config messages from plain mappings (e.g. a TOML file)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from google.protobuf.message import Message
from trainsvc_api.v1 import trainsvc_pb2 as pb

KINDS: dict[str, int] = {
    "emergence": pb.Run.EMERGENCE,
    "othello": pb.Run.OTHELLO,
    "lora": pb.Run.LORA,
    "grpo": pb.Run.GRPO,
}
"""Trainer kind names (as the CLI spells them) to `Run.Kind` values."""

ConfigMessage = pb.EmergenceConfig | pb.OthelloConfig | pb.LoraConfig | pb.GrpoConfig
"""The kinds' config messages (the `Run.config` oneof)."""

_CONFIG_TYPES: dict[int, type[ConfigMessage]] = {
    pb.Run.EMERGENCE: pb.EmergenceConfig,
    pb.Run.OTHELLO: pb.OthelloConfig,
    pb.Run.LORA: pb.LoraConfig,
    pb.Run.GRPO: pb.GrpoConfig,
}
_CONFIG_FIELDS: dict[type[Message], str] = {
    pb.EmergenceConfig: "emergence",
    pb.OthelloConfig: "othello",
    pb.LoraConfig: "lora",
    pb.GrpoConfig: "grpo",
}


def kind_value(kind: str | int) -> int:
    """Return the `Run.Kind` value of a kind name ("emergence") or value.

    Raises:
        ValueError: the kind is unknown; the message lists the known ones.
    """
    if isinstance(kind, int):
        return kind
    try:
        return KINDS[kind.lower()]
    except KeyError:
        raise ValueError(f"kind: unknown {kind!r}; allowed: {', '.join(KINDS)}") from None


def kind_name(kind: int) -> str:
    """Return the lowercase name of a `Run.Kind` value ("emergence")."""
    return pb.Run.Kind.Name(kind).lower()  # type: ignore[arg-type]


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def config_message(kind: str | int, values: Mapping[str, Any] | None) -> Message:
    """Build the kind's config message from a (possibly nested) mapping.

    Keys naming a typed field of the message (e.g. ``num_agents``, or
    ``model`` of a lora config) set that field; every other key goes to
    ``overrides`` as dotted key -> JSON value, which the service validates
    against the trainer's own config.

    Raises:
        ValueError: unknown kind, or a value of the wrong type for a typed field.
    """
    cls = _CONFIG_TYPES.get(kind_value(kind))
    if cls is None:
        raise ValueError(f"kind: {kind!r} has no config message")
    msg = cls()
    typed = {f.name for f in cls.DESCRIPTOR.fields if f.name != "overrides"}
    for key, value in _flatten(values or {}).items():
        if key in typed:
            try:
                setattr(msg, key, value)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{key}: {exc}") from None
        else:
            msg.overrides[key] = json.dumps(value)
    return msg


def config_field(msg: Message) -> str:
    """The `Run.config` oneof field a config message goes in ("emergence", "lora", ...).

    Raises:
        TypeError: not one of the kinds' config messages.
    """
    try:
        return _CONFIG_FIELDS[type(msg)]
    except KeyError:
        raise TypeError(
            f"config: expected a mapping or a config message, got {type(msg).__name__}"
        ) from None
