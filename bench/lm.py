"""Benchmark of trainsvc-lm against the machine's own limits, measured in the same run.

1. Training throughput as model FLOP utilisation (MFU): FLOP/s of a jitted
   forward + backward step of a small Llama-style model over the FLOP/s that
   ``jnp.dot`` of two square matrices reaches on the same device, same dtype, in
   the same round. Model FLOPs per token: ``6 N + 12 L T d_q`` for full-parameter
   gradients (N: parameters that take part in a matmul, i.e. all but the input
   embedding, the tied head counted once; the attention term counts the full
   T x T scores that are computed and then masked), ``4 N + 12 L T d_q + 6 N_lora``
   for LoRA (no weight gradients of the frozen base). Target >= 0.5 on CPU.
2. Sampling tokens/s (the jitted KV-cache sampler, greedy) over the memory-bandwidth
   limit: copy bandwidth (``np.copyto`` of a 256 MB array on a CPU, a jitted copy
   of 1 GiB on an accelerator; bytes read + written per second) / the bytes one
   decode step must read (every weight but the input embedding, plus the filled
   KV cache), times the batch.
3. Load time of a multi-shard safetensors model (``load_model``: header parsing,
   per-tensor reads, transposes to ``[in, out]``, stacking the layers, placing on
   the device) over reading the same files with ``np.fromfile``, both from the page
   cache; and the peak resident memory a fresh process gains while loading, over
   the model's size.

Rounds alternate the contenders' order and each ratio is paired within a round
(rates on this shared machine drift between minutes); the table gives the median
over rounds with its range. Run: ``uv run --no-sync python bench/lm.py [--quick]``
(``--size 0.5b`` uses a Qwen2.5-0.5B-shaped random model with bf16 compute, for a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from trainsvc_lm import ModelConfig
from trainsvc_lm._model import forward, init_params
from trainsvc_lm._sampler import SamplingConfig, generate
from trainsvc_lm._weights import load_model, save_model

Rates = dict[str, list[float]]


def llama(d: int, layers: int, heads: int, kv: int, ffn: int, vocab: int, **kw: Any) -> ModelConfig:
    """A Llama-family config with head_dim = d / heads."""
    return ModelConfig(
        family=kw.pop("family", "llama"),
        vocab_size=vocab,
        hidden_size=d,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=d // heads,
        **kw,
    )


SIZES: dict[str, dict[str, Any]] = {
    # CPU: a small model whose step takes about a second on 2 cores.
    "small": {
        "train": llama(512, 4, 8, 4, 1408, 2048),
        "batch": 4,
        "seq": 256,
        "sample": llama(768, 6, 12, 4, 2048, 8192),
        "dot_n": 1024,
        "train_rows": (("float32", (0, 16)), ("bfloat16", (0,))),
    },
    # GPU: Qwen2.5-0.5B's shape (494M parameters), bf16 compute.
    "0.5b": {
        "train": llama(
            896, 24, 14, 2, 4864, 151936, family="qwen2", qkv_bias=True, tie_word_embeddings=True
        ),
        "batch": 8,
        "seq": 1024,
        "sample": llama(
            896, 24, 14, 2, 4864, 151936, family="qwen2", qkv_bias=True, tie_word_embeddings=True
        ),
        "dot_n": 8192,
        "train_rows": (("bfloat16", (0, 16)),),
    },
}


def alternate(runs: dict[str, Callable[[], float]], rounds: int) -> Rates:
    """Calls each ``runs[name]()`` (returning units of work) in turn, ``rounds`` times.

    The order reverses every round; each round's rates are kept so that ratios
    can be paired within a round. ``"<name>/cpu"`` holds the rates per CPU-second
    of this process, which other users' load on a shared machine disturbs less.
    """
    rates: Rates = {}
    names = list(runs)
    for i in range(rounds):
        for name in names if i % 2 == 0 else names[::-1]:
            start, cpu_start = time.perf_counter(), time.process_time()
            work = runs[name]()
            rates.setdefault(name, []).append(work / (time.perf_counter() - start))
            cpu = max(time.process_time() - cpu_start, 1e-9)
            rates.setdefault(f"{name}/cpu", []).append(work / cpu)
    return rates


def paired(rates: Rates, name: str, base: str) -> tuple[float, float, float]:
    """Median, lowest and highest over rounds of ``name``'s rate over ``base``'s."""
    ratios = [a / b for a, b in zip(rates[name], rates[base], strict=True)]
    return statistics.median(ratios), min(ratios), max(ratios)


def ratio_text(rates: Rates, name: str, base: str, cpu: bool = True) -> str:
    """``median (low-high)`` of the paired ratio, and the per-CPU-second ratio's median."""
    mid, low, high = paired(rates, name, base)
    text = f"{mid:.2f} ({low:.2f}-{high:.2f})"
    if cpu:
        text += f"; CPU-s {paired(rates, name + '/cpu', base + '/cpu')[0]:.2f}"
    return text


# ----------------------------------------------------------------- training


def matmul_params(config: ModelConfig) -> int:
    """Parameters that take part in a matmul per token (not the input embedding lookup)."""
    n = config.num_parameters()
    return n if config.tie_word_embeddings else n - config.vocab_size * config.hidden_size


def dot_runner(n: int, dtype: str, seconds: float) -> Callable[[], float]:
    """FLOPs of ``jnp.dot`` on two ``n x n`` matrices done in about ``seconds``."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), dtype)
    b = jnp.asarray(np.random.default_rng(1).standard_normal((n, n)), dtype)
    mm = jax.jit(jnp.dot)
    mm(a, b).block_until_ready()

    def run() -> float:
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            mm(a, b).block_until_ready()
            calls += 1
        return 2.0 * n**3 * calls

    return run


def train_runner(
    size: dict[str, Any], dtype: str, lora_rank: int, steps: int
) -> tuple[Callable[[], float], float]:
    """A jitted training step and its model FLOPs; returns (run ``steps`` steps -> FLOPs, FLOPs/step)."""
    config: ModelConfig = size["train"]
    b, t = size["batch"], size["seq"]
    params = init_params(
        config, jax.random.PRNGKey(0), jnp.float32 if dtype == "float32" else jnp.bfloat16
    )
    tokens = jnp.asarray(
        np.random.default_rng(0).integers(0, config.vocab_size, (b, t + 1)), jnp.int32
    )
    d_q, layers = config.q_size, config.num_hidden_layers
    n = matmul_params(config)
    attention = 12 * layers * t * d_q
    if lora_rank:
        from trainsvc_lm._model import PROJECTIONS, param_shapes

        shapes = param_shapes(config)["layers"]
        key = jax.random.PRNGKey(1)
        lora = {
            name: {
                "a": 0.01
                * jax.random.normal(
                    key, (layers, shapes[name][1], lora_rank), params["embed"].dtype
                ),
                "b": jnp.zeros((layers, lora_rank, shapes[name][2]), params["embed"].dtype),
            }
            for name in PROJECTIONS
        }
        n_lora = sum(a.size for a in jax.tree.leaves(lora)) // layers * layers
        per_token = 4 * n + attention + 6 * n_lora

        def loss(lora: Any, toks: jax.Array) -> jax.Array:
            logits = forward(params, config, toks[:, :-1], lora=lora, lora_scale=2.0)
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), toks[:, 1:, None], -1))

        step = jax.jit(jax.value_and_grad(loss))
        args: tuple[Any, ...] = (lora, tokens)
    else:
        per_token = 6 * n + attention

        def full_loss(p: Any, toks: jax.Array) -> jax.Array:
            logits = forward(p, config, toks[:, :-1])
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), toks[:, 1:, None], -1))

        step = jax.jit(jax.value_and_grad(full_loss))
        args = (params, tokens)
    jax.block_until_ready(step(*args))
    flops = float(per_token * b * t)

    def run() -> float:
        for _ in range(steps):
            jax.block_until_ready(step(*args))
        return flops * steps

    return run, flops


# ----------------------------------------------------------------- sampling


def copy_bandwidth_runner(nbytes: int = 256 * 2**20) -> Callable[[], float]:
    """Bytes moved (read + written) by 3 copies of an ``nbytes`` array.

    ``np.copyto`` on a CPU; on an accelerator, a jitted copy of a 1 GiB device
    array (the weights live in device memory there).
    """
    if jax.devices()[0].platform != "cpu":
        nbytes = 2**30
        src_dev = jnp.ones(nbytes // 4, jnp.float32)
        copy = jax.jit(lambda a: a + 0.0)
        copy(src_dev).block_until_ready()

        def run_device() -> float:
            for _ in range(3):
                copy(src_dev).block_until_ready()
            return 3 * 2.0 * nbytes

        return run_device
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)

    def run() -> float:
        for _ in range(3):
            np.copyto(dst, src)
        return 3 * 2.0 * nbytes

    return run


def sample_runner(
    config: ModelConfig, params: Any, batch: int, prompt: int, new: int
) -> tuple[Callable[[], float], float]:
    """Greedy generation of ``new`` tokens for ``batch`` prompts; returns (run -> tokens, bytes per step)."""
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, config.vocab_size, prompt).tolist() for _ in range(batch)]
    sampling = SamplingConfig(max_new_tokens=new, stop_token_ids=())
    generate(params, config, prompts, sampling)  # compile
    itemsize = params["embed"].dtype.itemsize
    weights = matmul_params(config) * itemsize
    kv_per_token = 2 * config.num_hidden_layers * config.kv_size * itemsize
    mean_filled = prompt + new / 2
    step_bytes = weights + batch * kv_per_token * mean_filled

    def run() -> float:
        out = generate(params, config, prompts, sampling)
        return float(sum(len(o) for o in out))

    return run, step_bytes


# ------------------------------------------------------------------ loading


def peak_rss_gain(model_dir: Path) -> float:
    """Bytes of peak resident memory a fresh process gains while loading the model.

    Read from ``/proc/self/status`` (VmRSS before, VmHWM after): ``ru_maxrss``
    would carry the parent's peak across fork + exec.
    """
    code = (
        "import sys\n"
        "import jax, jax.numpy as jnp\n"
        "from trainsvc_lm._weights import load_model\n"
        "jnp.ones(4).block_until_ready()\n"
        "def status(key):\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith(key): return int(line.split()[1]) * 1024\n"
        "base = status('VmRSS:')\n"
        "config, params = load_model(sys.argv[1])\n"
        "jax.block_until_ready(params)\n"
        "print(max(status('VmHWM:') - base, 0))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(model_dir)], capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def load_runners(model_dir: Path) -> dict[str, Callable[[], float]]:
    files = sorted(model_dir.glob("*.safetensors"))
    total = float(sum(f.stat().st_size for f in files))

    def ours() -> float:
        _, params = load_model(model_dir)
        jax.block_until_ready(params)
        return total

    def raw() -> float:
        for f in files:
            np.fromfile(f, np.uint8)
        return total

    return {"load_model": ours, "np.fromfile": raw}


# --------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer rounds (smoke test)")
    parser.add_argument(
        "--size", choices=sorted(SIZES), default=None, help="model sizes (default: small on CPU)"
    )
    args = parser.parse_args()
    platform = jax.devices()[0].platform
    size = SIZES[args.size or ("small" if platform == "cpu" else "0.5b")]
    rounds = 2 if args.quick else 4
    print(
        f"jax {jax.__version__} on {platform} ({jax.devices()[0].device_kind}), {os.cpu_count()} CPUs",
        flush=True,
    )
    rows: list[tuple[str, str, str, str, str]] = []

    # 1. training MFU
    tcfg: ModelConfig = size["train"]
    print(
        f"training model: d={tcfg.hidden_size} L={tcfg.num_hidden_layers} heads={tcfg.num_attention_heads}/"
        f"{tcfg.num_key_value_heads} ffn={tcfg.intermediate_size} V={tcfg.vocab_size}, "
        f"{matmul_params(tcfg) / 1e6:.1f}M matmul params, batch {size['batch']} x {size['seq']} tokens",
        flush=True,
    )
    for dtype, ranks in size["train_rows"]:
        runs: dict[str, Callable[[], float]] = {"dot": dot_runner(size["dot_n"], dtype, 0.3)}
        step_flops: dict[str, float] = {}
        for rank in ranks:
            key = f"lora{rank}" if rank else "full"
            runs[key], step_flops[key] = train_runner(size, dtype, rank, 1)
        rates = alternate(runs, rounds)
        dot = statistics.median(rates["dot"])
        print(f"  {dtype}: jnp.dot {size['dot_n']}^2 {dot / 1e9:.1f} GFLOP/s", flush=True)
        for key, flops in step_flops.items():
            label = "full-parameter" if key == "full" else f"LoRA r={key[4:]}, 7 targets"
            rate = statistics.median(rates[key])
            tok_s = rate / flops * size["batch"] * size["seq"]
            rows.append(
                (
                    f"training MFU, {label}, fwd+bwd, {dtype}",
                    f"{rate / 1e9:.1f} GFLOP/s ({tok_s:,.0f} tok/s)",
                    f"jnp.dot {dot / 1e9:.1f} GFLOP/s",
                    ratio_text(rates, key, "dot"),
                    ">= 0.5 (CPU), >= 0.4 (GPU)" if key == "full" else "-",
                )
            )

    # 2. sampling vs memory bandwidth, and 3. loading
    scfg: ModelConfig = size["sample"]
    sdtype = jnp.float32 if size["train_rows"][0][0] == "float32" else jnp.bfloat16
    params = init_params(scfg, jax.random.PRNGKey(0), sdtype)
    model_bytes = sum(a.nbytes for a in jax.tree.leaves(params))
    print(
        f"sampling/loading model: {scfg.num_parameters() / 1e6:.1f}M params, {model_bytes / 1e6:.0f} MB",
        flush=True,
    )
    runs = {"copy": copy_bandwidth_runner()}
    step_bytes: dict[str, float] = {}
    for batch in (1, 8):
        runs[f"sample{batch}"], step_bytes[f"sample{batch}"] = sample_runner(
            scfg, params, batch, 16, 64
        )
    rates = alternate(runs, rounds)
    bw = statistics.median(rates["copy"])
    for batch in (1, 8):
        key = f"sample{batch}"
        limit = [c / step_bytes[key] * batch for c in rates["copy"]]
        ratios = [r / lim for r, lim in zip(rates[key], limit, strict=True)]
        rows.append(
            (
                f"sampling tok/s, greedy, batch {batch}, 16+64 tokens",
                f"{statistics.median(rates[key]):,.1f}",
                f"bandwidth limit {statistics.median(limit):,.1f} ({bw / 1e9:.1f} GB/s copy, "
                f"{step_bytes[key] / 1e6:.0f} MB/step)",
                f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})",
                "-",
            )
        )
    with tempfile.TemporaryDirectory(prefix="bench-lm-") as tmp:
        model_dir = Path(tmp)
        cfg_on_disk = ModelConfig(
            **{**scfg.__dict__, "torch_dtype": "float32" if sdtype == jnp.float32 else "bfloat16"}
        )
        save_model(model_dir, cfg_on_disk, params, max_shard_bytes=max(model_bytes // 4, 1))
        del params
        shards = len(list(model_dir.glob("*.safetensors")))
        rates = alternate(load_runners(model_dir), rounds)
        rows.append(
            (
                f"load, {shards} shards, {model_bytes / 1e6:.0f} MB ({cfg_on_disk.torch_dtype})",
                f"{statistics.median(rates['load_model']) / 1e9:.2f} GB/s",
                f"np.fromfile {statistics.median(rates['np.fromfile']) / 1e9:.2f} GB/s",
                ratio_text(rates, "load_model", "np.fromfile"),
                "-",
            )
        )
        gain = peak_rss_gain(model_dir)
        rows.append(
            (
                "load, peak RSS gained / model size",
                f"{gain / 1e6:.0f} MB",
                f"{model_bytes / 1e6:.0f} MB",
                f"{gain / model_bytes:.2f}",
                "~1",
            )
        )

    header = ("measure", "ours", "baseline (same run)", "ratio (range)", "target")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]
    print()
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print(
        json.dumps({"rows": [dict(zip(header, r, strict=True)) for r in rows]})
        if os.environ.get("BENCH_JSON")
        else ""
    )


if __name__ == "__main__":
    main()
