"""LoRATrainer: LoRA fine-tuning of a Llama-family model on chat data, with checkpoints and resume.

The trainer has the surface of the other trainsvc trainers (``step_count``,
``last_metrics``, ``run(n, should_stop)``, ``save_checkpoint(emergency)``,
``restore(path)``, ``close()``), so the service drives it as its ``lora`` kind.

One step is one AdamW update of the adapters from ``optim.grad_accum`` micro-batches
(a ``lax.scan`` inside one jitted function); the loss is the mean cross-entropy over
assistant tokens only, computed in chunks of positions so that ``[B, T, V]`` logits
never exist at once. The base weights are an argument of the jitted step, never
differentiated nor updated.

Data-parallel (``data_parallel``, see ``_distributed``): every process reads the whole
data set and builds the same global batch of ``data.batch_size`` rows at the same
`DataPosition`; each puts only its share of the rows on its devices, and the jitted
step, partitioned by XLA over the global mesh, sums the loss and gradients over all
of them.
"""

from __future__ import annotations

import datetime as dt
import json
import platform as host_platform
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax  # type: ignore[import-untyped]

from trainsvc_lm import _model
from trainsvc_lm._checkpointing import CheckpointFiles
from trainsvc_lm._data import (
    BatchLoader,
    DataPosition,
    TokenizedData,
    load_chat_data,
    read_chat_jsonl,
)
from trainsvc_lm._distributed import DataParallel
from trainsvc_lm._errors import ConfigError
from trainsvc_lm._lora import (
    MemoryEstimate,
    check_targets,
    estimate_memory,
    init_lora,
    platform_budget,
)
from trainsvc_lm._loss import LOSS_CHUNK_BYTES as LOSS_CHUNK_BYTES  # re-exported
from trainsvc_lm._loss import token_nll_sum
from trainsvc_lm._tokenizer import Tokenizer
from trainsvc_lm._train_config import LMTrainConfig, OptimSection
from trainsvc_lm._train_log import Sink, Sinks
from trainsvc_lm._weights import check_model_dir

STATE_FORMAT = "trainsvc-lm-lora/1"


@dataclass(frozen=True)
class LMFrame:
    """A live snapshot of a LoRA run for dashboards.

    Attributes:
        step: optimizer steps done.
        wall_time: seconds since the Unix epoch.
        metrics: ``train_loss``, ``learning_rate``, ``tokens_per_s`` and, when it was
            measured at this step, ``val_loss``.
        sample_prompt: the fixed validation prompt, when a sample was drawn at this step.
        sample_completion: the model's greedy completion of it.
    """

    step: int
    wall_time: float
    metrics: dict[str, float] = field(default_factory=dict)
    sample_prompt: str | None = None
    sample_completion: str | None = None


def resolve_platform(setting: str) -> tuple[str, int]:
    """The platform name for budgets and run names, and its memory budget in bytes.

    ``auto`` picks ``h100`` for an H100 GPU, ``gpu`` for another GPU (budget: 90% of
    its memory), ``m4`` on Apple Silicon, else ``cpu`` (budget: the machine's RAM).
    """
    if setting != "auto":
        return setting, platform_budget(setting)
    if jax.default_backend() == "gpu":
        device = jax.devices()[0]
        if "H100" in device.device_kind:
            return "h100", platform_budget("h100")
        stats = device.memory_stats() or {}
        return "gpu", int(0.9 * stats.get("bytes_limit", 80 * 10**9))
    if sys.platform == "darwin" and host_platform.machine() == "arm64":
        return "m4", platform_budget("m4")
    return "cpu", platform_budget("cpu")


def resolve_backend(setting: str) -> str:
    """``jax`` or ``mlx`` for ``train.backend`` (``auto``: MLX on an Apple Silicon GPU).

    Raises:
        ConfigError: ``mlx`` asked for where the ``mlx`` package is not installed.
    """
    if setting == "jax":
        return "jax"
    try:
        import mlx.core as mx
    except ImportError:
        if setting == "mlx":
            raise ConfigError(
                "train.backend", "mlx needs the mlx package: pip install 'trainsvc-lm[mlx]'"
            ) from None
        return "jax"
    if setting == "mlx":
        return "mlx"
    apple_gpu = sys.platform == "darwin" and host_platform.machine() == "arm64"
    return "mlx" if apple_gpu and mx.metal.is_available() else "jax"


def create_trainer(
    config: LMTrainConfig,
    frame_callback: Callable[[LMFrame], None] | None = None,
    *,
    sinks: Sequence[Sink] | None = None,
) -> LoRATrainer:
    """The trainer of ``config.train.backend``: `LoRATrainer` (JAX) or `MLXLoRATrainer`."""
    if resolve_backend(config.train.backend) == "mlx":
        from trainsvc_lm._mlx_train import MLXLoRATrainer

        return MLXLoRATrainer(config, frame_callback, sinks=sinks)
    return LoRATrainer(config, frame_callback, sinks=sinks)


def run_name(name: str, platform: str, when: dt.datetime | None = None) -> str:
    """``<name>-<platform>-<YYYYMMDD-HHMM>`` (UTC)."""
    when = when or dt.datetime.now(dt.UTC)
    return f"{name}-{platform}-{when:%Y%m%d-%H%M}"


def learning_rate_schedule(optim: OptimSection, total_steps: int) -> optax.Schedule:
    """Linear warm-up from 0 to ``optim.lr``, then cosine decay to ``lr * min_lr_ratio``."""
    warmup = min(optim.warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=optim.lr,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=optim.lr * optim.min_lr_ratio,
    )


def make_optimizer(optim: OptimSection, total_steps: int) -> optax.GradientTransformation:
    """AdamW on the schedule of :func:`learning_rate_schedule`, after global-norm clipping."""
    adamw = optax.adamw(
        learning_rate_schedule(optim, total_steps),
        b1=optim.beta1,
        b2=optim.beta2,
        weight_decay=optim.weight_decay,
    )
    if optim.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(optim.grad_clip), adamw)
    return adamw


class LoRATrainer(CheckpointFiles):
    """Trains LoRA adapters on a frozen base model; one :meth:`step` is one optimizer update.

    Everything that can be wrong with the inputs is checked in the constructor, before
    any training time: the config, the model directory (files, shards, architecture,
    LoRA targets), the tokenizer and chat template, every data line, and the memory
    estimate against the platform's budget.

    Args:
        config: the run (``model.dir`` and ``data.train`` are required).
        frame_callback: receives an :class:`LMFrame` every ``log.frame_interval`` steps,
            on the training thread (keep it quick; an exception in it is reported and
            ignored).
        sinks: where metrics and messages go (console lines, JSONL, W&B).
        data_parallel: train data-parallel across the processes of a
            ``jax.distributed`` run (``data.batch_size`` rows split evenly); None (the
            default): when there is more than one process. Every process then makes the
            same calls in the same order (steps, checkpoints, restores); process 0 writes
            the checkpoints and is the only one that evaluates, samples and logs.

    Raises:
        ConfigError, DataError, ModelLoadError, TemplateError: bad input, named.
    """

    trainer_kind = "lora"

    backend = "jax"
    """The array library that trains: ``jax`` here, ``mlx`` in `MLXLoRATrainer`."""

    def __init__(
        self,
        config: LMTrainConfig,
        frame_callback: Callable[[LMFrame], None] | None = None,
        *,
        sinks: Sequence[Sink] | None = None,
        data_parallel: bool | None = None,
    ) -> None:
        config.require_inputs()
        assert config.model.dir is not None and config.data.train is not None
        self.config = config
        self.sinks = Sinks(sinks or ())
        self.frame_callback = frame_callback
        if data_parallel is None:
            data_parallel = jax.process_count() > 1
        if data_parallel and self.backend != "jax":
            raise ConfigError("train.backend", "data-parallel runs need the jax backend")
        self._dp = (
            DataParallel(config.data.batch_size, "data.batch_size") if data_parallel else None
        )
        # The weights' headers are checked now (a missing shard in milliseconds), not
        # after the data has been tokenized.
        self.model_config = check_model_dir(config.model.dir)
        check_targets(config.lora, self.model_config)
        self.tokenizer = Tokenizer.from_dir(config.model.dir)
        data = config.data
        self.train_data = self._load(data.train)
        self.loader = BatchLoader(
            self.train_data.examples,
            batch_size=data.batch_size,
            seq_len=data.max_seq_len,
            seed=config.train.seed,
            batching="pack" if data.packing else "bucket",
            pad_id=self.tokenizer.pad_token_id,
        )
        self.validation_data = None if data.validation is None else self._load(data.validation)
        self._eval_batches = self._validation_batches()
        self.platform, budget = resolve_platform(config.train.platform)
        self.compute_dtype = self._compute_dtype()
        self.memory = self.estimate_memory(budget)
        self.memory.check()
        self._sample_messages, self._sample_tools = self._sample_conversation()
        self.schedule = learning_rate_schedule(config.optim, config.train.steps)
        init_key, key = jax.random.split(jax.random.PRNGKey(config.train.seed))
        # Both backends start from the same adapters for a seed.
        lora = jax.device_get(init_lora(config.lora, self.model_config, init_key))
        self._init_backend(lora, key)
        self.position = DataPosition()
        self._step = 0
        self.tokens_seen = 0
        self.run_id = uuid.uuid4().hex[:16]
        self.run_name = run_name(config.log.name, self.platform)
        self.last_metrics: dict[str, float] = {}
        self.last_sample: tuple[str, str] | None = None
        self._manager: Any = None

    # ------------------------------------------------------------------ setup

    def _init_backend(self, lora: Any, key: jax.Array) -> None:
        """Loads the base weights and builds the jitted steps (the MLX trainer overrides this).

        Sets ``params``, ``lora``, ``optimizer``, ``opt_state``, ``_key``, ``_train_step``
        and ``_eval_step``.
        """
        from trainsvc_lm._weights import load_model

        assert self.config.model.dir is not None
        dtype = None if self.config.model.dtype == "auto" else self.config.model.dtype
        # data-parallel: whole weights on this process's first device, then replicated
        devices = None if self._dp is None else jax.local_devices()[:1]
        self.model_config, params = load_model(self.config.model.dir, dtype=dtype, devices=devices)
        self.params = params if self._dp is None else self._dp.replicate(params)
        self.optimizer = make_optimizer(self.config.optim, self.config.train.steps)
        self.lora, self.opt_state, self._key = self._place((lora, self.optimizer.init(lora), key))
        self._train_step = self._make_train_step()
        self._eval_step: Any = jax.jit(self._eval_sums)

    def _load(self, path: str | None) -> TokenizedData:
        assert path is not None
        # One more token than a row has positions: a row of T positions predicts T tokens.
        return load_chat_data(
            path,
            self.tokenizer,
            max_seq_len=self.config.data.max_seq_len + 1,
            truncation=self.config.data.truncation,
        )

    def _validation_batches(self) -> list[dict[str, np.ndarray]]:
        if self.validation_data is None or not self.validation_data.examples:
            return []
        data = self.config.data
        loader = BatchLoader(
            self.validation_data.examples,
            batch_size=data.batch_size,
            seq_len=data.max_seq_len,
            seed=0,
            batching="pack" if data.packing else "bucket",
            pad_id=self.tokenizer.pad_token_id,
        )
        n = min(self.config.log.eval_batches, loader.batches_per_epoch(0))
        return [loader.batch(DataPosition(0, i)).as_dict() for i in range(n)]

    def _compute_dtype(self) -> Any:
        name = self.config.train.compute_dtype
        if name == "auto":
            return jnp.bfloat16 if jax.default_backend() == "gpu" else jnp.float32
        return jnp.dtype(name)

    def estimate_memory(self, budget: int | None = None) -> MemoryEstimate:
        """The run's memory estimate against ``budget`` (default: the platform's)."""
        cfg = self.config
        weight_dtype = (
            self.model_config.torch_dtype if cfg.model.dtype == "auto" else cfg.model.dtype
        )
        return estimate_memory(
            cfg.lora,
            self.model_config,
            batch_size=cfg.data.batch_size,
            seq_len=cfg.data.max_seq_len,
            remat=cfg.train.remat,
            weight_dtype=weight_dtype,
            compute_dtype=jnp.dtype(self.compute_dtype).name,
            platform=self.platform,
            budget=budget,
        )

    def _sample_conversation(self) -> tuple[list[dict[str, Any]], Any]:
        """The fixed prompt sampled every ``log.sample_interval`` steps."""
        source = self.config.data.validation or self.config.data.train
        assert source is not None
        first = read_chat_jsonl(source)[0]
        if self.config.log.sample_prompt is not None:
            return [{"role": "user", "content": self.config.log.sample_prompt}], first.tools
        messages = list(first.messages)
        assistant = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        return messages[: assistant[-1]] if assistant else messages, first.tools

    # ------------------------------------------------------------------ the jitted steps

    def _loss_sums(
        self, lora: Any, params: Any, batch: Mapping[str, jax.Array], key: jax.Array | None
    ) -> tuple[jax.Array, jax.Array]:
        cfg = self.config
        hidden = _model.hidden_states(
            params,
            self.model_config,
            batch["tokens"],
            positions=batch["positions"],
            segment_ids=batch["segment_ids"],
            lora=lora,
            lora_scale=cfg.lora.scale,
            lora_dropout=cfg.lora.dropout,
            dropout_key=key,
            remat=cfg.train.remat,
            compute_dtype=self.compute_dtype,
        )
        mask = batch["loss_mask"]
        nll = token_nll_sum(params, self.model_config, hidden, batch["targets"], mask)
        return nll, jnp.sum(mask).astype(jnp.float32)

    def _eval_sums(
        self, lora: Any, params: Any, batch: Mapping[str, jax.Array]
    ) -> tuple[jax.Array, jax.Array]:
        return self._loss_sums(lora, params, batch, None)

    def _make_train_step(self) -> Callable[..., Any]:
        optimizer = self.optimizer

        def train_step(
            lora: Any, opt_state: Any, key: jax.Array, params: Any, batches: Mapping[str, jax.Array]
        ) -> tuple[Any, Any, jax.Array, dict[str, jax.Array]]:
            key, step_key = jax.random.split(key)
            grad_fn = jax.value_and_grad(
                lambda lo, b, k: self._loss_sums(lo, params, b, k), has_aux=True
            )

            def micro(carry: Any, xs: Any) -> tuple[Any, None]:
                grads, nll, count = carry
                batch, index = xs
                (n, c), g = grad_fn(lora, batch, jax.random.fold_in(step_key, index))
                return (jax.tree.map(jnp.add, grads, g), nll + n, count + c), None

            zeros = jax.tree.map(jnp.zeros_like, lora)
            steps = batches["tokens"].shape[0]
            init = (zeros, jnp.float32(0), jnp.float32(0))
            (grads, nll, count), _ = jax.lax.scan(micro, init, (batches, jnp.arange(steps)))
            denom = jnp.maximum(count, 1.0)
            grads = jax.tree.map(lambda g: g / denom, grads)
            updates, opt_state = optimizer.update(grads, opt_state, lora)
            lora = optax.apply_updates(lora, updates)
            metrics = {"loss": nll / denom, "grad_norm": optax.tree.norm(grads), "tokens": count}
            return lora, opt_state, key, metrics

        donate = () if jax.default_backend() == "cpu" else (0, 1)
        if self._dp is None:
            return jax.jit(train_step, donate_argnums=donate)
        rep = self._dp.replicated
        return jax.jit(train_step, donate_argnums=donate, out_shardings=(rep, rep, rep, rep))

    def _place(self, tree: Any) -> Any:
        """Host arrays of replicated state as the jitted step takes them (on every device)."""
        return _replicated(tree) if self._dp is None else self._dp.replicate(tree)

    def _local(self, tree: Any) -> Any:
        """Replicated state as this process alone computes with it (sampling, evaluation)."""
        return tree if self._dp is None else self._dp.local(tree)

    # ------------------------------------------------------------------ training

    @property
    def step_count(self) -> int:
        """Optimizer steps done so far."""
        return self._step

    @property
    def remaining_steps(self) -> int:
        """Steps left until ``train.steps``."""
        return max(0, self.config.train.steps - self._step)

    def _next_batches(self) -> dict[str, np.ndarray]:
        rows = []
        for _ in range(self.config.optim.grad_accum):
            rows.append(self.loader.batch(self.position).as_dict())
            self.position = self.loader.advance(self.position)
        return {k: np.stack([r[k] for r in rows]) for k in rows[0]}

    def step(self) -> dict[str, float]:
        """Runs one optimizer update and returns its metrics.

        Metrics: ``loss`` (mean over assistant tokens), ``lr`` (the rate this update
        used), ``grad_norm`` (before clipping), ``tokens`` (loss tokens), ``tok_s``
        (input positions per second), ``epoch``.
        """
        start = time.perf_counter()
        batches = self._next_batches()
        lr = float(self.schedule(self._step))
        dp = self._dp
        placed: Any = batches if dp is None else dp.shard_global(batches, axis=1)
        try:
            self.lora, self.opt_state, self._key, metrics = self._train_step(
                self.lora, self.opt_state, self._key, self.params, placed
            )
            host = {k: float(v) for k, v in jax.device_get(metrics).items()}
        except Exception as exc:
            if dp is None:
                raise
            raise dp.failed(self._step + 1, exc) from exc
        elapsed = max(time.perf_counter() - start, 1e-9)
        self._step += 1
        positions = int(batches["tokens"].size)
        self.tokens_seen += positions
        host.update(lr=lr, tok_s=positions / elapsed, epoch=float(self.position.epoch))
        self.last_metrics = host
        return host

    def evaluate(self) -> float | None:
        """Mean validation loss over assistant tokens (None without validation data)."""
        if not self._eval_batches:
            return None
        nll = count = 0.0
        lora, params = self._local((self.lora, self.params))
        for batch in self._eval_batches:
            n, c = self._eval_step(lora, params, batch)
            nll, count = nll + float(n), count + float(c)
        return nll / max(count, 1.0)

    def sample(self, max_new_tokens: int | None = None) -> tuple[str, str]:
        """The fixed prompt's last user message and the greedy completion of the current model."""
        from trainsvc_lm._sampler import SamplingConfig, generate

        tok = self.tokenizer
        text = tok.render_chat(
            self._sample_messages, tools=self._sample_tools, add_generation_prompt=True
        )
        ids = tok.encode(text)
        sampling = SamplingConfig(
            max_new_tokens=max_new_tokens or self.config.log.sample_max_tokens,
            temperature=0.0,
            stop_token_ids=tuple(tok.eos_token_ids),
        )
        params, lora = self._local((self.params, self.lora))
        out = generate(
            params, self.model_config, [ids], sampling, lora=lora, lora_scale=self.config.lora.scale
        )[0]
        users = [m for m in self._sample_messages if m["role"] == "user"]
        prompt = str(users[-1].get("content", "")) if users else text
        return prompt, tok.decode(out)

    def run(self, n: int | None = None, should_stop: Callable[[], bool] | None = None) -> int:
        """Runs up to ``n`` steps (default: until ``train.steps``); returns the steps done.

        Between steps it checks ``should_stop()`` and returns early when true (the
        state is then that of the last finished step). Every ``log.log_interval``
        steps a line goes to the sinks; validation loss, sample completions and
        frames follow their own intervals; a checkpoint is saved every
        ``log.save_interval`` steps and when ``train.steps`` is reached.

        Data-parallel: a stop asked on any process stops every process after the same
        step; only process 0 evaluates, samples, logs and publishes frames.
        """
        todo = self.remaining_steps if n is None else n
        log = self.config.log
        done = 0
        while done < todo:
            if stop_requested(self._dp, should_stop, self._step):
                break
            metrics = self.step()
            done += 1
            step = self._step
            final = step == self.config.train.steps
            if self._dp is not None and not self._dp.is_writer:
                if final or _due(step, log.save_interval, final):
                    self.save_checkpoint()
                continue
            if _due(step, log.eval_interval, final):
                val = self.evaluate()
                if val is not None:
                    metrics["val_loss"] = val
            sample = None
            if _due(step, log.sample_interval, final):
                sample = self.sample()
                self.last_sample = sample
                self.sinks.message(f"sample step={step} completion={json.dumps(sample[1])}")
            if _due(step, log.log_interval, final):
                self.sinks.log(step, metrics)
            if _due(step, log.frame_interval, final):
                self._publish(metrics, sample)
            if final or _due(step, log.save_interval, final):
                self.save_checkpoint()
        return done

    def _publish(self, metrics: Mapping[str, float], sample: tuple[str, str] | None) -> None:
        if self.frame_callback is None:
            return
        values = {
            "train_loss": metrics["loss"],
            "learning_rate": metrics["lr"],
            "tokens_per_s": metrics["tok_s"],
        }
        if "val_loss" in metrics:
            values["val_loss"] = metrics["val_loss"]
        frame = LMFrame(
            self._step,
            time.time(),
            values,
            sample_prompt=sample[0] if sample else None,
            sample_completion=sample[1] if sample else None,
        )
        try:
            self.frame_callback(frame)
        except Exception as exc:  # a dashboard problem must not stop training
            self.sinks.message(f"frame callback failed at step {self._step}: {exc!r}")

    # ------------------------------------------------------------------ state

    def _meta(self) -> dict[str, Any]:
        """The non-array state: format, backend, step, config, run id and name, data position."""
        return {
            "format": STATE_FORMAT,
            "backend": self.backend,
            "step": self._step,
            "config": self.config.to_dict(),
            "run_id": self.run_id,
            "run_name": self.run_name,
            "data_position": self.position.to_dict(),
            "tokens_seen": self.tokens_seen,
        }

    def state_dict(self) -> dict[str, Any]:
        """The training state as one checkpointable tree.

        Arrays: ``lora`` (the adapters), ``opt_state`` (optax's), ``prng_key``.
        ``meta`` is a JSON string: format, backend, step, config, run id and name,
        the data position and the tokens seen. Data-parallel: this process's whole
        copies of the (replicated) arrays, as NumPy arrays.
        """
        arrays = {"lora": self.lora, "opt_state": self.opt_state, "prng_key": self._key}
        if self._dp is not None:
            arrays = jax.tree.map(np.asarray, self._dp.local(arrays))
        return {**arrays, "meta": json.dumps(self._meta(), sort_keys=True)}

    def _check_resumable(self, meta: Mapping[str, Any]) -> None:
        """Raises ConfigError unless ``meta`` is this backend's LoRA state with the same trajectory."""
        if meta.get("format") != STATE_FORMAT:
            raise ConfigError(
                "train.resume_from",
                f"not a LoRA trainer state: format {meta.get('format')!r}, expected {STATE_FORMAT!r}",
            )
        self._check_backend(str(meta.get("backend", "jax")))
        self._check_config(meta["config"])

    def _check_config(self, saved_dict: Mapping[str, Any]) -> None:
        """Raises ConfigError naming the first trajectory field that differs from ``saved_dict``."""
        saved = LMTrainConfig.from_dict(saved_dict)
        dotted = self.config.mismatch(saved)
        if dotted is not None:
            raise ConfigError(
                dotted,
                f"the checkpoint was trained with {_lookup(saved, dotted)!r}, this run has "
                f"{_lookup(self.config, dotted)!r}; resume with the checkpoint's value",
            )

    def _check_backend(self, backend: str) -> None:
        """Raises ConfigError (``train.backend``) for another backend's state."""
        if backend != self.backend:
            raise ConfigError(
                "train.backend",
                f"the checkpoint was written by the {backend} backend, this run uses {self.backend}; "
                f"resume it with train.backend = {backend!r} (export-peft reads either)",
            )

    def _check_header(self, path: str | Path) -> None:
        """The backend and trajectory checks from a checkpoint file's header metadata.

        Run before the state is matched against this run's, so a checkpoint of another
        rank or backend is refused by the field that differs, not by a tensor shape.
        """
        from trainsvc_checkpoint import CheckpointError, read_info

        try:
            metadata = read_info(path).metadata
        except CheckpointError:
            return  # a corrupt or missing file: restoring reports it (or falls back)
        self._check_backend(str(metadata.get("backend", "jax")))
        if isinstance(metadata.get("config"), dict):
            self._check_config(metadata["config"])

    def _restore_meta(self, meta: Mapping[str, Any]) -> None:
        self._step = int(meta["step"])
        self.position = DataPosition.from_dict(meta["data_position"])
        self.tokens_seen = int(meta["tokens_seen"])
        self.run_id, self.run_name = str(meta["run_id"]), str(meta["run_name"])

    def load_state_dict(self, tree: Mapping[str, Any]) -> None:
        """Restores a tree made by :meth:`state_dict`.

        Raises:
            ConfigError: the checkpoint was trained with a different value of a field
                that changes the trajectory (named), by the other backend, or it is not
                a LoRA trainer state.
        """
        meta = json.loads(tree["meta"])
        self._check_resumable(meta)
        template = {k: v for k, v in self.state_dict().items() if k != "meta"}
        struct = jax.tree.structure(template)
        leaves, got = jax.tree.flatten({k: tree[k] for k in template})
        if str(got) != str(struct):
            raise ConfigError(
                "train.resume_from", f"the checkpoint's state does not match this run: {got}"
            )
        if self._dp is not None:
            self._dp.check_same(int(meta["step"]), "the step of the checkpoint restored")
        restored = self._place(jax.tree.unflatten(struct, [np.asarray(x) for x in leaves]))
        self.lora, self.opt_state = restored["lora"], restored["opt_state"]
        self._key = restored["prng_key"]
        self._restore_meta(meta)

    # ------------------------------------------------------------------ checkpoints

    def run_config(self) -> LMTrainConfig:
        """The run's config."""
        return self.config

    def restore(self, source: str | Path = "latest") -> Path | None:
        """Restores the state from a checkpoint file, or the newest valid one with ``"latest"``.

        Returns:
            The file restored, or None when ``"latest"`` found no checkpoint (nothing changes).

        Data-parallel: every process calls it; they must all find a checkpoint (the
        same step) or all find none, else DistributedError.

        Raises:
            ConfigError: a trajectory field differs from the checkpoint's (named).
            trainsvc_checkpoint.CheckpointError: a missing, corrupt or incompatible file.
        """
        template = self.state_dict()
        if str(source) == "latest":
            files = self.checkpoint_manager.checkpoints()
            check_found(self._dp, bool(files))
            if not files:
                return None
            self._check_header(max(files, key=lambda c: c.step).path)
            restored = self.checkpoint_manager.restore_checkpoint(target=template)
            tree, path = restored.tree, Path(restored.path)
        else:
            from trainsvc_checkpoint import load

            path = Path(source)
            check_found(self._dp, True)
            self._check_header(path)
            tree = load(path, target=template)
        self.load_state_dict(tree)
        return path

    def close(self) -> None:
        """Waits for pending checkpoint writes and closes the sinks."""
        self.sinks.close()
        self.close_checkpoints()


def stop_requested(
    dp: DataParallel | None, should_stop: Callable[[], bool] | None, step: int
) -> bool:
    """Whether to stop before the next step; data-parallel: whether any process asks to
    (a collective, so every process stops after the same step)."""
    stop = should_stop is not None and should_stop()
    if dp is None:
        return stop
    try:
        return dp.any(stop)
    except Exception as exc:
        raise dp.failed(step + 1, exc) from exc


def check_found(dp: DataParallel | None, found: bool) -> None:
    """Data-parallel: raises DistributedError unless every process found a checkpoint or none."""
    if dp is not None:
        dp.check_same(
            int(found),
            "whether log.checkpoint_dir has a checkpoint (1) or not (0); every process must "
            "read the same directory",
        )


def _due(step: int, interval: int, final: bool) -> bool:
    """Whether an every-``interval``-steps event happens at ``step`` (0 = never; always at the end)."""
    return interval > 0 and (final or step % interval == 0)


def _replicated(tree: Any) -> Any:
    """``tree`` placed on every device (committed), as the jitted step's outputs are.

    Fresh and restored arrays are otherwise uncommitted, and the step would compile
    a second time for its second call.
    """
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("devices",))
    replicated = jax.sharding.PartitionSpec()  # type: ignore[no-untyped-call]
    return jax.device_put(tree, jax.sharding.NamedSharding(mesh, replicated))


def _lookup(config: LMTrainConfig, dotted: str) -> Any:
    section, name = dotted.split(".", 1)
    return config.to_dict()[section][name]


@dataclass(frozen=True)
class LoraCheckpoint:
    """What :func:`read_checkpoint` finds in a LoRA trainer checkpoint."""

    path: Path
    step: int
    config: LMTrainConfig
    lora: dict[str, dict[str, np.ndarray]]


def find_checkpoint_file(source: str | Path) -> Path:
    """A checkpoint file itself, or the newest one in a run directory.

    Raises:
        ConfigError: (field ``checkpoint``) nothing to read there.
    """
    path = Path(source)
    if path.is_file():
        return path
    if path.is_dir():
        from trainsvc_checkpoint import CheckpointManager

        files = CheckpointManager(path).checkpoints()
        if files:
            return max(files, key=lambda c: (c.step, c.emergency)).path
        raise ConfigError("checkpoint", f"no checkpoint in {path}")
    raise ConfigError("checkpoint", f"no such file or directory: {path}")


def read_checkpoint(source: str | Path) -> LoraCheckpoint:
    """Reads the adapters, config and step of a checkpoint file or run directory.

    Raises:
        ConfigError: not a LoRA trainer checkpoint, or nothing at ``source``.
        trainsvc_checkpoint.CheckpointError: a corrupt file.
    """
    from trainsvc_checkpoint import load

    path = find_checkpoint_file(source)
    tree = load(path)
    meta = json.loads(tree.get("meta", "{}"))
    if meta.get("format") != STATE_FORMAT:
        raise ConfigError("checkpoint", f"{path} is not a LoRA trainer checkpoint")
    lora = {t: {k: np.asarray(v) for k, v in ab.items()} for t, ab in tree["lora"].items()}
    return LoraCheckpoint(path, int(meta["step"]), LMTrainConfig.from_dict(meta["config"]), lora)
