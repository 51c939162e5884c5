"""Shipped GRPO tasks with verifiable rewards, and the digit vocabulary they use.

A task makes prompts (text) with their answers and scores a completion (text)
against the answer in [0, 1]. The shipped tasks work on four digits:

- ``sort4``: ``"3141>"`` -> ``"1134"`` (the digits in ascending order);
- ``increment4``: ``"3149>"`` -> ``"4250"`` (each digit plus one, modulo 10).

The reward is the fraction of the answer's positions the completion gets right
(a completion of another length loses the missing or extra positions), so a
uniformly random policy scores about 0.08 and a perfect one 1.

Models trained from scratch on these tasks use :class:`DigitVocab`: one token per
character ``0``-``9`` and ``>``, plus end-of-sequence and beginning-of-sequence
tokens. No JAX import here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainsvc_lm._config import ModelConfig
from trainsvc_lm._errors import ConfigError

DIGITS = "0123456789"
SEPARATOR = ">"


class DigitVocab:
    """Character-level tokens for digit tasks: ``0``-``9`` are 0-9, ``>`` is 10, EOS 11, BOS 12."""

    chars = DIGITS + SEPARATOR
    eos_id = len(chars)
    bos_id = len(chars) + 1
    size = len(chars) + 2

    def encode(self, text: str) -> list[int]:
        """BOS then one token per character.

        Raises:
            ConfigError: (field ``prompt``) a character outside ``0-9`` and ``>``.
        """
        bad = [c for c in text if c not in self.chars]
        if bad:
            raise ConfigError("prompt", f"character {bad[0]!r} is not in the digit vocabulary")
        return [self.bos_id] + [self.chars.index(c) for c in text]

    def encode_completion(self, text: str) -> list[int]:
        """The tokens of a completion (no BOS); unknown characters are refused."""
        return self.encode(text)[1:]

    def decode(self, tokens: list[int] | tuple[int, ...]) -> str:
        """The characters of ``tokens``; EOS, BOS and out-of-range tokens are dropped."""
        return "".join(self.chars[t] for t in tokens if 0 <= t < len(self.chars))


def write_digit_tokenizer(model_dir: str | Path) -> list[Path]:
    """Write :class:`DigitVocab` as ``tokenizer.json`` and ``tokenizer_config.json``.

    A digit model saved with ``save_model`` plus these files is an ordinary Hugging
    Face model directory: `Tokenizer.from_dir` encodes a prompt to the same ids as
    :meth:`DigitVocab.encode` (BOS first) and decodes without separators. A character
    outside the vocabulary encodes as EOS (the tokenizer's unknown token).

    Returns:
        The files written.
    """
    import tokenizers
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors

    eos, bos = "</s>", "<s>"
    vocab = {c: i for i, c in enumerate(DigitVocab.chars)}
    vocab[eos], vocab[bos] = DigitVocab.eos_id, DigitVocab.bos_id
    tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token=eos))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), "isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(eos, special=True), AddedToken(bos, special=True)])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, DigitVocab.bos_id)]
    )
    root = Path(model_dir)
    root.mkdir(parents=True, exist_ok=True)
    tok.save(str(root / "tokenizer.json"))
    config = {"bos_token": bos, "eos_token": eos, "add_bos_token": False}
    (root / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return [root / "tokenizer.json", root / "tokenizer_config.json"]


def digit_model_config(
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 128,
) -> ModelConfig:
    """A tiny Llama-family architecture over :class:`DigitVocab` (for training from scratch)."""
    if hidden_size % num_heads:
        raise ConfigError(
            "model.hidden_size", f"must be a multiple of model.num_heads ({num_heads})"
        )
    return ModelConfig(
        family="llama",
        vocab_size=DigitVocab.size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=64,
        bos_token_id=DigitVocab.bos_id,
        eos_token_ids=(DigitVocab.eos_id,),
    )


def position_reward(completion: str, answer: str) -> float:
    """The fraction of positions of the longer of the two strings where they agree."""
    width = max(len(completion), len(answer), 1)
    return sum(a == b for a, b in zip(completion, answer, strict=False)) / width


@dataclass(frozen=True)
class Task:
    """A prompt generator with a verifiable reward.

    Attributes:
        name: the task's name in configs (``grpo.task``).
        description: one line for help texts.
        answer: the correct completion of a prompt's digits.
        width: digits per prompt (and per answer).
        held_out: prompts (of all ``10**width``) kept for evaluation, never trained on.
    """

    name: str
    description: str
    answer_of: Callable[[str], str]
    width: int = 4
    held_out: int = 1000

    @property
    def max_new_tokens(self) -> int:
        """Tokens a completion needs: the answer's length."""
        return self.width

    def prompt_text(self, digits: str) -> str:
        """The prompt for ``digits``: the digits then ``>``."""
        return digits + SEPARATOR

    def digits_of(self, prompt: str) -> str:
        """The digits of a prompt made by :meth:`prompt_text`."""
        return prompt.removesuffix(SEPARATOR)

    def reward(self, prompt: str, completion: str) -> float:
        """The verifiable reward of ``completion`` for ``prompt``: positions right, in [0, 1]."""
        return position_reward(completion, self.answer_of(self.digits_of(prompt)))

    def _split(self) -> tuple[np.ndarray, np.ndarray]:
        order = np.random.default_rng(20_261_202).permutation(10**self.width)
        return order[self.held_out :], order[: self.held_out]

    def _text(self, number: int) -> str:
        return str(int(number)).zfill(self.width)

    def train_prompts(self, rng: np.random.Generator, n: int) -> list[str]:
        """``n`` prompts drawn (with replacement) from the training split."""
        train, _ = self._split()
        return [self.prompt_text(self._text(x)) for x in rng.choice(train, size=n)]

    def eval_prompts(self, n: int) -> list[str]:
        """The first ``n`` held-out prompts (always the same ones)."""
        _, held = self._split()
        return [self.prompt_text(self._text(x)) for x in held[:n]]


def _sort(digits: str) -> str:
    return "".join(sorted(digits))


def _increment(digits: str) -> str:
    return "".join(str((int(c) + 1) % 10) for c in digits)


TASKS: dict[str, Task] = {
    "sort4": Task("sort4", "sort four digits ascending: 3141> -> 1134", _sort),
    "increment4": Task("increment4", "add one to each of four digits: 3149> -> 4250", _increment),
}
"""The shipped tasks by name."""


def get_task(name: str, field: str = "data.task") -> Task:
    """The shipped task ``name``.

    Raises:
        ConfigError: an unknown name (``field`` named, the shipped ones listed).
    """
    if name not in TASKS:
        raise ConfigError(field, f"unknown task {name!r}; shipped: {', '.join(TASKS)}")
    return TASKS[name]
