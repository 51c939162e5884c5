"""A continuous-batching generation engine for serving: requests join and leave decode slots.

`Engine` keeps a fixed number of decode slots (rows of one KV cache) and a
background thread that runs jitted decode steps for every slot at a time (in
bursts of up to ``burst`` steps per call while every busy slot has that many
tokens left, to save host round trips).
A request is prefilled on its own (its prompt left-padded to a length bucket,
as `trainsvc_lm.sample` does, so a few compiled shapes serve every prompt) and
copied into a free slot between two steps; it leaves its slot as soon as it
stops, and the next waiting request takes it. Nobody waits for a whole batch.

The cache is a ring of ``max_context`` slots shared by every row: each step
writes the next slot of every row, and a new prompt is placed in the slots just
behind that write pointer. Attention reads a slot's stored position (-1 for
empty), never its index, so rows that joined at different times coexist, and
a request whose prompt bucket plus ``max_new_tokens`` fits in ``max_context``
never overwrites its own live slots.

Every row has its own sampling parameters and PRNG key (``fold_in(PRNGKey(seed),
step)``, as in `sample`), so a request's tokens do not depend on its
neighbours: greedy output equals `trainsvc_lm.generate` for the same prompt,
and a seeded sample equals `trainsvc_lm.sample` on that prompt alone.

`Engine.submit` is thread-safe and returns a `Stream` of `Delta` (new text and
tokens) ending with a `Finished` event (finish reason, usage); `Engine.stream`
is the asyncio form.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from trainsvc_lm._config import ModelConfig
from trainsvc_lm._errors import ConfigError
from trainsvc_lm._model import KVCache, LoraParams, Params, decode_step, init_cache, prefill
from trainsvc_lm._sampler import SamplingConfig, _pick, bucket_length
from trainsvc_lm._tokenizer import Tokenizer

# --------------------------------------------------------------------- events


@dataclass(frozen=True)
class Usage:
    """Token counts of one request (OpenAI's ``usage``)."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Delta:
    """New output of a request: ``text`` may be empty while a stop string or a
    multi-byte character is still undecided; ``tokens`` are the new token ids."""

    text: str
    tokens: tuple[int, ...]


@dataclass(frozen=True)
class Finished:
    """The end of a request.

    Attributes:
        finish_reason: ``"stop"`` (a stop token or stop string), ``"length"``
            (``max_new_tokens`` reached) or ``"cancelled"``.
        text: the whole completion (special tokens skipped, cut before a stop string).
        raw_text: the completion with special tokens kept (tool-call markers such as
            Mistral's ``[TOOL_CALLS]`` are special tokens), cut the same way.
        tokens: every generated token, without the stop token.
        usage: prompt and completion token counts.
        error: why the engine failed the request, when it did (then finish_reason is "error").
    """

    finish_reason: str
    text: str
    raw_text: str
    tokens: tuple[int, ...]
    usage: Usage
    error: str | None = None


Event = Delta | Finished


class Stream:
    """The events of one request, in order; iterate for `Delta`, then read `finished`.

    Thread-safe to consume from any one thread; `cancel` from any thread.
    """

    def __init__(self, engine: Engine, request: _Request) -> None:
        self._engine = engine
        self._request = request
        self._queue: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self.finished: Finished | None = None

    def _put(self, event: Event) -> None:
        self._queue.put(event)

    def __iter__(self) -> Iterator[Delta]:
        while self.finished is None:
            event = self._queue.get()
            if isinstance(event, Finished):
                self.finished = event
            else:
                yield event

    def result(self) -> Finished:
        """Wait for the end and return it (consuming any unread deltas)."""
        for _ in self:
            pass
        assert self.finished is not None
        return self.finished

    def cancel(self) -> None:
        """Stop generating; the stream ends with finish reason ``"cancelled"``."""
        self._engine._cancel(self._request)


# -------------------------------------------------------------------- requests


@dataclass
class _Request:
    prompt: list[int]
    sampling: SamplingConfig
    stop_ids: frozenset[int]
    stop_strings: tuple[str, ...]
    emit: Callable[[Event], None]
    tokens: list[int] = field(default_factory=list)
    sent: int = 0  # characters of the text already emitted
    sent_tokens: int = 0
    cancelled: bool = False
    submitted: float = field(default_factory=time.perf_counter)


def _held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of ``text`` could start a stop string (or a split character)."""
    hold = 1 if text.endswith("\ufffd") else 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:n]):
                hold = max(hold, n)
                break
    return hold


# -------------------------------------------------------------- jitted pieces


@partial(jax.jit, static_argnames=("config", "compute_dtype"))
def _prefill_one(
    params: Params,
    lora: LoraParams | None,
    lora_scale: Any,
    tokens: jax.Array,
    valid: jax.Array,
    length: jax.Array,
    *,
    config: ModelConfig,
    compute_dtype: Any,
) -> tuple[jax.Array, KVCache]:
    """Prefill one left-padded prompt ``tokens [1, T]`` into a cache of ``T`` slots."""
    t = tokens.shape[1]
    dtype = jnp.dtype(compute_dtype) if compute_dtype is not None else params["embed"].dtype
    positions = jnp.maximum(jnp.arange(t, dtype=jnp.int32)[None, :] - (t - length), 0)
    logits, cache = prefill(
        params,
        config,
        tokens,
        init_cache(config, 1, t, dtype),
        positions=positions,
        valid=valid,
        lora=lora,
        lora_scale=lora_scale,
        compute_dtype=compute_dtype,
    )
    return logits, cache


@partial(jax.jit, donate_argnums=(0, 1))
def _insert(
    cache: KVCache, logits: jax.Array, row: jax.Array, one: KVCache, one_logits: jax.Array
) -> tuple[KVCache, jax.Array]:
    """Replace row ``row`` of ``cache`` by the prefilled ``one``, ending just behind the write slot."""
    s, t = cache.pos.shape[1], one.pos.shape[1]
    shift = jnp.mod(cache.length - t, s)

    def place(full: jax.Array, part: jax.Array, empty: Any, axis: int) -> jax.Array:
        shape = list(full.shape)
        shape[axis] = s - t
        padded = jnp.concatenate([part, jnp.full(shape, empty, part.dtype)], axis=axis)
        return jnp.roll(padded, shift, axis=axis)

    k = cache.k.at[:, row].set(place(cache.k[:, 0], one.k[:, 0].astype(cache.k.dtype), 0, 1))
    v = cache.v.at[:, row].set(place(cache.v[:, 0], one.v[:, 0].astype(cache.v.dtype), 0, 1))
    pos = cache.pos.at[row].set(place(cache.pos[0], one.pos[0], -1, 0))
    return cache._replace(k=k, v=v, pos=pos), logits.at[row].set(one_logits[0])


@partial(
    jax.jit, static_argnames=("config", "compute_dtype", "greedy", "count"), donate_argnums=(3, 4)
)
def _steps(
    params: Params,
    lora: LoraParams | None,
    lora_scale: Any,
    cache: KVCache,
    logits: jax.Array,
    keys: jax.Array,
    steps: jax.Array,
    positions: jax.Array,
    temperature: jax.Array,
    top_p: jax.Array,
    *,
    config: ModelConfig,
    compute_dtype: Any,
    greedy: bool,
    count: int,
) -> tuple[jax.Array, jax.Array, KVCache]:
    """``count`` decode steps of every slot: ``(tokens [count, B], logits, cache)``.

    Each step picks one token per slot from ``logits`` (row ``i`` with key
    ``fold_in(keys[i], steps[i])``, as `sample` draws) and feeds it at
    ``positions``. A slot with ``positions == -1`` is free: what it computes is
    never read. With ``greedy`` (every busy slot has temperature 0) nothing is
    sampled, which skips the per-row sort of top-p sampling, as `sample` does.
    """
    s = cache.pos.shape[1]

    def pick_row(
        row_logits: jax.Array, key: jax.Array, step: jax.Array, t: jax.Array, p: jax.Array
    ) -> jax.Array:
        return _pick(row_logits[None], jax.random.fold_in(key, step), t, p, False)[0]

    def body(carry: tuple[Any, ...], _: Any) -> tuple[tuple[Any, ...], jax.Array]:
        cache, logits, steps, positions = carry
        tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        if not greedy:
            # `_pick` divides by the temperature: greedy rows get a harmless one.
            hot = jnp.maximum(temperature, 1e-6)
            sampled = jax.vmap(pick_row)(logits, keys, steps, hot, top_p)
            tok = jnp.where(temperature > 0.0, sampled, tok)
        logits, cache = decode_step(
            params,
            config,
            tok,
            positions,
            cache,
            lora=lora,
            lora_scale=lora_scale,
            compute_dtype=compute_dtype,
        )
        cache = cache._replace(length=jnp.mod(cache.length, s))
        positions = jnp.where(positions >= 0, positions + 1, -1)
        return (cache, logits, steps + 1, positions), tok

    (cache, logits, _, _), toks = jax.lax.scan(
        body, (cache, logits, steps, positions), None, length=count
    )
    return toks, logits, cache


# ---------------------------------------------------------------------- engine


class Engine:
    """Serves one model (and optionally one LoRA adapter) to concurrent requests.

    Args:
        params: the model's params pytree.
        config: its architecture.
        tokenizer: its tokenizer (decoding, chat template, stop tokens).
        lora: optional LoRA adapters; lora_scale their multiplier.
        slots: decode slots, i.e. the most requests generating at once.
        max_context: cache slots per request: its prompt's bucket (see
            `trainsvc_lm._sampler.bucket_length`) plus its new tokens must fit.
            Default: the model's ``max_position_embeddings``, at most 4096.
        burst: the most decode steps run in one call (without a host round trip)
            while every busy slot has that many tokens left; a request that stops
            early inside a burst frees its slot at the burst's end.
        compute_dtype: as in `trainsvc_lm.forward`.
        name: the model name the engine serves under.
    """

    def __init__(
        self,
        params: Params,
        config: ModelConfig,
        tokenizer: Tokenizer,
        *,
        lora: LoraParams | None = None,
        lora_scale: float = 1.0,
        slots: int = 8,
        max_context: int | None = None,
        burst: int = 8,
        compute_dtype: Any = None,
        name: str = "model",
    ) -> None:
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
            raise ConfigError("serving.slots", f"must be an integer >= 1, got {slots!r}")
        context = max_context or min(config.max_position_embeddings, 4096)
        if isinstance(context, bool) or not isinstance(context, int) or context < 32:
            raise ConfigError("serving.max_context", f"must be an integer >= 32, got {context!r}")
        self.params, self.config, self.tokenizer = params, config, tokenizer
        self.lora, self.lora_scale = lora, jnp.float32(lora_scale)
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise ConfigError("serving.burst", f"must be an integer >= 1, got {burst!r}")
        self.slots, self.max_context, self.burst, self.name = slots, context, burst, name
        self.compute_dtype = None if compute_dtype is None else jnp.dtype(compute_dtype).name
        self.default_stop_ids: tuple[int, ...] = tuple(tokenizer.eos_token_ids) or tuple(
            config.eos_token_ids
        )
        self._lock = threading.Condition()
        self._waiting: deque[_Request] = deque()
        self._rows: list[_Request | None] = [None] * slots
        self._closed = False
        self._thread: threading.Thread | None = None
        self.created = int(time.time())
        self.steps_run = 0
        self.max_active = 0
        self.finished: Counter[str] = Counter()  # requests ended, by finish reason

    @classmethod
    def from_dir(
        cls,
        model_dir: str | Path,
        *,
        adapter: str | Path | None = None,
        merge_adapter: bool = False,
        name: str | None = None,
        **kwargs: Any,
    ) -> Engine:
        """An engine for a model directory in Hugging Face layout, with an optional PEFT adapter.

        Args:
            model_dir: the base (or merged) model directory.
            adapter: a PEFT LoRA adapter directory (`trainsvc_lm.export_peft`'s output).
            merge_adapter: fold the adapter into the weights once (faster steps)
                instead of applying it in every projection.
            name: the served model name (default: the directory's name).
            kwargs: the rest of `Engine`'s arguments.
        """
        from trainsvc_lm._lora import merge_lora
        from trainsvc_lm._peft import load_peft
        from trainsvc_lm._weights import load_model

        tokenizer = Tokenizer.from_dir(model_dir)
        config, params = load_model(model_dir)
        lora, scale = None, 1.0
        if adapter is not None:
            lora_config, lora = load_peft(adapter, config)
            scale = lora_config.scale
            if merge_adapter:
                params, lora, scale = merge_lora(params, lora, scale), None, 1.0
        served = name or Path(model_dir).resolve().name
        return cls(params, config, tokenizer, lora=lora, lora_scale=scale, name=served, **kwargs)

    # -- public API ---------------------------------------------------------------

    def room(self, prompt_tokens: int) -> int:
        """The most new tokens a prompt of ``prompt_tokens`` tokens may ask for (0: too long)."""
        return max(0, self.max_context - bucket_length(max(prompt_tokens, 1)))

    def submit(
        self,
        prompt: Sequence[int],
        sampling: SamplingConfig,
        *,
        stop: Sequence[str] = (),
        on_event: Callable[[Event], None] | None = None,
    ) -> Stream:
        """Queue a request; it joins a decode slot as soon as one is free.

        Args:
            prompt: the prompt's token ids (the rendered chat, BOS included if any).
            sampling: max_new_tokens, temperature, top_p, stop_token_ids (None: the
                tokenizer's end-of-turn tokens) and seed.
            stop: stop strings: the completion ends before the first one it contains.
            on_event: also called with every event, on the engine's thread.

        Raises:
            ConfigError: an empty prompt, a token outside the vocabulary, a prompt plus
                ``max_new_tokens`` longer than ``max_context``, or a closed engine.
        """
        prompt = [int(t) for t in prompt]
        if not prompt:
            raise ConfigError("prompt", "is empty")
        bad = [t for t in prompt if not 0 <= t < self.config.vocab_size]
        if bad:
            raise ConfigError(
                "prompt", f"token {bad[0]} is outside the vocabulary [0, {self.config.vocab_size})"
            )
        room = self.room(len(prompt))
        if room == 0:
            raise ConfigError(
                "prompt",
                f"{len(prompt)} tokens do not fit the context of {self.max_context} tokens",
            )
        if sampling.max_new_tokens > room:
            raise ConfigError(
                "sampling.max_new_tokens",
                f"{sampling.max_new_tokens} new tokens after a prompt of {len(prompt)} tokens "
                f"exceed the context of {self.max_context} tokens; at most {room}",
            )
        stops = tuple(s for s in stop if s)
        stop_ids = (
            sampling.stop_token_ids
            if sampling.stop_token_ids is not None
            else self.default_stop_ids
        )
        holder: list[Stream] = []

        def emit(event: Event) -> None:
            holder[0]._put(event)
            if on_event is not None:
                try:
                    on_event(event)
                except Exception:  # a consumer's failure must not stop the engine
                    holder[0].cancel()

        request = _Request(prompt, sampling, frozenset(stop_ids), stops, emit)
        stream = Stream(self, request)
        holder.append(stream)
        with self._lock:
            if self._closed:
                raise ConfigError("engine", "is closed")
            self._waiting.append(request)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"trainsvc-lm-engine-{self.name}", daemon=True
                )
                self._thread.start()
            self._lock.notify_all()
        return stream

    async def stream(
        self, prompt: Sequence[int], sampling: SamplingConfig, *, stop: Sequence[str] = ()
    ) -> AsyncGenerator[Event, None]:
        """`submit` for asyncio: yields every `Delta` then the `Finished` event.

        Leaving the loop early (or the task being cancelled) cancels the request.
        """
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()

        def forward(event: Event) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        handle = self.submit(prompt, sampling, stop=stop, on_event=forward)
        done = False
        try:
            while True:
                event = await events.get()
                yield event
                if isinstance(event, Finished):
                    done = True
                    return
        finally:
            if not done:
                handle.cancel()

    def generate_text(
        self, prompt: Sequence[int], sampling: SamplingConfig, *, stop: Sequence[str] = ()
    ) -> Finished:
        """Submit and wait: the finished request."""
        return self.submit(prompt, sampling, stop=stop).result()

    def warmup(self, prompt_lengths: Sequence[int] = (16,)) -> None:
        """Compile the decode steps (greedy and sampling) and these prompt lengths' prefills."""
        bursts = [1 << i for i in range(self.burst.bit_length())]
        for n in prompt_lengths:
            for temperature in (0.0, 1.0):
                for count in bursts if n == prompt_lengths[0] else bursts[:1]:
                    sampling = SamplingConfig(
                        max_new_tokens=count, temperature=temperature, stop_token_ids=()
                    )
                    self.generate_text([0] * n, sampling)

    def close(self) -> None:
        """Stop the engine thread; waiting and running requests end as ``"cancelled"``."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()

    @property
    def active(self) -> int:
        """Requests generating now."""
        with self._lock:
            return sum(r is not None for r in self._rows)

    # -- the engine thread ---------------------------------------------------------

    def _cancel(self, request: _Request) -> None:
        with self._lock:
            request.cancelled = True
            self._lock.notify_all()

    def _run(self) -> None:
        b, v = self.slots, self.config.vocab_size
        dtype = jnp.dtype(self.compute_dtype) if self.compute_dtype else self.params["embed"].dtype
        cache = init_cache(self.config, b, self.max_context, dtype)
        logits = jnp.zeros((b, v), jnp.float32)
        keys = np.zeros((b, 2), np.uint32)
        temperature = np.zeros(b, np.float32)
        top_p = np.ones(b, np.float32)
        try:
            while True:
                admitted = []
                with self._lock:
                    self._drop_cancelled()
                    while not self._closed and not self._waiting and not any(self._rows):
                        self._lock.wait()
                        self._drop_cancelled()
                    if self._closed:
                        break
                    for row in range(b):
                        if self._rows[row] is None and self._waiting:
                            request = self._waiting.popleft()
                            self._rows[row] = request
                            admitted.append((row, request))
                    self.max_active = max(self.max_active, sum(r is not None for r in self._rows))
                for row, request in admitted:
                    cache, logits = self._admit(cache, logits, row, request)
                    keys[row] = np.asarray(jax.random.PRNGKey(request.sampling.seed))
                    temperature[row] = request.sampling.temperature
                    top_p[row] = request.sampling.top_p
                rows = list(self._rows)
                if not any(rows):
                    continue
                steps = np.asarray([len(r.tokens) if r else 0 for r in rows], np.int32)
                positions = np.asarray(
                    [len(r.prompt) + len(r.tokens) if r else -1 for r in rows], np.int32
                )
                # Several steps per call when every busy slot has that many tokens left
                # (a power of two up to `burst`, to bound compiles): fewer host round trips.
                left = min(r.sampling.max_new_tokens - len(r.tokens) for r in rows if r)
                count = 1 << (max(1, min(left, self.burst)).bit_length() - 1)
                toks, logits, cache = _steps(
                    self.params,
                    self.lora,
                    self.lora_scale,
                    cache,
                    logits,
                    jnp.asarray(keys),
                    jnp.asarray(steps),
                    jnp.asarray(positions),
                    jnp.asarray(temperature),
                    jnp.asarray(top_p),
                    config=self.config,
                    compute_dtype=self.compute_dtype,
                    greedy=all(r is None or r.sampling.temperature == 0.0 for r in rows),
                    count=count,
                )
                self.steps_run += count
                picked = np.asarray(toks).T.tolist()
                for row, current in enumerate(rows):
                    if current is None:
                        continue
                    for token in picked[row]:
                        if self._advance(current, token):
                            with self._lock:
                                self._rows[row] = None
                            break
        except BaseException as exc:  # the thread must not die silently
            self._fail_all(f"{type(exc).__name__}: {exc}")
            raise
        finally:
            self._fail_all(None)

    def _drop_cancelled(self) -> None:
        """(Under the lock.) End cancelled requests, waiting or running."""
        for request in [r for r in self._waiting if r.cancelled]:
            self._waiting.remove(request)
            self._finish(request, "cancelled")
        for row, running in enumerate(self._rows):
            if running is not None and running.cancelled:
                self._rows[row] = None
                self._finish(running, "cancelled")

    def _fail_all(self, error: str | None) -> None:
        with self._lock:
            pending = [*self._waiting, *(r for r in self._rows if r is not None)]
            self._waiting.clear()
            self._rows = [None] * self.slots
            self._closed = True
        for request in pending:
            self._finish(request, "error" if error else "cancelled", error)

    def _admit(
        self, cache: KVCache, logits: jax.Array, row: int, request: _Request
    ) -> tuple[KVCache, jax.Array]:
        n = len(request.prompt)
        t = bucket_length(n)
        tokens = np.zeros((1, t), np.int32)
        valid = np.zeros((1, t), bool)
        tokens[0, t - n :] = request.prompt
        valid[0, t - n :] = True
        one_logits, one = _prefill_one(
            self.params,
            self.lora,
            self.lora_scale,
            jnp.asarray(tokens),
            jnp.asarray(valid),
            jnp.int32(n),
            config=self.config,
            compute_dtype=self.compute_dtype,
        )
        placed: tuple[KVCache, jax.Array] = _insert(cache, logits, jnp.int32(row), one, one_logits)
        return placed

    def _advance(self, request: _Request, token: int) -> bool:
        """Take one picked token; emit what is settled; True when the request is done."""
        if request.cancelled:
            self._finish(request, "cancelled")
            return True
        if token in request.stop_ids:
            self._finish(request, "stop")
            return True
        request.tokens.append(token)
        text = self.tokenizer.decode(request.tokens)
        if request.stop_strings:
            start = max(0, request.sent - max(len(s) for s in request.stop_strings))
            hits = [i for i in (text.find(s, start) for s in request.stop_strings) if i >= 0]
            if hits:
                self._finish(request, "stop", cut=min(hits))
                return True
        if len(request.tokens) >= request.sampling.max_new_tokens:
            self._finish(request, "length")
            return True
        settled = len(text) - _held_back(text, request.stop_strings)
        if settled > request.sent or len(request.tokens) > request.sent_tokens:
            request.emit(
                Delta(text[request.sent : max(settled, request.sent)], self._new_tokens(request))
            )
            request.sent = max(settled, request.sent)
        return False

    @staticmethod
    def _new_tokens(request: _Request) -> tuple[int, ...]:
        new = tuple(request.tokens[request.sent_tokens :])
        request.sent_tokens = len(request.tokens)
        return new

    def _finish(
        self, request: _Request, reason: str, error: str | None = None, cut: int | None = None
    ) -> None:
        text = self.tokenizer.decode(request.tokens)
        raw = self.tokenizer.decode(request.tokens, skip_special_tokens=False)
        if cut is not None:
            text = text[:cut]
            hits = [i for i in (raw.find(s) for s in request.stop_strings) if i >= 0]
            raw = raw[: min(hits)] if hits else raw
        if len(text) > request.sent or len(request.tokens) > request.sent_tokens:
            request.emit(Delta(text[request.sent :], self._new_tokens(request)))
            request.sent = max(len(text), request.sent)
        usage = Usage(len(request.prompt), len(request.tokens))
        self.finished[reason if error is None else "error"] += 1
        request.emit(
            Finished(
                reason if error is None else "error", text, raw, tuple(request.tokens), usage, error
            )
        )
