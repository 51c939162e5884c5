"""The one proto <-> domain converter (and request validation that needs the wire types)."""

from __future__ import annotations

import base64
import json
import math
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from trainsvc_api.v1 import trainsvc_pb2 as pb

from trainsvc._domain import (
    RUN_ID_RE,
    CheckpointPolicy,
    CheckpointRecord,
    Event,
    InvalidArgumentError,
    RunRecord,
    RunSpec,
    State,
    echo,
)
from trainsvc._resources import ResourceRequest
from trainsvc.kinds import FrameData

_KIND_NAMES = {
    pb.Run.EMERGENCE: "emergence",
    pb.Run.OTHELLO: "othello",
    pb.Run.LORA: "lora",
    pb.Run.GRPO: "grpo",
}
_KIND_VALUES = {v: k for k, v in _KIND_NAMES.items()}
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 50
MAX_SEED = 2**63 - 1
MAX_OVERRIDES = 256
"""Overrides per CreateRun."""
MAX_OVERRIDE_KEY = 200
MAX_OVERRIDE_CHARS = 64 * 1024
"""Characters of one override's JSON text."""
MAX_OVERRIDE_DEPTH = 32
"""Nesting of arrays and objects in one override's value."""
MAX_PAGE_TOKEN_CHARS = 1024


def _ts(seconds: float) -> Timestamp:
    ts = Timestamp()
    if seconds:
        ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def _enum_check(enum_type: Any, value: int, field: str, allow_unspecified: bool = False) -> None:
    if value not in enum_type.values() or (value == 0 and not allow_unspecified):
        allowed = [n for n in enum_type.keys() if n != enum_type.Name(0) or allow_unspecified]  # noqa: SIM118
        raise InvalidArgumentError(field, f"unknown value {value}; allowed: {', '.join(allowed)}")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("a number out of the range of a float")
    return value


_STRICT_JSON = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def _bounded_json(text: str, max_depth: int) -> Any:
    """Parse strict JSON (no NaN/Infinity) whose containers nest at most ``max_depth`` deep
    and whose integers fit in 64 bits.

    Raises:
        ValueError: anything else (the message says what).
    """
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:  # bound the nesting before the (recursive) parser sees it
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > max_depth:
                raise ValueError(f"nested deeper than {max_depth} arrays/objects")
        elif ch in "]}":
            depth -= 1
    try:
        value = _STRICT_JSON.decode(text)
    except RecursionError:  # pragma: no cover - the scan above bounds the depth
        raise ValueError("nested too deeply") from None
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, bool):
            continue
        if isinstance(item, int) and not -(2**63) <= item < 2**64:
            raise ValueError("an integer out of the 64-bit range")
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return value


def _config_values(msg: Any, prefix: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for fd, value in msg.ListFields():
        if fd.name == "overrides":
            continue
        values[fd.name] = value
    if len(msg.overrides) > MAX_OVERRIDES:
        raise InvalidArgumentError(
            f"{prefix}.overrides", f"at most {MAX_OVERRIDES} entries, got {len(msg.overrides)}"
        )
    for key, text in msg.overrides.items():
        if len(key) > MAX_OVERRIDE_KEY:
            raise InvalidArgumentError(
                f"{prefix}.overrides",
                f"keys have at most {MAX_OVERRIDE_KEY} characters, got {echo(key)}",
            )
        field = f"{prefix}.overrides[{key}]"
        if len(text) > MAX_OVERRIDE_CHARS:
            raise InvalidArgumentError(
                field,
                f"must be a JSON value of at most {MAX_OVERRIDE_CHARS} characters, got {len(text)}",
            )
        try:
            values[key] = _bounded_json(text, MAX_OVERRIDE_DEPTH)
        except ValueError as exc:  # also int-to-str limits: "1" * 5000
            raise InvalidArgumentError(
                field, f"must be a JSON value ({str(exc)[:120]}), got {echo(text)}"
            ) from None
    return values


def spec_from_request(req: pb.CreateRunRequest) -> tuple[RunSpec, str]:
    """Validate a CreateRunRequest and return (spec, requested run id).

    Raises:
        InvalidArgumentError: naming the first bad field.
    """
    if not req.HasField("run"):
        raise InvalidArgumentError("run", "is required")
    run = req.run
    _enum_check(pb.Run.Kind, run.kind, "run.kind")
    kind = _KIND_NAMES[run.kind]
    which = run.WhichOneof("config")
    if which is not None and which != kind:
        raise InvalidArgumentError(
            f"run.{which}", f"does not match run.kind {kind.upper()}; use run.{kind}"
        )
    config = _config_values(getattr(run, kind), f"run.{kind}") if which else {}
    if run.step_budget <= 0:
        raise InvalidArgumentError("run.step_budget", f"must be > 0, got {run.step_budget}")
    if run.seed > MAX_SEED:
        raise InvalidArgumentError("run.seed", f"must be < 2**63, got {run.seed}")
    p = run.checkpoint_policy
    for name in ("interval_steps", "keep_last", "keep_every"):
        if getattr(p, name) < 0:
            raise InvalidArgumentError(
                f"run.checkpoint_policy.{name}", f"must be >= 0, got {getattr(p, name)}"
            )
    max_restarts = run.max_restarts if run.HasField("max_restarts") else 3
    if not 0 <= max_restarts <= 1000:
        raise InvalidArgumentError("run.max_restarts", f"must be in [0, 1000], got {max_restarts}")
    if req.run_id and not RUN_ID_RE.fullmatch(req.run_id):
        raise InvalidArgumentError(
            "run_id", f"must match {RUN_ID_RE.pattern}, got {echo(req.run_id)}"
        )
    if len(run.display_name) > 200:
        raise InvalidArgumentError("run.display_name", "must be at most 200 characters")
    spec = RunSpec(
        kind=kind,
        step_budget=run.step_budget,
        seed=run.seed,
        config=config,
        policy=CheckpointPolicy(
            interval_steps=p.interval_steps,
            keep_last=p.keep_last or 5,
            keep_every=p.keep_every,
            compress=p.compress,
        ),
        max_restarts=max_restarts,
        display_name=run.display_name,
        resume_from=req.resume_from,
        resources=_resources(run).to_spec(),
    )
    return spec, req.run_id


def _resources(run: pb.Run) -> ResourceRequest:
    """The run's validated ``run.resources`` (nothing requested when unset)."""
    r = run.resources
    return ResourceRequest.validated(r.cpus, r.gpus, r.memory_bytes, dict(r.custom))


def state_filter(value: int) -> State | None:
    """Validate ListRunsRequest.state; None means every state."""
    _enum_check(pb.Run.State, value, "state", allow_unspecified=True)
    return None if value == 0 else State(pb.Run.State.Name(value))  # type: ignore[arg-type]


def page_args(req: pb.ListRunsRequest) -> tuple[int, tuple[float, str] | None]:
    """Validate page_size/page_token; return (limit, cursor)."""
    if req.page_size < 0:
        raise InvalidArgumentError("page_size", f"must be >= 0, got {req.page_size}")
    limit = min(req.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    if not req.page_token:
        return limit, None
    bad = InvalidArgumentError("page_token", "is not a token from a previous ListRuns")
    if len(req.page_token) > MAX_PAGE_TOKEN_CHARS:
        raise bad
    try:
        token = _bounded_json(base64.urlsafe_b64decode(req.page_token.encode()).decode(), 1)
    except (ValueError, TypeError):  # binascii.Error and UnicodeDecodeError are ValueErrors
        raise bad from None
    if (
        not isinstance(token, list)
        or len(token) != 2
        or isinstance(token[0], bool)
        or not isinstance(token[0], int | float)
        or not isinstance(token[1], str)
        or not RUN_ID_RE.fullmatch(token[1])
    ):
        raise bad
    return limit, (float(token[0]), token[1])


def page_token(last: RunRecord) -> str:
    """The token that continues a listing after `last`."""
    return base64.urlsafe_b64encode(json.dumps([last.create_time, last.id]).encode()).decode()


def run_to_proto(r: RunRecord) -> pb.Run:
    """A RunRecord as a wire Run."""
    s = r.spec
    msg = pb.Run(
        name=r.name,
        display_name=s.display_name,
        kind=_KIND_VALUES[s.kind],
        seed=s.seed,
        step_budget=s.step_budget,
        checkpoint_policy=pb.CheckpointPolicy(
            interval_steps=s.policy.interval_steps,
            keep_last=s.policy.keep_last,
            keep_every=s.policy.keep_every,
            compress=s.policy.compress,
        ),
        max_restarts=s.max_restarts,
        state=pb.Run.State.Value(r.state.value),
        step=r.step,
        steps_per_second=r.steps_per_second,
        state_message=r.state_message,
        restarts=r.restarts,
        latest_checkpoint=r.latest_checkpoint,
        metrics=r.metrics,
        create_time=_ts(r.create_time),
        start_time=_ts(r.start_time),
        update_time=_ts(r.update_time),
        end_time=_ts(r.end_time),
    )
    if s.resources:
        req = ResourceRequest.from_spec(s.resources)
        msg.resources.CopyFrom(
            pb.Resources(
                cpus=req.cpus, gpus=req.gpus, memory_bytes=req.memory_bytes, custom=req.custom
            )
        )
    config = getattr(msg, s.kind)
    for key, value in s.config.items():
        if key in config.DESCRIPTOR.fields_by_name and key != "overrides":
            setattr(config, key, value)
        else:
            config.overrides[key] = json.dumps(value)
    if not s.config:
        config.SetInParent()
    return msg


def checkpoint_to_proto(c: CheckpointRecord) -> pb.Checkpoint:
    """A CheckpointRecord as a wire Checkpoint."""
    return pb.Checkpoint(
        name=c.name,
        step=c.step,
        size_bytes=c.size_bytes,
        create_time=_ts(c.create_time),
        path=c.path,
        emergency=c.emergency,
    )


def event_to_proto(e: Event) -> pb.Event:
    """An Event as a wire Event."""
    return pb.Event(
        sequence=e.sequence,
        run=f"runs/{e.run_id}",
        type=pb.Event.Type.Value(e.type.value),
        time=_ts(e.time),
        message=e.message,
        state=pb.Run.State.Value(e.state.value) if e.state else 0,  # type: ignore[arg-type]
        previous_state=pb.Run.State.Value(e.previous_state.value) if e.previous_state else 0,  # type: ignore[arg-type]
        checkpoint=e.checkpoint,
        step=e.step,
    )


def frame_to_proto(run_id: str, f: FrameData, sequence: int) -> pb.Frame:
    """A worker's FrameData as a wire Frame."""
    msg = pb.Frame(
        run=f"runs/{run_id}", step=f.step, time=_ts(f.time), sequence=sequence, metrics=f.metrics
    )
    if f.emergence is not None:
        e = f.emergence
        msg.emergence.CopyFrom(
            pb.EmergencePayload(
                num_agents=e.num_agents,
                positions=e.positions,
                world_height=e.world_height,
                world_width=e.world_width,
                field=e.field,
                field_shape=list(e.field_shape),
                field_encoding=(
                    pb.FIELD_ENCODING_UINT8
                    if e.field_encoding == "uint8"
                    else pb.FIELD_ENCODING_FLOAT16
                ),
                field_min=e.field_min,
                field_max=e.field_max,
            )
        )
    elif f.othello is not None:
        o = f.othello
        msg.othello.CopyFrom(pb.OthelloPayload(board=o.board, to_move=o.to_move, games=o.games))
    elif f.lm is not None:
        lm = f.lm
        msg.lm.CopyFrom(
            pb.LMPayload(
                sample_prompt=lm.sample_prompt,
                sample_completion=lm.sample_completion,
                sample_step=lm.sample_step,
            )
        )
    return msg
