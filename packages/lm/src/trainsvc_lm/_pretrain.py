"""A small base model made locally: ``init_tiny`` plus a short full-parameter pretraining.

Tests, demos and benches need a base model that has seen language, without
downloading one. :func:`pretrain_tiny` trains every weight of a model directory on
the package's bundled text (next-token loss on random windows) and writes the weights
back; :func:`cached_tiny_model` does both once and keeps the result in the user cache,
keyed by a hash of the settings and of the code and text that produce it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax  # type: ignore[import-untyped]

from trainsvc_lm import _model
from trainsvc_lm._loss import token_nll_sum
from trainsvc_lm._tiny import corpus_text, init_tiny
from trainsvc_lm._tokenizer import Tokenizer
from trainsvc_lm._weights import load_model, save_model

# The sources whose change changes the model cached_tiny_model builds.
_SOURCES = ("_tiny.py", "_model.py", "_weights.py", "_tokenizer.py", "_loss.py", "_pretrain.py")


def default_cache_dir() -> Path:
    """``$TRAINSVC_LM_CACHE``, else ``$XDG_CACHE_HOME/trainsvc-lm`` (``~/.cache/trainsvc-lm``)."""
    env = os.environ.get("TRAINSVC_LM_CACHE")
    if env:
        return Path(env).expanduser()
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "trainsvc-lm"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "trainsvc-lm"


def pretrain_tiny(
    model_dir: str | Path,
    *,
    steps: int = 400,
    batch_size: int = 16,
    seq_len: int = 128,
    lr: float = 3e-3,
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Trains every weight of ``model_dir`` on the bundled text and saves them in place.

    Args:
        model_dir: a model directory (``init_tiny``'s output) with its tokenizer.
        steps: AdamW steps (warm-up, then cosine decay to a tenth).
        batch_size: windows per step.
        seq_len: tokens per window.
        lr: peak learning rate.
        seed: the window sampler's seed.
        progress: called with ``(step, loss)`` every 50 steps.

    Returns:
        The loss of every step.
    """
    config, params = load_model(model_dir, dtype=jnp.float32)
    tokenizer = Tokenizer.from_dir(model_dir)
    ids = np.asarray(tokenizer.encode(corpus_text()), dtype=np.int32)
    if ids.size <= seq_len + 1:
        raise ValueError(f"the bundled text has {ids.size} tokens, too few for seq_len {seq_len}")
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, min(50, steps // 10), steps, lr / 10)
    optimizer = optax.chain(
        optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.01)
    )
    opt_state = optimizer.init(params)

    def loss_fn(p: Any, window: jax.Array) -> jax.Array:
        h = _model.hidden_states(p, config, window[:, :-1])
        mask = jnp.ones(window[:, 1:].shape, jnp.float32)
        return token_nll_sum(p, config, h, window[:, 1:], mask) / mask.size

    @jax.jit
    def step(p: Any, s: Any, window: jax.Array) -> tuple[Any, Any, jax.Array]:
        loss, grads = jax.value_and_grad(loss_fn)(p, window)
        updates, s = optimizer.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    rng = np.random.default_rng(seed)
    losses: list[float] = []
    for i in range(steps):
        starts = rng.integers(0, ids.size - seq_len - 1, size=batch_size)
        window = np.stack([ids[s : s + seq_len + 1] for s in starts])
        params, opt_state, loss = step(params, opt_state, window)
        losses.append(float(loss))
        if progress is not None and (i + 1) % 50 == 0:
            progress(i + 1, losses[-1])
    save_model(model_dir, config, jax.device_get(params))
    return losses


def cached_tiny_model(
    family: str = "llama",
    *,
    cache_dir: str | Path | None = None,
    pretrain_steps: int = 400,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    **tiny_kwargs: Any,
) -> Path:
    """A pretrained tiny model directory, built on first use and reused afterwards.

    The directory is ``<cache_dir>/tiny-<family>-<hash>``, where the hash covers the
    arguments, the bundled text and the source of the modules that build the model,
    so a change to any of them builds a fresh one. Building writes to a temporary
    directory first and renames it into place, so an interrupted build leaves nothing.

    Args:
        family: ``init_tiny``'s family.
        cache_dir: default :func:`default_cache_dir`.
        pretrain_steps: :func:`pretrain_tiny` steps.
        seed: the weights' and the pretraining's seed.
        progress: receives a line of text now and then while building.
        **tiny_kwargs: more ``init_tiny`` arguments (sizes).
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    here = Path(__file__).parent
    digest = hashlib.sha256()
    settings = {"family": family, "steps": pretrain_steps, "seed": seed, **tiny_kwargs}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for name in _SOURCES:
        digest.update((here / name).read_bytes())
    digest.update(corpus_text().encode())
    target = root / f"tiny-{family}-{digest.hexdigest()[:16]}"
    if (target / "config.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
    try:
        start = time.monotonic()
        init_tiny(build, family, seed=seed, **tiny_kwargs)
        report = None
        if progress is not None:
            report = lambda s, loss: progress(f"pretrain step={s} loss={loss:.4f}")  # noqa: E731
        pretrain_tiny(build, steps=pretrain_steps, seed=seed, progress=report)
        if progress is not None:
            progress(f"pretrained {target.name} in {time.monotonic() - start:.1f}s")
        try:
            build.rename(target)
        except OSError:  # another process built it meanwhile
            if not (target / "config.json").is_file():
                raise
    finally:
        if build.exists():
            shutil.rmtree(build, ignore_errors=True)
    return target
