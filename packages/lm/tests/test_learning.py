"""Learning works, measured: LoRA-SFT teaches a tiny pretrained base an unknown tool-call format.

The base is ``init_tiny`` + a short full-parameter pretraining on the bundled text
(`cached_tiny_model`, built once per machine under the user cache). It has never seen
"weather in <city> in <unit>" answered by a ``get_weather`` tool call. A LoRA run of a
few hundred steps teaches it; exact match is measured with greedy decoding on held-out
prompts, through the JAX sampler with the adapter and through an independent NumPy
forward pass of the HF weights merged with the exported PEFT file.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file
from trainsvc_lm._pretrain import cached_tiny_model
from trainsvc_lm._sampler import SamplingConfig, generate
from trainsvc_lm._tiny import corpus_text
from trainsvc_lm._tokenizer import Tokenizer
from trainsvc_lm._train import LoRATrainer
from trainsvc_lm._train_config import LMTrainConfig
from trainsvc_lm._weights import load_model, params_to_hf

sys.path.insert(0, str(Path(__file__).parent))
from _reference import reference_logits

pytestmark = pytest.mark.slow(55)

UNITS = ("celsius", "fahrenheit", "kelvin")
BUDGET_S = 300.0


def corpus_cities() -> list[str]:
    """The cities the bundled text names often (the base model knows their tokens)."""
    text = corpus_text()
    counts = Counter(re.findall(r"(?:in|from|to|for) ([A-Z][a-z]+(?: [A-Z][a-z]+)?)", text))
    people = set(re.findall(r"([A-Z][a-z]+) (?:lives|likes|flies)", text))
    return sorted(
        k for k, n in counts.items() if n >= 8 and k not in people | {"Question", "Answer", "The"}
    )


def conversation(city: str, unit: str) -> list[dict[str, Any]]:
    call = {"name": "get_weather", "arguments": {"city": city, "unit": unit}}
    return [
        {"role": "user", "content": f"weather in {city} in {unit}"},
        {"role": "assistant", "tool_calls": [{"type": "function", "function": call}]},
    ]


def expected(city: str, unit: str) -> str:
    """The assistant text the Llama template renders for the call (the exact target)."""
    return json.dumps({"name": "get_weather", "parameters": {"city": city, "unit": unit}})


def write_jsonl(path: Path, pairs: list[tuple[str, str]]) -> Path:
    with path.open("w") as f:
        for city, unit in pairs:
            f.write(json.dumps({"messages": conversation(city, unit)}) + "\n")
    return path


def split() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Training and held-out (city, unit) prompts.

    Half of the cities each keep one unit back: the held-out prompt of a city asks for a
    unit the training set never pairs with it (every city and every unit is in training,
    in other combinations). The held-out prompts are new sentences, and their answers new
    calls, that the model must compose from the two slots.
    """
    cities = [str(c) for c in np.random.default_rng(0).permutation(corpus_cities())]
    test = [(c, UNITS[i % len(UNITS)]) for i, c in enumerate(cities[: len(cities) // 2])]
    train = [(c, u) for c in cities for u in UNITS if (c, u) not in test]
    return train, test


def prompts(tokenizer: Tokenizer, pairs: list[tuple[str, str]]) -> list[list[int]]:
    return [
        tokenizer.encode(tokenizer.render_chat(conversation(c, u)[:1], add_generation_prompt=True))
        for c, u in pairs
    ]


def exact_match(
    tokenizer: Tokenizer, outputs: list[list[int]], pairs: list[tuple[str, str]]
) -> float:
    texts = [tokenizer.decode(ids).strip() for ids in outputs]
    return sum(t == expected(c, u) for t, (c, u) in zip(texts, pairs, strict=True)) / len(pairs)


def numpy_greedy(
    cfg: dict[str, Any],
    tensors: dict[str, np.ndarray],
    prompt_ids: list[list[int]],
    stop: set[int],
    n: int,
) -> list[list[int]]:
    """Greedy decoding with the NumPy reference forward pass (no cache: recomputes each step)."""
    outs: list[list[int]] = []
    for ids in prompt_ids:
        seq, new = list(ids), []
        for _ in range(n):
            logits = reference_logits(cfg, tensors, np.asarray([seq]))
            token = int(np.argmax(logits[0, -1]))
            if token in stop:
                break
            new.append(token)
            seq.append(token)
        outs.append(new)
    return outs


def test_lora_sft_teaches_a_tool_call_format(tmp_path: Path) -> None:
    model_dir = cached_tiny_model("llama", progress=print)
    tokenizer = Tokenizer.from_dir(model_dir)
    train, test = split()
    assert not set(train) & set(test) and len(test) >= 25
    config = LMTrainConfig().replace(
        {
            "model.dir": str(model_dir),
            "data.train": str(write_jsonl(tmp_path / "train.jsonl", train)),
            "data.validation": str(write_jsonl(tmp_path / "val.jsonl", test[:4])),
            "data.max_seq_len": 128,
            "data.batch_size": 8,
            "lora.rank": 16,
            "lora.alpha": 32,
            "lora.dropout": 0.0,
            "optim.lr": float(os.environ.get("LM_LEARN_LR", 5e-3)),
            "optim.warmup_steps": 10,
            "train.steps": int(os.environ.get("LM_LEARN_STEPS", 1200)),
            "log.checkpoint_dir": str(tmp_path / "run"),
            "log.save_interval": 0,
            "log.eval_interval": 0,
            "log.sample_interval": 0,
            "log.frame_interval": 0,
        }
    )
    trainer = LoRATrainer(config)
    base = jax.tree.map(np.array, trainer.params)
    sampling = SamplingConfig(
        max_new_tokens=48, temperature=0.0, stop_token_ids=tuple(tokenizer.eos_token_ids)
    )
    test_prompts = prompts(tokenizer, test)
    before = exact_match(
        tokenizer, generate(base, trainer.model_config, test_prompts, sampling), test
    )

    start = time.monotonic()
    trainer.run()
    trainer.close()
    elapsed = time.monotonic() - start
    after = exact_match(
        tokenizer,
        generate(
            trainer.params,
            trainer.model_config,
            test_prompts,
            sampling,
            lora=trainer.lora,
            lora_scale=config.lora.scale,
        ),
        test,
    )
    print(
        f"exact match on {len(test)} held-out prompts: before {before:.2f}, after {after:.2f}; "
        f"LoRA training {trainer.step_count} steps in {elapsed:.1f}s"
    )
    assert before <= 0.1
    assert after >= 0.9
    assert elapsed < BUDGET_S
    for got, want in zip(jax.tree.leaves(trainer.params), jax.tree.leaves(base), strict=True):
        assert np.array_equal(np.asarray(got), want)  # the base, bit for bit

    # The exported PEFT adapter, merged into the HF weights in NumPy, run by the NumPy reference.
    from trainsvc_lm._peft import export_peft

    adapter = export_peft(
        tmp_path / "adapter", trainer.lora, config.lora, base_model_name_or_path=str(model_dir)
    )
    peft_cfg = json.loads((adapter / "adapter_config.json").read_text())
    scale = peft_cfg["lora_alpha"] / peft_cfg["r"]
    hf_config, on_disk = load_model(model_dir)
    tensors = {k: np.asarray(v, np.float64) for k, v in params_to_hf(hf_config, on_disk).items()}
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    for key, a in weights.items():
        if ".lora_A." in key:
            b = weights[key.replace(".lora_A.", ".lora_B.")]
            name = key.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
            tensors[name] = tensors[name] + (b.astype(np.float64) @ a.astype(np.float64)) * scale
    hf = json.loads((model_dir / "config.json").read_text())
    outs = numpy_greedy(hf, tensors, test_prompts, set(tokenizer.eos_token_ids), 48)
    merged = exact_match(tokenizer, outs, test)
    print(f"exported adapter merged in NumPy: exact match {merged:.2f}")
    assert merged == pytest.approx(after, abs=1 / len(test))
