"""LoRA training on Apple Silicon GPUs through MLX, with the JAX trainer's contract.

`MLXLoRATrainer` is a `LoRATrainer` whose backend is MLX: the same config and
validation, chat data and batch order, checkpoints (trainsvc-checkpoint files with
the same ``lora`` tensors, so ``export-peft`` reads either), frames, console lines
and W&B. What differs is the arithmetic: the base weights and adapters are MLX
arrays, the loss and its gradient come from ``mx.value_and_grad``, and AdamW is
MLX's (with bias correction, and clipping and the learning-rate schedule computed
as the JAX trainer does, so both backends take the same steps up to rounding).

The optimizer state is MLX's, so a checkpoint resumes on the backend that wrote
it; the ``backend`` recorded in its metadata says which.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import mlx.core as mx
import mlx.optimizers as mlx_optim
import numpy as np

from trainsvc_lm import _mlx_model as mm
from trainsvc_lm._train import LOSS_CHUNK_BYTES, LoRATrainer

BACKEND = "mlx"


def _tree_map(fn: Any, *trees: Any) -> Any:
    """``fn`` over the leaves of nested dicts (MLX trees are plain dicts)."""
    first = trees[0]
    if isinstance(first, Mapping):
        return {k: _tree_map(fn, *(t[k] for t in trees)) for k in first}
    return fn(*trees)


def _leaves(tree: Any) -> list[mx.array]:
    if isinstance(tree, Mapping):
        return [leaf for v in tree.values() for leaf in _leaves(v)]
    return [tree]


class MLXLoRATrainer(LoRATrainer):
    """Trains LoRA adapters with MLX; see `LoRATrainer` for the arguments and surface."""

    backend = BACKEND

    def _init_backend(self, lora: Any, key: Any) -> None:
        from trainsvc_lm._weights import read_model

        assert self.config.model.dir is not None
        name = self.model_config.torch_dtype if self.config.model.dtype == "auto" else None
        dtype = mm.mlx_dtype(name or self.config.model.dtype)
        numpy_dtype = np.float32 if dtype == mx.bfloat16 else None  # read bf16 files widened

        def put(array: np.ndarray, layered: bool) -> Any:
            return mm.to_mlx(array, dtype)

        self.model_config, self.params = read_model(
            self.config.model.dir, dtype=numpy_dtype, put=put
        )
        self.lora = mm.to_mlx(lora, mx.float32)
        self.optimizer = mlx_optim.AdamW(
            learning_rate=float(self.schedule(0)),
            betas=[self.config.optim.beta1, self.config.optim.beta2],
            eps=1e-8,
            weight_decay=self.config.optim.weight_decay,
            bias_correction=True,
        )
        self.optimizer.init(self.lora)
        self.opt_state = self.optimizer.state
        self._key = mx.array(np.asarray(key, dtype=np.uint32))
        self._train_step = self._mlx_train_step
        self._eval_step: Any = self._mlx_eval_sums

    # ------------------------------------------------------------------ arithmetic

    def _mlx_loss_sums(
        self, lora: Any, batch: Mapping[str, mx.array], key: mx.array | None
    ) -> tuple[mx.array, mx.array]:
        cfg = self.config
        hidden = mm.hidden_states(
            self.params,
            self.model_config,
            batch["tokens"],
            positions=batch["positions"],
            segment_ids=batch["segment_ids"],
            lora=lora,
            lora_scale=cfg.lora.scale,
            lora_dropout=cfg.lora.dropout if key is not None else 0.0,
            dropout_key=key,
        )
        mask = batch["loss_mask"].astype(mx.float32)
        d = hidden.shape[-1]
        h = hidden.reshape(-1, d)
        targets = mx.maximum(batch["targets"].reshape(-1), 0)
        m = mask.reshape(-1)
        chunk = max(1, LOSS_CHUNK_BYTES // (4 * self.model_config.vocab_size))

        def chunk_nll(start: int) -> Any:
            tc, mc = targets[start : start + chunk], m[start : start + chunk]

            def nll_of(hc: mx.array) -> mx.array:  # recomputed in the backward pass
                logits = mm.logits_from_hidden(self.params, self.model_config, hc)
                picked = mx.take_along_axis(logits, tc[:, None], axis=-1)[:, 0]
                return mx.sum((mx.logsumexp(logits, axis=-1) - picked) * mc)

            return mx.checkpoint(nll_of)

        nll = mx.array(0.0)
        for start in range(0, h.shape[0], chunk):
            nll = nll + chunk_nll(start)(h[start : start + chunk])
        return nll, mx.sum(m)

    def _mlx_eval_sums(
        self, lora: Any, params: Any, batch: Mapping[str, np.ndarray]
    ) -> tuple[float, float]:
        nll, count = self._mlx_loss_sums(lora, _to_device(batch), None)
        mx.eval(nll, count)
        return _scalar(nll), _scalar(count)

    def _mlx_train_step(
        self, lora: Any, opt_state: Any, key: mx.array, params: Any, batches: Mapping[str, Any]
    ) -> tuple[Any, Any, mx.array, dict[str, float]]:
        """One AdamW update from ``optim.grad_accum`` micro-batches (``batches[k]: [A, B, T]``)."""
        optim = self.config.optim
        key, step_key = mx.random.split(key)
        accum = int(batches["tokens"].shape[0])
        micro_keys = mx.random.split(step_key, accum)
        use_dropout = self.config.lora.dropout > 0

        def loss(lo: Any, batch: Mapping[str, mx.array], k: mx.array | None) -> Any:
            return self._mlx_loss_sums(lo, batch, k)

        grad_fn = mx.value_and_grad(loss)
        grads: Any = None
        nll = count = mx.array(0.0)
        for i in range(accum):
            batch = _to_device({name: value[i] for name, value in batches.items()})
            (n, c), g = grad_fn(lora, batch, micro_keys[i] if use_dropout else None)
            grads = g if grads is None else _tree_map(mx.add, grads, g)
            nll, count = nll + n, count + c
            mx.eval(grads, nll, count)
        denom = mx.maximum(count, 1.0)
        grads = _tree_map(lambda x: x / denom, grads)
        norm = mx.sqrt(sum((mx.sum(x * x) for x in _leaves(grads)), mx.array(0.0)))
        if optim.grad_clip > 0:
            scale = mx.where(norm < optim.grad_clip, 1.0, optim.grad_clip / norm)
            grads = _tree_map(lambda x: x * scale, grads)
        self.optimizer.learning_rate = float(self.schedule(self._step))
        lora = self.optimizer.apply_gradients(grads, lora)
        mx.eval(lora, self.optimizer.state)
        metrics = {
            "loss": _scalar(nll / denom),
            "grad_norm": _scalar(norm),
            "tokens": _scalar(count),
        }
        return lora, self.optimizer.state, key, metrics

    def sample(self, max_new_tokens: int | None = None) -> tuple[str, str]:
        """The fixed prompt's last user message and the greedy completion (MLX, KV-cached)."""
        tok = self.tokenizer
        text = tok.render_chat(
            self._sample_messages, tools=self._sample_tools, add_generation_prompt=True
        )
        out = mm.generate(
            self.params,
            self.model_config,
            tok.encode(text),
            max_new_tokens=max_new_tokens or self.config.log.sample_max_tokens,
            stop_token_ids=tuple(tok.eos_token_ids),
            lora=self.lora,
            lora_scale=self.config.lora.scale,
        )
        users = [m for m in self._sample_messages if m["role"] == "user"]
        prompt = str(users[-1].get("content", "")) if users else text
        return prompt, tok.decode(out)

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """As `LoRATrainer.state_dict`, with NumPy copies of the MLX arrays and ``backend: mlx``."""
        return {
            "lora": mm.to_numpy(self.lora),
            "opt_state": mm.to_numpy(self.optimizer.state),
            "prng_key": np.array(self._key),
            "meta": json.dumps(self._meta(), sort_keys=True),
        }

    def load_state_dict(self, tree: Mapping[str, Any]) -> None:
        """Restores a tree made by `state_dict` (of an MLX run).

        Raises:
            ConfigError: a JAX run's checkpoint (its optimizer state is optax's), or a
                trajectory field that differs (named, as for the JAX trainer).
        """
        meta = json.loads(tree["meta"])
        self._check_resumable(meta)
        self.lora = mm.to_mlx(tree["lora"], mx.float32)
        self.optimizer.state = mm.to_mlx(tree["opt_state"])
        self.opt_state = self.optimizer.state
        self._key = mx.array(np.asarray(tree["prng_key"], dtype=np.uint32))
        self._restore_meta(meta)


def _to_device(batch: Mapping[str, Any]) -> dict[str, mx.array]:
    return {k: v if isinstance(v, mx.array) else mx.array(np.asarray(v)) for k, v in batch.items()}


def _scalar(x: mx.array) -> float:
    return float(np.array(x, dtype=np.float32))
