"""GRPO: group-relative policy optimisation of a Llama-family model, in JAX.

One step: take ``grpo.prompts_per_step`` prompts, sample ``grpo.group_size``
completions of each with the current policy (`trainsvc_lm.sample`, which also
returns each token's behaviour log-probability), score them (a shipped task's
verifiable reward, a caller's group judge, or the recorded judged rewards of
offline groups), turn the rewards into group-relative advantages
``(r - mean) / (std + eps)`` (groups whose rewards are all equal carry no signal
and are dropped), then make ``grpo.updates_per_batch`` optimizer updates of the
clipped-ratio objective::

    ratio = exp(logp - logp_behaviour)
    loss_t = -min(ratio * A, clip(ratio, 1 - eps, 1 + eps_high) * A) + beta * k3_t
    k3_t = exp(logp_ref - logp) - (logp_ref - logp) - 1

averaged over all completion tokens of the batch (``loss_norm = "token"``, DAPO)
or per sequence first (``"sequence"``, the original GRPO). Either the whole
model (``train.mode = "full"``, e.g. a digit model from scratch) or LoRA
adapters on a frozen base (``"lora"``) are trained, with optax AdamW; the update
is one jitted function.

The trainer has the LoRA trainer's surface (``step_count``, ``last_metrics``,
``run(n, should_stop)``, ``save_checkpoint(emergency)``, ``restore``,
``close``). Prompts and sampling seeds are functions of ``(train.seed, step)``,
so a run resumed from a checkpoint repeats the uninterrupted run bitwise (same
machine and library versions).

Data-parallel (``data_parallel``, see ``_distributed``): every process draws the
same ``grpo.prompts_per_step`` prompts and samples and scores its own share of the
groups, drawing what the whole batch would draw for those rows (``sample(rows=...)``);
the rewards are gathered so every process computes the same advantages, and
the jitted update, partitioned by XLA over the global mesh, averages the loss and
gradients over every group's tokens.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
import optax  # type: ignore[import-untyped]

from trainsvc_lm import _model
from trainsvc_lm._checkpointing import CheckpointFiles
from trainsvc_lm._config import ModelConfig
from trainsvc_lm._distributed import DataParallel
from trainsvc_lm._errors import ConfigError, DataError
from trainsvc_lm._grpo_config import GRPOConfig
from trainsvc_lm._lora import check_targets, init_lora
from trainsvc_lm._loss import LOSS_CHUNK_BYTES
from trainsvc_lm._sampler import SamplingConfig, sample
from trainsvc_lm._tasks import DigitVocab, Task, digit_model_config, get_task
from trainsvc_lm._train import (
    LMFrame,
    _due,
    _replicated,
    check_found,
    make_optimizer,
    run_name,
    stop_requested,
)
from trainsvc_lm._train_log import Sink, Sinks

STATE_FORMAT = "trainsvc-lm-grpo/1"

GroupReward = Callable[[Sequence[str], Sequence[str]], Sequence[float]]
"""Scores one group: ``(prompts, completions) -> rewards`` (one per completion)."""


class Vocab(Protocol):
    """Text <-> tokens for prompts and completions."""

    def encode(self, text: str) -> list[int]:
        """A prompt's tokens (with BOS where the model uses one)."""

    def encode_completion(self, text: str) -> list[int]:
        """A completion's tokens (no BOS)."""

    def decode(self, tokens: list[int] | tuple[int, ...]) -> str:
        """Text of generated tokens."""


class _TokenizerVocab:
    """A Hugging Face tokenizer as a `Vocab`."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def encode(self, text: str) -> list[int]:
        ids: list[int] = self.tokenizer.encode(text, add_special_tokens=True)
        return ids

    def encode_completion(self, text: str) -> list[int]:
        ids: list[int] = self.tokenizer.encode(text)
        return ids

    def decode(self, tokens: list[int] | tuple[int, ...]) -> str:
        text: str = self.tokenizer.decode(list(tokens))
        return text


# --------------------------------------------------------------------------- offline groups

_T = TypeVar("_T")


@dataclass(frozen=True)
class OfflineSample:
    """One recorded completion: its prompt and completion text, its (judged) reward, and
    the behaviour policy's log-probability of each completion token when it was recorded."""

    prompt: str
    completion: str
    reward: float
    logprobs: tuple[float, ...] | None = None
    messages: tuple[Mapping[str, str], ...] = ()
    """The prompt as chat messages (role, content): a model with a chat template sees
    them rendered by it, as the deployment that recorded them did."""
    stopped: bool = True
    """Whether the completion ended by itself (an OpenAI choice's ``finish_reason`` is
    ``"stop"``; a plain assistant message counts as ended), not at a length limit."""


def _message_text(item: Mapping[str, Any]) -> tuple[str, str, Any]:
    """``(role, content, logprobs)`` of an ART message or choice."""
    if _is_choice(item):
        message = item["message"]
        logprobs = item.get("logprobs")
    else:
        message, logprobs = item, None
    content = message.get("content") or ""
    if not isinstance(content, str):
        content = "".join(
            str(part.get("text", "")) for part in content if isinstance(part, Mapping)
        )
    return str(message.get("role", "")), content, logprobs


def _is_choice(item: Mapping[str, Any]) -> bool:
    return "message" in item and isinstance(item["message"], Mapping)


def groups_from_art(
    groups: Sequence[Mapping[str, Any]], source: str = "groups"
) -> list[list[OfflineSample]]:
    """Offline groups from ART trajectory groups (``model_dump()`` dicts or parsed JSON).

    A trajectory's prompt is its messages before the last assistant message (kept as
    ``messages``; ``prompt`` joins their contents by newlines), its completion that message, its reward the
    trajectory's (judged) ``reward``; token log-probs come from a choice's
    ``logprobs.content[*].logprob`` when recorded.

    Raises:
        DataError: a trajectory without an assistant message or with a non-finite reward.
    """
    out: list[list[OfflineSample]] = []
    for gi, group in enumerate(groups):
        samples = []
        for ti, traj in enumerate(group.get("trajectories", [])):
            items = [_message_text(m) for m in traj.get("messages_and_choices", [])]
            last = max(
                (i for i, (role, _, _) in enumerate(items) if role == "assistant"), default=-1
            )
            where = f"group {gi} trajectory {ti}"
            if last < 0:
                raise DataError(source, None, f"{where} has no assistant message", "messages")
            reward = float(traj.get("reward", math.nan))
            if not math.isfinite(reward):
                raise DataError(source, None, f"{where} has reward {reward}", "reward")
            _, completion, logprobs = items[last]
            recorded = None
            if isinstance(logprobs, Mapping) and logprobs.get("content"):
                recorded = tuple(float(t["logprob"]) for t in logprobs["content"])
            prompt = "\n".join(text for _, text, _ in items[:last])
            messages = tuple({"role": role, "content": text} for role, text, _ in items[:last])
            choice = traj["messages_and_choices"][last]
            stopped = not _is_choice(choice) or choice.get("finish_reason") in ("stop", None)
            samples.append(OfflineSample(prompt, completion, reward, recorded, messages, stopped))
        if samples:
            out.append(samples)
    return out


def _with_stop(values: Sequence[_T], stop: _T | None) -> list[_T]:
    """A completion's tokens (or log-probs) with its stop token's appended when it has one."""
    return [*values, stop] if stop is not None else list(values)


# --------------------------------------------------------------------------- the objective


def group_advantages(
    rewards: np.ndarray, valid: np.ndarray, eps: float
) -> tuple[np.ndarray, np.ndarray]:
    """Group-relative advantages ``(r - mean) / (std + eps)`` per row of ``rewards [groups, G]``.

    Args:
        rewards: the rewards, one row per group.
        valid: which entries are real completions (padding is ignored).
        eps: added to the (population) standard deviation.

    Returns:
        ``(advantages [groups, G], kept [groups])``: a group whose valid rewards are all
        equal (or that has fewer than two) is not kept and its advantages are 0.
    """
    r = np.where(valid, rewards, 0.0).astype(np.float64)
    n = valid.sum(axis=1)
    mean = r.sum(axis=1) / np.maximum(n, 1)
    var = (np.where(valid, (r - mean[:, None]) ** 2, 0.0)).sum(axis=1) / np.maximum(n, 1)
    std = np.sqrt(var)
    spread = np.where(valid, rewards, -np.inf).max(axis=1) - np.where(valid, rewards, np.inf).min(
        axis=1
    )
    kept = (n >= 2) & (spread > 0)
    adv = (r - mean[:, None]) / np.where(kept, std + eps, 1.0)[:, None]
    adv = np.where(valid & kept[:, None], adv, 0.0)
    return adv.astype(np.float32), kept


def grpo_loss(
    logp: jax.Array,
    behaviour_logp: jax.Array,
    ref_logp: jax.Array | None,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    epsilon: float,
    epsilon_high: float,
    beta: float,
    loss_norm: str,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The clipped GRPO objective of token log-probs ``[N, T]`` (see the module docstring).

    Args:
        logp: the current policy's log-prob of each token.
        behaviour_logp: the sampling policy's.
        ref_logp: the reference policy's (only used when ``beta > 0``).
        advantages: ``[N]``, one per sequence.
        mask: ``[N, T]``, 1 on the completion tokens that count.
        epsilon, epsilon_high: the clip range ``[1 - epsilon, 1 + epsilon_high]``.
        beta: the weight of the k3 KL estimate to the reference policy.
        loss_norm: ``"token"`` or ``"sequence"``.

    Returns:
        ``(loss, metrics)`` with metrics ``kl`` (mean k3 per token), ``clip_fraction``
        (share of tokens whose clipped term was the smaller one) and ``ratio_mean``.
    """
    mask = mask.astype(jnp.float32)
    ratio = jnp.exp(logp - behaviour_logp)
    adv = advantages[:, None]
    unclipped = ratio * adv
    clipped = jnp.clip(ratio, 1.0 - epsilon, 1.0 + epsilon_high) * adv
    per_token = -jnp.minimum(unclipped, clipped)
    if ref_logp is not None:
        delta = ref_logp - logp
        kl = jnp.exp(delta) - delta - 1.0
    else:
        kl = jnp.zeros_like(logp)
    if beta > 0:
        per_token = per_token + beta * kl
    tokens = jnp.maximum(jnp.sum(mask), 1.0)
    if loss_norm == "token":
        loss = jnp.sum(per_token * mask) / tokens
    else:
        lengths = jnp.sum(mask, axis=1)
        per_seq = jnp.sum(per_token * mask, axis=1) / jnp.maximum(lengths, 1.0)
        loss = jnp.sum(per_seq) / jnp.maximum(jnp.sum(lengths > 0), 1.0)
    was_clipped = (clipped < unclipped).astype(jnp.float32)
    metrics = {
        "kl": jnp.sum(kl * mask) / tokens,
        "clip_fraction": jnp.sum(was_clipped * mask) / tokens,
        "ratio_mean": jnp.sum(ratio * mask) / tokens,
    }
    return loss, metrics


def token_logprobs(
    params: Mapping[str, Any], config: ModelConfig, hidden: jax.Array, targets: jax.Array
) -> jax.Array:
    """``log p(target)`` at every position of final-norm ``hidden [B, T, D]`` (float32 ``[B, T]``).

    Like the LoRA trainer's loss, the logits are made a chunk of positions at a time
    (`LOSS_CHUNK_BYTES`) and recomputed in the backward pass.
    """
    b, t, d = hidden.shape
    n = b * t
    chunk = max(1, min(n, LOSS_CHUNK_BYTES // (4 * config.vocab_size)))
    pad = (-n) % chunk
    h = jnp.pad(hidden.reshape(n, d), ((0, pad), (0, 0)))
    tg = jnp.pad(jnp.maximum(targets.reshape(n), 0), (0, pad))

    @jax.checkpoint
    def one(xs: tuple[jax.Array, jax.Array]) -> jax.Array:
        hc, tc = xs
        logits = _model.logits_from_hidden(dict(params), config, hc)
        picked = jnp.take_along_axis(logits, tc[:, None], axis=-1)[:, 0]
        return picked - jax.nn.logsumexp(logits, axis=-1)

    out: jax.Array = jax.lax.map(one, (h.reshape(-1, chunk, d), tg.reshape(-1, chunk)))
    return out.reshape(-1)[:n].reshape(b, t)


# --------------------------------------------------------------------------- the trainer


@dataclass(frozen=True)
class _Rollout:
    """One step's sampled (or recorded) batch, on the host."""

    prompts: list[str]
    completions: list[str]
    prompt_tokens: list[list[int]]
    completion_tokens: list[list[int]]
    behaviour: list[list[float] | None]
    rewards: np.ndarray  # [groups, G]
    valid: np.ndarray  # [groups, G]


class GRPOTrainer(CheckpointFiles):
    """Trains a policy with GRPO; one :meth:`step` is one sampled batch and its updates.

    Args:
        config: the run.
        frame_callback: receives an `LMFrame` every ``log.frame_interval`` steps, with
            metrics ``reward_mean``, ``reward_std``, ``kl``, ``clip_fraction``,
            ``train_loss``, ``learning_rate``, ``tokens_per_s``, ``groups_kept`` and, at
            evaluation steps, ``eval_reward`` (mean reward of greedy completions of
            held-out prompts), and the latest sample completion.
        sinks: where metrics and messages go.
        reward_fn: scores a group when ``data.reward = "judge"`` (e.g. a
            ``trainsvc_trajectories`` judge); the task's verifiable reward otherwise.
        offline_groups: the recorded groups when ``data.offline_file`` is set (read
            and judged by the caller, e.g. with `groups_from_art`).
        data_parallel: train data-parallel across the processes of a
            ``jax.distributed`` run (``grpo.prompts_per_step`` groups split evenly);
            None (the default): when there is more than one process. Every process
            then makes the same calls in the same order; process 0 writes the
            checkpoints and is the only one that evaluates, samples and logs.

    Raises:
        ConfigError, DataError, ModelLoadError: bad input, named.
    """

    trainer_kind = "grpo"

    backend = "jax"

    def __init__(
        self,
        config: GRPOConfig,
        frame_callback: Callable[[LMFrame], None] | None = None,
        *,
        sinks: Sequence[Sink] | None = None,
        reward_fn: GroupReward | None = None,
        offline_groups: Sequence[Sequence[OfflineSample]] | None = None,
        data_parallel: bool | None = None,
    ) -> None:
        self.config = config
        if data_parallel is None:
            data_parallel = jax.process_count() > 1
        self._dp = (
            DataParallel(config.grpo.prompts_per_step, "grpo.prompts_per_step")
            if data_parallel
            else None
        )
        self.frame_callback = frame_callback
        self.sinks = Sinks(sinks or ())
        data = config.data
        self.task: Task | None = None if data.task is None else get_task(data.task)
        if data.reward == "judge" and reward_fn is None:
            raise ConfigError("data.reward", "is 'judge' but no judge (reward_fn) was given")
        self.reward_fn = reward_fn
        if data.offline_file is not None and not offline_groups:
            raise ConfigError(
                "data.offline_file", "no groups were given (read and judge them first)"
            )
        key = jax.random.PRNGKey(config.train.seed)
        init_key, lora_key = jax.random.split(key)
        self.vocab: Vocab
        if config.model.dir is None:
            m = config.model
            self.model_config = digit_model_config(
                hidden_size=m.hidden_size,
                num_layers=m.num_layers,
                num_heads=m.num_heads,
                intermediate_size=m.intermediate_size,
            )
            params = _model.init_params(self.model_config, init_key)
            self.vocab = DigitVocab()
            self._stop: tuple[int, ...] | None = ()
        else:
            from trainsvc_lm._tokenizer import Tokenizer
            from trainsvc_lm._weights import load_model

            dtype = None if config.model.dtype == "auto" else config.model.dtype
            devices = None if self._dp is None else jax.local_devices()[:1]
            self.model_config, params = load_model(config.model.dir, dtype=dtype, devices=devices)
            self.vocab = _TokenizerVocab(Tokenizer.from_dir(config.model.dir))
            self._stop = None
        self.offline = [list(g) for g in offline_groups or []]
        self.optimizer = make_optimizer(config.optim, config.train.steps)
        self.full = config.train.mode == "full"
        if self.full:
            trainable: Any = params
            self.frozen: Any = {}
        else:
            check_targets(config.lora, self.model_config)
            trainable = init_lora(config.lora, self.model_config, lora_key)
            self.frozen = self._place(params)
        self.reference = self._place(params)  # the initial policy (KL, recomputed behaviour)
        self.trainable, self.opt_state = self._place((trainable, self.optimizer.init(trainable)))
        self._update = self._make_update()
        self._logps = jax.jit(self._policy_logp)
        self.offline_behaviour = self._recompute_behaviour()
        self._step = 0
        self.tokens_sampled = 0
        self.run_id = uuid.uuid4().hex[:16]
        self.run_name = run_name(
            config.log.name, "cpu" if jax.default_backend() == "cpu" else "gpu"
        )
        self.last_metrics: dict[str, float] = {}
        self.last_sample: tuple[str, str] | None = None
        self._manager: Any = None

    # ------------------------------------------------------------------ the policy

    @property
    def max_new_tokens(self) -> int:
        """Tokens sampled per completion."""
        if self.config.grpo.max_new_tokens is not None:
            return self.config.grpo.max_new_tokens
        return self.task.max_new_tokens if self.task is not None else 64

    def _compute_dtype(self) -> Any:
        name = self.config.train.compute_dtype
        return None if name == "auto" else jnp.dtype(name)

    def _policy_logp(
        self, trainable: Any, frozen: Any, tokens: jax.Array, positions: jax.Array
    ) -> jax.Array:
        """Log-probs ``[N, T-1]`` of ``tokens[:, 1:]`` under the policy (full params or LoRA)."""
        if self.full:
            params, lora = trainable, None
        else:
            params, lora = frozen, trainable
        hidden = _model.hidden_states(
            params,
            self.model_config,
            tokens[:, :-1],
            positions=positions[:, :-1],
            lora=lora,
            lora_scale=self.config.lora.scale,
            compute_dtype=self._compute_dtype(),
        )
        return token_logprobs(params, self.model_config, hidden, tokens[:, 1:])

    def _make_update(self) -> Callable[..., Any]:
        grpo, optimizer = self.config.grpo, self.optimizer
        eps_high = grpo.epsilon if grpo.epsilon_high is None else grpo.epsilon_high
        use_ref = grpo.beta > 0

        def update(
            trainable: Any, opt_state: Any, frozen: Any, reference: Any, batch: Mapping[str, Any]
        ) -> tuple[Any, Any, dict[str, jax.Array]]:
            tokens, positions = batch["tokens"], batch["positions"]
            ref = None
            if use_ref:
                ref_params = frozen if not self.full else reference
                ref_tr = reference if self.full else jax.tree.map(jnp.zeros_like, trainable)
                ref = jax.lax.stop_gradient(
                    self._policy_logp(ref_tr, ref_params, tokens, positions)
                )

            def loss_fn(tr: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
                logp = self._policy_logp(tr, frozen, tokens, positions)
                return grpo_loss(
                    logp,
                    batch["behaviour"],
                    ref,
                    batch["advantages"],
                    batch["mask"],
                    epsilon=grpo.epsilon,
                    epsilon_high=eps_high,
                    beta=grpo.beta,
                    loss_norm=grpo.loss_norm,
                )

            (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
            updates, opt_state = optimizer.update(grads, opt_state, trainable)
            trainable = optax.apply_updates(trainable, updates)
            metrics = {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}
            return trainable, opt_state, metrics

        if self._dp is None:
            return jax.jit(update)
        rep = self._dp.replicated
        return jax.jit(update, out_shardings=(rep, rep, rep))

    def _place(self, tree: Any) -> Any:
        """Host arrays of replicated state as the jitted update takes them (on every device)."""
        return _replicated(tree) if self._dp is None else self._dp.replicate(tree)

    def _local(self, tree: Any) -> Any:
        """Replicated state as this process alone computes with it (sampling, evaluation)."""
        return tree if self._dp is None else self._dp.local(tree)

    def _sample_policy(
        self,
        prompts: list[list[int]],
        seed: int,
        greedy: bool,
        rows: tuple[int, int] | None = None,
    ) -> list[Any]:
        sampling = SamplingConfig(
            max_new_tokens=self.max_new_tokens,
            temperature=0.0 if greedy else self.config.grpo.temperature,
            stop_token_ids=self._stop,
            seed=seed,
        )
        params, lora = (self.trainable, None) if self.full else (self.frozen, self.trainable)
        params, lora = self._local((params, lora))
        return sample(
            params,
            self.model_config,
            prompts,
            sampling,
            lora=lora,
            lora_scale=self.config.lora.scale,
            compute_dtype=self._compute_dtype(),
            rows=rows,
        )

    # ------------------------------------------------------------------ batches

    def _pack(
        self,
        prompt_tokens: Sequence[list[int]],
        completion_tokens: Sequence[list[int]],
        width: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Right-padded ``tokens``, ``positions`` and the completion ``mask`` (target-aligned).

        ``width``: the padded length (default: :func:`pack_width` of the rows').
        """
        width = width or pack_width(prompt_tokens, completion_tokens)
        n = len(prompt_tokens)
        tokens = np.zeros((n, width), np.int32)
        mask = np.zeros((n, width - 1), np.float32)
        for i, (p, c) in enumerate(zip(prompt_tokens, completion_tokens, strict=True)):
            tokens[i, : len(p) + len(c)] = p + c
            mask[i, len(p) - 1 : len(p) - 1 + len(c)] = 1.0
        positions = np.broadcast_to(np.arange(width, dtype=np.int32), (n, width)).copy()
        return tokens, positions, mask

    def _recompute_behaviour(self) -> list[list[list[float]]]:
        """Behaviour log-probs of offline samples that were recorded without them.

        They are recomputed under the initial policy (the model the run starts from,
        which is the one that generated the recorded groups).
        """
        out: list[list[list[float]]] = []
        ref_trainable = self.reference if self.full else self.trainable
        ref_trainable, frozen = self._local((ref_trainable, self.frozen))
        for group in self.offline:
            prompts = [self._offline_prompt_tokens(s) for s in group]
            comps = [self._offline_completion_tokens(s) for s in group]
            for i, s in enumerate(group):
                n_stop = 1 if s.stopped and self._learns_to_stop() else 0
                if s.logprobs is not None and len(s.logprobs) not in (
                    len(comps[i]),
                    len(comps[i]) - n_stop,
                ):
                    raise DataError(
                        "offline groups",
                        None,
                        f"{len(s.logprobs)} recorded log-probs for {len(comps[i])} tokens",
                        "logprobs",
                    )
            tokens, positions, mask = self._pack(prompts, comps)
            logp = np.asarray(self._logps(ref_trainable, frozen, tokens, positions))
            rows = []
            for i, s in enumerate(group):
                recomputed = logp[i][mask[i] > 0].tolist()
                if s.logprobs is not None:  # the stop token's may be missing: recomputed
                    rows.append(list(s.logprobs) + recomputed[len(s.logprobs) :])
                else:
                    rows.append(recomputed)
            out.append(rows)
        return out

    def _offline_prompt_tokens(self, sample_: OfflineSample) -> list[int]:
        """A recorded prompt's tokens: its messages through the model's chat template when
        it has one (as the deployment rendered them), else the prompt text."""
        if isinstance(self.vocab, _TokenizerVocab) and sample_.messages:
            tokenizer = self.vocab.tokenizer
            if tokenizer.chat_templates:
                text = tokenizer.render_chat(list(sample_.messages), add_generation_prompt=True)
                ids: list[int] = tokenizer.encode(text)
                return ids
        return self.vocab.encode(sample_.prompt)

    def _learns_to_stop(self) -> bool:
        """Whether completions end with a stop token the policy must learn to emit: a
        model with a tokenizer stops at its EOS; digit tasks have fixed lengths."""
        return self._stop is None and bool(self.model_config.eos_token_ids)

    def _offline_completion_tokens(self, sample_: OfflineSample) -> list[int]:
        """A recorded completion's tokens, ending with the EOS when it ended by itself."""
        ids = self.vocab.encode_completion(sample_.completion)
        if sample_.stopped and self._learns_to_stop():
            assert isinstance(self.vocab, _TokenizerVocab)
            ids.append(self.vocab.tokenizer.eos_token_ids[0])
        return ids

    def _sampling_seed(self, step: int, salt: int = 0) -> int:
        return (self.config.train.seed * 1_000_003 + step * 7919 + salt) % (2**31 - 1)

    def _groups(self) -> slice:
        """This process's share of a step's ``grpo.prompts_per_step`` groups (all of them
        in a single-process run)."""
        p = self.config.grpo.prompts_per_step
        return slice(0, p) if self._dp is None else self._dp.local_rows(p)

    def _online_rollout(self, step: int) -> _Rollout:
        assert self.task is not None
        g = self.config.grpo.group_size
        rng = np.random.default_rng([self.config.train.seed, step])
        share = self._groups()
        unique = self.task.train_prompts(rng, self.config.grpo.prompts_per_step)[share]
        p = len(unique)
        prompts = [text for text in unique for _ in range(g)]
        prompt_tokens = [self.vocab.encode(text) for text in prompts]
        # data-parallel: this process's rows of the whole batch, drawn as the whole would
        total = self.config.grpo.prompts_per_step * g
        rows = None if self._dp is None else (share.start * g, total)
        results = self._sample_policy(prompt_tokens, self._sampling_seed(step), False, rows)
        completions = [self.vocab.decode(r.tokens) for r in results]
        rewards = np.zeros((p, g), np.float64)
        for gi in range(p):
            group = slice(gi * g, (gi + 1) * g)
            rewards[gi] = self._score(prompts[group], completions[group])
        return _Rollout(
            prompts,
            completions,
            prompt_tokens,
            [_with_stop(r.tokens, r.stop_token) for r in results],
            [_with_stop(r.logprobs, r.stop_logprob) for r in results],
            rewards,
            np.ones((p, g), bool),
        )

    def _score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        if self.reward_fn is not None and self.config.data.reward == "judge":
            scores = [float(x) for x in self.reward_fn(prompts, completions)]
        else:
            assert self.task is not None
            scores = [self.task.reward(a, b) for a, b in zip(prompts, completions, strict=True)]
        if len(scores) != len(completions) or not all(math.isfinite(s) for s in scores):
            raise DataError("reward", None, f"the judge returned {scores!r}", "reward")
        return scores

    def _offline_rollout(self, step: int) -> _Rollout:
        p = self.config.grpo.prompts_per_step
        g = max(len(group) for group in self.offline)
        n = len(self.offline)
        start = step * p
        chosen = []
        share = self._groups()
        for k in range(start + share.start, start + share.stop):
            epoch, index = divmod(k, n)
            order = np.random.default_rng([self.config.train.seed, epoch]).permutation(n)
            chosen.append(int(order[index]))
        prompts, completions, prompt_tokens, completion_tokens, behaviour = [], [], [], [], []
        rewards = np.zeros((len(chosen), g), np.float64)
        valid = np.zeros((len(chosen), g), bool)
        for gi, index in enumerate(chosen):
            group = self.offline[index]
            for j in range(g):
                s = group[j] if j < len(group) else group[0]
                prompts.append(s.prompt)
                prompt_tokens.append(self._offline_prompt_tokens(s))
                completion_tokens.append(self._offline_completion_tokens(s))
                completions.append(s.completion)
                behaviour.append(self.offline_behaviour[index][j if j < len(group) else 0])
                rewards[gi, j] = s.reward
                valid[gi, j] = j < len(group)
        return _Rollout(
            prompts,
            completions,
            prompt_tokens,
            completion_tokens,
            list(behaviour),
            rewards,
            valid,
        )

    # ------------------------------------------------------------------ training

    @property
    def step_count(self) -> int:
        """Optimizer steps (sampled batches) done so far."""
        return self._step

    @property
    def remaining_steps(self) -> int:
        """Steps left until ``train.steps``."""
        return max(0, self.config.train.steps - self._step)

    def step(self) -> dict[str, float]:
        """Samples (or takes) one batch of groups and makes its updates; returns its metrics.

        Metrics: ``reward_mean``, ``reward_std`` (over the batch), ``groups_kept`` (share
        of groups with a reward spread), ``loss``, ``kl``, ``clip_fraction``,
        ``grad_norm`` (of the last update), ``lr``, ``tok_s`` (completion tokens sampled
        and trained per second), ``sample_s`` and ``train_s``.
        """
        start = time.perf_counter()
        rollout = (
            self._offline_rollout(self._step) if self.offline else self._online_rollout(self._step)
        )
        sampled = time.perf_counter()
        width = pack_width(rollout.prompt_tokens, rollout.completion_tokens)
        completion_tokens = sum(len(c) for c in rollout.completion_tokens)
        dp = self._dp
        try:
            rewards, valid = rollout.rewards, rollout.valid
            if dp is not None:  # every process: the whole batch's rewards, the widest row
                rewards, valid = dp.gather_rows(rewards), dp.gather_rows(valid)
                widths, counts = dp.gather_ints([width, completion_tokens]).T
                width, completion_tokens = int(widths.max()), int(counts.sum())
            adv, kept = group_advantages(rewards, valid, self.config.grpo.std_eps)
            share = self._groups()
            tokens, positions, mask = self._pack(
                rollout.prompt_tokens, rollout.completion_tokens, width
            )
            behaviour = np.zeros_like(mask)
            for i, row in enumerate(rollout.behaviour):
                assert row is not None
                behaviour[i][mask[i] > 0] = row
            g = rewards.shape[1]
            keep_rows = np.repeat(kept[share], g) & valid[share].reshape(-1)
            mask = mask * keep_rows[:, None]
            lr = float(make_schedule_value(self.config, self._step))
            metrics: dict[str, float] = {
                "loss": 0.0,
                "kl": 0.0,
                "clip_fraction": 0.0,
                "grad_norm": 0.0,
            }
            if kept.any():
                batch: Any = {
                    "tokens": tokens,
                    "positions": positions,
                    "mask": mask,
                    "behaviour": behaviour,
                    "advantages": adv[share].reshape(-1),
                }
                if dp is not None:
                    batch = dp.shard_local(batch)
                for _ in range(self.config.grpo.updates_per_batch):
                    self.trainable, self.opt_state, out = self._update(
                        self.trainable, self.opt_state, self.frozen, self.reference, batch
                    )
                metrics = {k: float(v) for k, v in jax.device_get(out).items()}
        except Exception as exc:
            if dp is None:
                raise
            raise dp.failed(self._step + 1, exc) from exc
        done = time.perf_counter()
        self.tokens_sampled += completion_tokens
        self._step += 1
        valid_rewards = rewards[valid]
        metrics.update(
            reward_mean=float(valid_rewards.mean()),
            reward_std=float(valid_rewards.std()),
            groups_kept=float(np.mean(kept)),
            lr=lr,
            tok_s=2 * completion_tokens / max(done - start, 1e-9),
            sample_s=sampled - start,
            train_s=done - sampled,
        )
        self.last_metrics = metrics
        self._last_rollout = rollout
        return metrics

    def evaluate(self, n: int | None = None) -> float | None:
        """Mean verifiable reward of greedy completions of the task's held-out prompts.

        None for offline runs (they have no task to score new samples with).
        """
        if self.task is None:
            return None
        prompts = self.task.eval_prompts(n or self.config.data.eval_prompts)
        results = self._sample_policy([self.vocab.encode(p) for p in prompts], 0, greedy=True)
        rewards = [
            self.task.reward(p, self.vocab.decode(r.tokens))
            for p, r in zip(prompts, results, strict=True)
        ]
        return float(np.mean(rewards))

    def sample(self) -> tuple[str, str]:
        """A held-out prompt (or the last batch's first prompt) and its greedy completion."""
        if self.task is not None:
            prompt = self.task.eval_prompts(1)[0]
        else:
            prompt = self.offline[0][0].prompt
        result = self._sample_policy([self.vocab.encode(prompt)], 0, greedy=True)[0]
        return prompt, self.vocab.decode(result.tokens)

    def run(self, n: int | None = None, should_stop: Callable[[], bool] | None = None) -> int:
        """Runs up to ``n`` steps (default: until ``train.steps``); returns the steps done.

        Between steps it checks ``should_stop()``; evaluations, samples, console lines,
        frames and checkpoints follow ``log.*`` intervals (and always happen at the end).
        """
        todo = self.remaining_steps if n is None else n
        log = self.config.log
        done = 0
        try:
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
                    value = self.evaluate()
                    if value is not None:
                        metrics["eval_reward"] = value
                sample_ = None
                if _due(step, log.sample_interval, final):
                    sample_ = self.sample()
                    self.last_sample = sample_
                    self.sinks.message(f"sample step={step} completion={json.dumps(sample_[1])}")
                if _due(step, log.log_interval, final):
                    self.sinks.log(step, metrics)
                if _due(step, log.frame_interval, final):
                    self._publish(metrics, sample_)
                if final or _due(step, log.save_interval, final):
                    self.save_checkpoint()
        finally:
            self.sinks.close()
        return done

    def _publish(self, metrics: Mapping[str, float], sample_: tuple[str, str] | None) -> None:
        if self.frame_callback is None:
            return
        names = {"loss": "train_loss", "lr": "learning_rate", "tok_s": "tokens_per_s"}
        keep = (
            "reward_mean",
            "reward_std",
            "kl",
            "clip_fraction",
            "groups_kept",
            "eval_reward",
            "loss",
            "lr",
            "tok_s",
        )
        values = {names.get(k, k): float(metrics[k]) for k in keep if k in metrics}
        frame = LMFrame(
            self._step,
            time.time(),
            values,
            sample_prompt=sample_[0] if sample_ else None,
            sample_completion=sample_[1] if sample_ else None,
        )
        try:
            self.frame_callback(frame)
        except Exception as exc:  # a dashboard problem must not stop training
            self.sinks.message(f"frame callback failed at step {self._step}: {exc!r}")

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Arrays ``trainable`` (the full params or the adapters) and ``opt_state``, and
        ``meta`` (JSON: format, step, config, run id and name, tokens sampled).
        Data-parallel: this process's whole copies of the arrays, as NumPy arrays."""
        meta = {
            "format": STATE_FORMAT,
            "backend": self.backend,
            "step": self._step,
            "config": self.config.to_dict(),
            "run_id": self.run_id,
            "run_name": self.run_name,
            "tokens_sampled": self.tokens_sampled,
        }
        arrays = {"trainable": self.trainable, "opt_state": self.opt_state}
        if self._dp is not None:
            arrays = jax.tree.map(np.asarray, self._dp.local(arrays))
        return {**arrays, "meta": json.dumps(meta, sort_keys=True)}

    def load_state_dict(self, tree: Mapping[str, Any]) -> None:
        """Restores a tree made by :meth:`state_dict`.

        Raises:
            ConfigError: not a GRPO state, or trained with another value of a field that
                changes the trajectory (named).
        """
        meta = json.loads(tree["meta"])
        if meta.get("format") != STATE_FORMAT:
            raise ConfigError(
                "train.resume_from",
                f"not a GRPO trainer state: format {meta.get('format')!r}, expected {STATE_FORMAT!r}",
            )
        saved = GRPOConfig.from_dict(meta["config"])
        dotted = self.config.mismatch(saved)
        if dotted is not None:
            section, name = dotted.split(".", 1)
            raise ConfigError(
                dotted,
                f"the checkpoint was trained with {saved.to_dict()[section][name]!r}, this run "
                f"has {self.config.to_dict()[section][name]!r}; resume with the checkpoint's value",
            )
        template = {"trainable": self.trainable, "opt_state": self.opt_state}
        struct = jax.tree.structure(template)
        leaves, got = jax.tree.flatten({k: tree[k] for k in template})
        if str(got) != str(struct):
            raise ConfigError(
                "train.resume_from", f"the checkpoint's state does not match this run: {got}"
            )
        if self._dp is not None:
            self._dp.check_same(int(meta["step"]), "the step of the checkpoint restored")
        restored = self._place(jax.tree.unflatten(struct, [np.asarray(x) for x in leaves]))
        self.trainable, self.opt_state = restored["trainable"], restored["opt_state"]
        self._step = int(meta["step"])
        self.tokens_sampled = int(meta["tokens_sampled"])
        self.run_id, self.run_name = str(meta["run_id"]), str(meta["run_name"])

    def run_config(self) -> GRPOConfig:
        """The run's config."""
        return self.config

    def restore(self, source: str | Path = "latest") -> Path | None:
        """Restores a checkpoint file, or the newest valid one with ``"latest"`` (None: none).

        Raises:
            ConfigError: a trajectory field differs from the checkpoint's (named).
            trainsvc_checkpoint.CheckpointError: a missing, corrupt or incompatible file.
        """
        template = self.state_dict()
        if str(source) == "latest":
            found = bool(self.checkpoint_manager.checkpoints())
            check_found(self._dp, found)
            if not found:
                return None
            restored = self.checkpoint_manager.restore_checkpoint(target=template)
            tree, path = restored.tree, Path(restored.path)
        else:
            from trainsvc_checkpoint import load

            path = Path(source)
            check_found(self._dp, True)
            tree = load(path, target=template)
        self.load_state_dict(tree)
        return path

    def save_pretrained(self, model_dir: str | Path) -> Path:
        """Writes the current policy as a complete Hugging Face model directory.

        Full fine-tuning writes the trained weights, LoRA the base with the adapters
        merged in. The tokenizer files come from ``model.dir``, or, for a digit model
        trained from scratch, are generated (`write_digit_tokenizer`), so the
        directory can be the ``model.dir`` of the next run (e.g. an offline run on the
        groups this policy's deployment recorded) or of a `load_model` call.
        """
        from trainsvc_lm._peft import TOKENIZER_FILES
        from trainsvc_lm._tasks import write_digit_tokenizer
        from trainsvc_lm._weights import save_model

        out = Path(model_dir)
        trainable, frozen = self._local((self.trainable, self.frozen))
        if self.full:
            params = trainable
        else:
            from trainsvc_lm._lora import merge_lora

            params = merge_lora(frozen, trainable, self.config.lora.scale)
        save_model(out, self.model_config, params)
        if self.config.model.dir is None:
            write_digit_tokenizer(out)
        else:
            for name in TOKENIZER_FILES:
                src = Path(self.config.model.dir) / name
                if src.is_file():
                    (out / name).write_bytes(src.read_bytes())
        return out

    def close(self) -> None:
        """Waits for pending checkpoint writes and closes the sinks."""
        self.sinks.close()
        self.close_checkpoints()


def pack_width(prompt_tokens: Sequence[list[int]], completion_tokens: Sequence[list[int]]) -> int:
    """The padded length of a batch's rows: the longest prompt + completion, rounded up to 8."""
    lengths = [len(p) + len(c) for p, c in zip(prompt_tokens, completion_tokens, strict=True)]
    return max(8, -(-max(lengths) // 8) * 8)


def make_schedule_value(config: GRPOConfig, step: int) -> float:
    """The learning rate of update ``step`` (the LoRA trainer's warm-up + cosine schedule)."""
    from trainsvc_lm._train import learning_rate_schedule

    return float(learning_rate_schedule(config.optim, config.train.steps)(step))


__all__ = [
    "GRPOTrainer",
    "GroupReward",
    "OfflineSample",
    "group_advantages",
    "groups_from_art",
    "grpo_loss",
    "token_logprobs",
]
