"""``trainsvc-lm``: LoRA fine-tuning, PEFT export, generation, tiny models and data reports.

Subcommands::

    trainsvc-lm train --model DIR --train FILE [--validation FILE] --out DIR [--steps N]
                      [--config FILE.toml] [--resume] [--SECTION.FIELD VALUE ...]
                      [--coordinator HOST:PORT --num-processes N --process-id I]
    trainsvc-lm grpo [--config FILE.toml] --out DIR [--steps N] [--resume]
                     [--SECTION.FIELD VALUE ...] [--coordinator ... (as train)]
    trainsvc-lm export-peft CHECKPOINT_OR_RUN_DIR OUT_DIR [--merged]
    trainsvc-lm generate --model DIR [--adapter DIR] --prompt TEXT
    trainsvc-lm init-tiny DIR [--family llama|mistral|qwen2|qwen3] [--pretrain-steps N]
    trainsvc-lm data-report FILE --model DIR
    trainsvc-lm serve MODEL_DIR [--adapter DIR] [--name NAME] [--listen HOST:PORT]

Exit codes: 0 done; 1 an error (bad input, named; nothing trained) or a run stopped by
SIGTERM/SIGINT after its emergency checkpoint; 2 is reserved for crash loops (the
service's), never returned here. ``--json`` prints one JSON object on stdout; progress
lines then go to stderr.

Data-parallel (``train`` and ``grpo``): every process runs the same command plus
``--coordinator HOST:PORT --num-processes N --process-id I``; process 0 writes the
checkpoints, metrics and the adapter (or model). A signal to any process stops every
process after the same step with one emergency checkpoint; a process that loses
another exits 1 at once, saying to relaunch every process with ``--resume``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, TextIO

from trainsvc_lm import _distributed
from trainsvc_lm._config import FAMILIES
from trainsvc_lm._distributed import DistributedConfig, DistributedError
from trainsvc_lm._errors import ConfigError, LMError
from trainsvc_lm._lora import TARGETS
from trainsvc_lm._serving_cli import add_serve_parser, run_serve
from trainsvc_lm._train_config import LMTrainConfig, Rule, field_rules, load_toml

TRAIN_EPILOG = """\
Every config field is also a flag, --SECTION.FIELD VALUE (dashes or underscores), e.g.
--optim.lr 1e-4 --lora.rank 32 --lora.target-modules q_proj,k_proj,v_proj,o_proj
--train.remat true. Flags override --config, which overrides the defaults; when resuming
(--resume) the checkpoint's config is the base. 'none' clears an optional field.
At the end the adapter is exported in PEFT layout to OUT/adapter. See docs/lm.md.
"""

LORA_RULES: dict[str, Rule] = {
    "lora.rank": Rule("int", "adapter rank r", 8, 64),
    "lora.alpha": Rule("int", "scale numerator (2 x rank recommended)", 1, 1 << 20),
    "lora.dropout": Rule("float", "dropout on the adapter input", 0.0, 0.2),
    "lora.use_rslora": Rule("bool", "scale by alpha / sqrt(rank)"),
    "lora.target_modules": Rule("str", f"comma-separated, at least 4 of {','.join(TARGETS)}"),
}


class _Parser(argparse.ArgumentParser):
    """Usage errors exit 1 (2 means a crash loop in trainsvc)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(1, f"{self.prog}: error: {message}\n")


def _all_rules() -> dict[str, Rule]:
    rules = {dotted: rule for dotted, (_, rule) in field_rules().items()}
    rules.update(LORA_RULES)
    return rules


def _grpo_rules() -> dict[str, Rule]:
    from trainsvc_lm._grpo_config import grpo_field_rules

    rules: dict[str, Rule] = {dotted: rule for dotted, (_, rule) in grpo_field_rules().items()}
    rules.update(LORA_RULES)
    return rules


GRPO_EPILOG = """\
Every config field is also a flag, --SECTION.FIELD VALUE, e.g. --data.task increment4
--grpo.group-size 8 --grpo.prompts-per-step 16 --train.steps 100. The CLI trains on a
shipped task (data.task); recorded groups go through the service or GRPOTrainer. At the
end the policy is written as a model directory to OUT/model. See docs/grpo.md.
"""

# Fields the grpo subcommand sets from its own named flags.
_GRPO_NAMED = {"out": "log.checkpoint_dir", "steps": "train.steps"}


# Fields the train subcommand sets from its own named flags.
_NAMED = {
    "model": "model.dir",
    "train": "data.train",
    "validation": "data.validation",
    "out": "log.checkpoint_dir",
    "steps": "train.steps",
}


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand."""
    parser = _Parser(
        prog="trainsvc-lm",
        description="LoRA fine-tuning of Llama-family models in JAX, PEFT adapters, generation.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'trainsvc-lm COMMAND --help' for a command's options. Guide: docs/lm.md.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = sub.add_parser(
        "train",
        help="LoRA fine-tune a model on chat JSONL",
        description="LoRA fine-tune a base model on chat JSONL, with checkpoints and resume.",
        epilog=TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("--model", metavar="DIR", help="base model directory (HF layout)")
    train.add_argument("--train", metavar="FILE", help="training chat JSONL")
    train.add_argument("--validation", metavar="FILE", help="validation chat JSONL")
    train.add_argument("--out", metavar="DIR", help="run directory: checkpoints, metrics, adapter")
    train.add_argument("--steps", metavar="N", help="optimizer steps")
    train.add_argument("--config", metavar="FILE.toml", help="TOML with [model] [data] [lora] ...")
    train.add_argument(
        "--resume", action="store_true", help="continue from the newest checkpoint in --out"
    )
    train.add_argument(
        "--wandb",
        "--log.wandb",
        dest="log.wandb",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="log to Weights & Biases (offline unless --log.wandb-mode online)",
    )
    _json_flag(train)
    _distributed.add_arguments(train)
    _field_flags(train, _all_rules(), set(_NAMED.values()))

    grpo = sub.add_parser(
        "grpo",
        help="GRPO reinforcement learning on a shipped task",
        description="GRPO: sample groups of completions of a task's prompts, score them with "
        "the task's verifiable reward and train on group-relative advantages.",
        epilog=GRPO_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    grpo.add_argument("--config", metavar="FILE.toml", help="TOML with [model] [data] [grpo] ...")
    grpo.add_argument("--out", metavar="DIR", help="run directory: checkpoints, metrics, model")
    grpo.add_argument("--steps", metavar="N", help="optimizer steps (sampled batches)")
    grpo.add_argument(
        "--resume", action="store_true", help="continue from the newest checkpoint in --out"
    )
    _json_flag(grpo)
    _distributed.add_arguments(grpo)
    _field_flags(grpo, _grpo_rules(), set(_GRPO_NAMED.values()) | {"log.wandb"})

    export = sub.add_parser(
        "export-peft",
        help="write a checkpoint's adapter in PEFT layout",
        description="Write the adapter of a checkpoint (or a run directory's newest) in "
        "Hugging Face PEFT layout: adapter_model.safetensors + adapter_config.json.",
    )
    export.add_argument("source", metavar="CHECKPOINT_OR_RUN_DIR")
    export.add_argument("out", metavar="OUT_DIR")
    export.add_argument(
        "--merged", action="store_true", help="also write the merged full model to OUT_DIR/merged"
    )
    export.add_argument(
        "--base-model",
        metavar="NAME_OR_PATH",
        help="base_model_name_or_path to record (default: the run's model directory)",
    )
    _json_flag(export)

    gen = sub.add_parser(
        "generate",
        help="complete a prompt with a model (and an adapter)",
        description="Greedy (or sampled) completion of one user message, rendered with the "
        "model's chat template.",
    )
    gen.add_argument("--model", metavar="DIR", required=True)
    gen.add_argument("--adapter", metavar="DIR", help="a PEFT LoRA adapter directory")
    gen.add_argument("--prompt", metavar="TEXT", required=True)
    gen.add_argument("--system", metavar="TEXT", help="a system message before the prompt")
    gen.add_argument("--raw", action="store_true", help="no chat template: the prompt as is")
    gen.add_argument("--max-new-tokens", type=int, default=128, metavar="N")
    gen.add_argument("--temperature", type=float, default=0.0, metavar="T", help="0 = greedy")
    gen.add_argument("--seed", type=int, default=0)
    _json_flag(gen)

    tiny = sub.add_parser(
        "init-tiny",
        help="write a tiny random-weight model in HF layout",
        description="Write a tiny random-weight model (HF layout, a BPE trained on bundled text "
        "and a family-style chat template); optionally pretrain it on the bundled text.",
    )
    tiny.add_argument("dir", metavar="DIR")
    tiny.add_argument("--family", choices=FAMILIES, default="llama")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--hidden-size", type=int, default=64, metavar="N")
    tiny.add_argument("--layers", type=int, default=2, metavar="N")
    tiny.add_argument("--vocab-size", type=int, default=512, metavar="N")
    tiny.add_argument(
        "--pretrain-steps",
        type=int,
        default=0,
        metavar="N",
        help="full-parameter steps on the text",
    )
    _json_flag(tiny)

    report = sub.add_parser(
        "data-report",
        help="validate and count a chat JSONL file",
        description="Validate every line of a chat JSONL file with the model's chat template "
        "and report examples, tokens, truncation and the share of tool-call turns.",
    )
    report.add_argument("file", metavar="FILE")
    report.add_argument("--model", metavar="DIR", required=True)
    report.add_argument("--max-seq-len", type=int, default=1024, metavar="N")
    report.add_argument("--truncation", choices=("truncate", "refuse"), default="truncate")
    _json_flag(report)
    add_serve_parser(sub)
    return parser


def _field_flags(parser: argparse.ArgumentParser, rules: dict[str, Rule], skip: set[str]) -> None:
    """One ``--SECTION.FIELD`` flag per rule (dashes or underscores), but those in ``skip``."""
    for dotted, rule in rules.items():
        if dotted in skip or dotted == "log.wandb":
            continue
        section, name = dotted.split(".")
        flags = [f"--{section}.{name.replace('_', '-')}"] + ([f"--{dotted}"] if "_" in name else [])
        parser.add_argument(
            *flags, dest=dotted, default=None, metavar=rule.kind.upper(), help=rule.help
        )


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


# ---------------------------------------------------------------------- config


def parse_value(dotted: str, text: Any, rules: dict[str, Rule] | None = None) -> Any:
    """A flag's text as its field's type (``rules``: default the ``train`` command's);
    ConfigError names the field on failure."""
    if not isinstance(text, str):
        return text
    rule = (rules or _all_rules())[dotted]
    if rule.optional and text.lower() in ("none", "null"):
        return None
    if dotted == "lora.target_modules":
        return [t.strip() for t in text.split(",") if t.strip()]
    converters: dict[str, Callable[[str], Any]] = {"int": int, "float": float, "bool": _bool}
    if rule.kind not in converters:
        return text
    try:
        return converters[rule.kind](text)
    except ValueError:
        raise ConfigError(dotted, f"must be {rule.allowed()}, got {text!r}") from None


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise ValueError(text)


def explicit_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The dotted settings of ``--config`` and the flags (flags win), validated by field."""
    explicit: dict[str, Any] = {}
    if args.config:
        tables = load_toml(args.config)
        LMTrainConfig.from_dict(tables)  # names the file's own bad fields
        for section, table in tables.items():
            explicit.update({f"{section}.{k}": v for k, v in table.items()})
    for dest, dotted in _NAMED.items():
        value = getattr(args, dest)
        if value is not None:
            explicit[dotted] = parse_value(dotted, value)
    for dotted in _all_rules():
        value = getattr(args, dotted, None)
        if value is not None and dotted not in _NAMED.values():
            explicit[dotted] = parse_value(dotted, value)
    if args.resume:
        explicit["train.resume_from"] = "latest"
    return explicit


def grpo_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The ``grpo`` command's dotted settings of ``--config`` and the flags (flags win)."""
    from trainsvc_lm._grpo_config import GRPOConfig

    explicit: dict[str, Any] = {}
    if args.config:
        tables = load_toml(args.config)
        GRPOConfig.from_dict(tables)  # names the file's own bad fields
        for section, table in tables.items():
            explicit.update({f"{section}.{k}": v for k, v in table.items()})
    rules = _grpo_rules()
    for dest, dotted in _GRPO_NAMED.items():
        value = getattr(args, dest)
        if value is not None:
            explicit[dotted] = parse_value(dotted, value, rules)
    for dotted in rules:
        value = getattr(args, dotted, None)
        if value is not None and dotted not in _GRPO_NAMED.values():
            explicit[dotted] = parse_value(dotted, value, rules)
    if args.resume:
        explicit["train.resume_from"] = "latest"
    return explicit


# ---------------------------------------------------------------------- output


class _Output:
    """Where a subcommand writes: lines for people, one JSON object with ``--json``."""

    def __init__(self, json_mode: bool) -> None:
        self.json_mode = json_mode

    @property
    def lines(self) -> TextIO:
        return sys.stderr if self.json_mode else sys.stdout

    def say(self, text: str) -> None:
        print(text, file=self.lines, flush=True)

    def done(self, summary: dict[str, Any], text: str) -> None:
        if self.json_mode:
            print(json.dumps(summary, sort_keys=True, default=str), flush=True)
        else:
            self.say(text)


class _StopFlag:
    """The first SIGTERM/SIGINT asks training to stop after its step; a second one kills."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
        self.signum = signum

    def __call__(self) -> bool:
        return self.signum is not None


# ---------------------------------------------------------------------- commands


def _join(distributed: DistributedConfig | None, stop: _StopFlag) -> bool:
    """Joins the data-parallel run (if any); returns whether this process is the writer."""
    if distributed is None:
        return True
    _distributed.initialize(distributed)
    # jax.distributed installs its own SIGTERM handler (a preemption notice nothing here
    # polls): take SIGTERM back, so that it stops every process
    stop.install()
    return distributed.is_writer


def _resume_source(config: Any, run_dir: Path, out: _Output) -> Path | None:
    """The checkpoint file to resume from (``train.resume_from``), or None."""
    from trainsvc_lm._train import find_checkpoint_file

    resume_from = config.train.resume_from
    if resume_from is None:
        return None
    try:
        return find_checkpoint_file(run_dir if resume_from == "latest" else resume_from)
    except ConfigError:
        if resume_from != "latest":
            raise
        out.say(f"no checkpoint in {run_dir}; starting at step 0")
        return None


def _drive(
    trainer: Any,
    distributed: DistributedConfig | None,
    stop: _StopFlag,
    source: Path | None,
    out: _Output,
    after_restore: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Restores, trains until ``train.steps`` or a stop, and saves an emergency checkpoint
    when stopped; returns the summary's ``status`` (and ``emergency_checkpoint``).
    ``after_restore`` runs between the two, when the trainer has its run's own name and id.

    Data-parallel: every process restores (or not) together; any failure of a step or a
    collective becomes a DistributedError (another process probably died).
    """
    summary: dict[str, Any] = {}
    try:
        if source is not None:
            trainer.restore(source)
            out.say(f"resumed from {source} at step {trainer.step_count}")
        elif distributed is not None and trainer.config.train.resume_from is not None:
            trainer.restore("latest")  # every process restores (or not) together
        if after_restore is not None:
            after_restore()
        trainer.run(should_stop=stop)
        # data-parallel: a signal to any process stops them all after the same step
        if stop.signum is not None or (distributed is not None and trainer.remaining_steps):
            path = trainer.save_checkpoint(emergency=True)
            summary.update(status="interrupted", emergency_checkpoint=str(path))
            name = signal.Signals(stop.signum).name if stop.signum else "another process"
            out.say(f"stopped by {name} at step {trainer.step_count}")
        else:
            summary["status"] = "completed"
    except (DistributedError, LMError):
        raise
    except Exception as exc:
        if distributed is None:
            raise
        raise DistributedError(
            f"process {distributed.process_id} of {distributed.num_processes} failed at step "
            f"{trainer.step_count} ({type(exc).__name__}: {exc}); "
            f"{_distributed.RELAUNCH_HINT}"
        ) from exc
    finally:
        trainer.close()
    return summary


def _train(args: argparse.Namespace, out: _Output) -> int:
    explicit = explicit_settings(args)
    config = LMTrainConfig().replace(explicit)  # before JAX: bad flags fail fast
    config.require_inputs()
    distributed = _distributed.from_arguments(args)
    if distributed is not None:
        distributed.check_divides("data.batch_size", config.data.batch_size, "rows")
    stop = _StopFlag()
    stop.install()

    from trainsvc_lm._peft import export_peft
    from trainsvc_lm._train import LoRATrainer, read_checkpoint
    from trainsvc_lm._train_log import ConsoleLines, JsonlMetrics, Sink, WandbSink

    run_dir = Path(config.log.checkpoint_dir)
    source = _resume_source(config, run_dir, out)
    if source is not None:
        config = read_checkpoint(source).config.replace(explicit)
    writer = _join(distributed, stop)
    sinks: list[Sink] = [ConsoleLines(config.train.steps, stream=out.lines)]
    if writer:
        sinks.append(JsonlMetrics(run_dir / "metrics.jsonl"))
    trainer = LoRATrainer(config, sinks=sinks, data_parallel=distributed is not None)

    def add_wandb_sink() -> None:  # after restoring: a resumed run logs to its own W&B run
        trainer.sinks.sinks.append(
            WandbSink(
                config.log.wandb_project,
                trainer.run_name,
                trainer.run_id,
                mode=config.log.wandb_mode,
                directory=run_dir,
                config=config.to_dict(),
            )
        )

    data = trainer.train_data
    out.say(
        f"data examples={len(data.examples)} truncated={data.truncated} dropped={data.dropped} "
        f"batches_per_epoch={trainer.loader.batches_per_epoch()}"
    )
    out.say(f"{trainer.memory.describe()} platform={trainer.platform}")
    summary: dict[str, Any] = {"run_dir": str(run_dir)}
    wandb = add_wandb_sink if config.log.wandb and writer else None
    summary.update(_drive(trainer, distributed, stop, source, out, after_restore=wandb))
    summary["run_name"] = trainer.run_name  # a resumed run's own name, restored by _drive
    if summary["status"] == "completed" and writer:
        base = str(Path(config.model.dir or "").resolve())
        lora = trainer.state_dict()["lora"]
        adapter = export_peft(run_dir / "adapter", lora, config.lora, base_model_name_or_path=base)
        summary["adapter"] = str(adapter)
    summary.update(step=trainer.step_count, steps=config.train.steps, metrics=trainer.last_metrics)
    loss = trainer.last_metrics.get("loss", float("nan"))
    out.done(
        summary,
        f"training {summary['status']}: step {trainer.step_count}/{config.train.steps} "
        f"loss {loss:.4f}; run {run_dir}"
        + (f"; adapter {summary['adapter']}" if "adapter" in summary else ""),
    )
    return 0 if summary["status"] == "completed" else 1


def _grpo(args: argparse.Namespace, out: _Output) -> int:
    from trainsvc_lm._grpo_config import GRPOConfig

    explicit = grpo_settings(args)
    config = GRPOConfig().replace(explicit)  # before JAX: bad flags fail fast
    if config.data.offline_file is not None:
        raise ConfigError(
            "data.offline_file",
            "the CLI trains on a shipped task (data.task); recorded groups go through the "
            "service (run.grpo.data_file) or GRPOTrainer(offline_groups=...)",
        )
    if config.log.wandb:
        raise ConfigError("log.wandb", "trainsvc-lm grpo does not log to W&B (metrics.jsonl)")
    distributed = _distributed.from_arguments(args)
    if distributed is not None:
        distributed.check_divides("grpo.prompts_per_step", config.grpo.prompts_per_step, "groups")
    stop = _StopFlag()
    stop.install()

    from trainsvc_checkpoint import read_info

    from trainsvc_lm._grpo import GRPOTrainer
    from trainsvc_lm._train_log import ConsoleLines, JsonlMetrics, Sink

    run_dir = Path(config.log.checkpoint_dir)
    source = _resume_source(config, run_dir, out)
    if source is not None:
        saved = read_info(source).metadata.get("config")
        if not isinstance(saved, dict) or read_info(source).metadata.get("trainer") != "grpo":
            raise ConfigError("train.resume_from", f"{source} is not a GRPO trainer checkpoint")
        config = GRPOConfig.from_dict(saved).replace(explicit)
    writer = _join(distributed, stop)
    keys = ("reward_mean", "groups_kept", "loss", "kl", "eval_reward", "tok_s")
    sinks: list[Sink] = [ConsoleLines(config.train.steps, stream=out.lines, keys=keys)]
    if writer:
        sinks.append(JsonlMetrics(run_dir / "metrics.jsonl"))
    trainer = GRPOTrainer(config, sinks=sinks, data_parallel=distributed is not None)
    summary: dict[str, Any] = {"run_dir": str(run_dir)}
    summary.update(_drive(trainer, distributed, stop, source, out))
    summary["run_name"] = trainer.run_name  # a resumed run's own name, restored by _drive
    if summary["status"] == "completed" and writer:
        summary["model"] = str(trainer.save_pretrained(run_dir / "model"))
    summary.update(step=trainer.step_count, steps=config.train.steps, metrics=trainer.last_metrics)
    reward = trainer.last_metrics.get("reward_mean", float("nan"))
    out.done(
        summary,
        f"training {summary['status']}: step {trainer.step_count}/{config.train.steps} "
        f"reward {reward:.4f}; run {run_dir}"
        + (f"; model {summary['model']}" if "model" in summary else ""),
    )
    return 0 if summary["status"] == "completed" else 1


def _export(args: argparse.Namespace, out: _Output) -> int:
    from trainsvc_lm._peft import export_merged, export_peft
    from trainsvc_lm._train import read_checkpoint

    saved = read_checkpoint(args.source)
    model_dir = saved.config.model.dir
    base = args.base_model or str(Path(model_dir or "").resolve())
    target = export_peft(args.out, saved.lora, saved.config.lora, base_model_name_or_path=base)
    summary: dict[str, Any] = {
        "status": "ok",
        "checkpoint": str(saved.path),
        "step": saved.step,
        "adapter": str(target),
    }
    if args.merged:
        from trainsvc_lm._weights import load_model

        if model_dir is None:
            raise ConfigError("model.dir", "the checkpoint's config names no base model")
        model_config, params = load_model(model_dir)
        merged = export_merged(
            Path(args.out) / "merged",
            model_config,
            params,
            saved.lora,
            saved.config.lora,
            base_model_dir=model_dir,
        )
        summary["merged"] = str(merged)
    out.done(summary, f"adapter of step {saved.step} ({saved.path}) written to {target}")
    return 0


def _generate(args: argparse.Namespace, out: _Output) -> int:
    from trainsvc_lm._peft import load_peft
    from trainsvc_lm._sampler import SamplingConfig, generate
    from trainsvc_lm._tokenizer import Tokenizer
    from trainsvc_lm._weights import load_model

    tokenizer = Tokenizer.from_dir(args.model)
    model_config, params = load_model(args.model)
    lora, scale = None, 1.0
    if args.adapter:
        lora_config, lora = load_peft(args.adapter, model_config)
        scale = lora_config.scale
    if args.raw:
        prompt = args.prompt
    else:
        messages = [{"role": "system", "content": args.system}] if args.system else []
        messages.append({"role": "user", "content": args.prompt})
        prompt = tokenizer.render_chat(messages, add_generation_prompt=True)
    sampling = SamplingConfig(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        stop_token_ids=tuple(tokenizer.eos_token_ids),
        seed=args.seed,
    )
    ids = generate(
        params, model_config, [tokenizer.encode(prompt)], sampling, lora=lora, lora_scale=scale
    )[0]
    text = tokenizer.decode(ids)
    out.done({"status": "ok", "completion": text, "tokens": len(ids)}, text)
    return 0


def _init_tiny(args: argparse.Namespace, out: _Output) -> int:
    from trainsvc_lm._tiny import init_tiny

    config = init_tiny(
        args.dir,
        args.family,
        seed=args.seed,
        hidden_size=args.hidden_size,
        layers=args.layers,
        vocab_size=args.vocab_size,
    )
    summary: dict[str, Any] = {"status": "ok", "dir": args.dir, "family": args.family}
    summary["parameters"] = config.num_parameters()
    if args.pretrain_steps > 0:
        from trainsvc_lm._pretrain import pretrain_tiny

        losses = pretrain_tiny(
            args.dir,
            steps=args.pretrain_steps,
            seed=args.seed,
            progress=lambda s, loss: out.say(f"pretrain step={s} loss={loss:.4f}"),
        )
        summary["pretrain_loss"] = losses[-1]
    out.done(
        summary,
        f"wrote a {args.family} model of {config.num_parameters():,} parameters to {args.dir}",
    )
    return 0


def _data_report(args: argparse.Namespace, out: _Output) -> int:
    from trainsvc_lm._data import data_report, load_chat_data
    from trainsvc_lm._tokenizer import Tokenizer

    tokenizer = Tokenizer.from_dir(args.model)
    data = load_chat_data(
        args.file, tokenizer, max_seq_len=args.max_seq_len, truncation=args.truncation
    )
    report = data_report(data)
    out.done({"status": "ok", **report.to_dict()}, str(report))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace, _Output], int]] = {
    "train": _train,
    "grpo": _grpo,
    "export-peft": _export,
    "generate": _generate,
    "init-tiny": _init_tiny,
    "data-report": _data_report,
    "serve": run_serve,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``trainsvc-lm``; returns the exit code."""
    args = build_parser().parse_args(argv)
    out = _Output(args.json)
    try:
        return COMMANDS[args.command](args, out)
    except DistributedError as exc:
        # the run is lost: leave at once, without jax.distributed's shutdown barrier
        # (it would wait for the dead process)
        _fail(out, exc)
        os._exit(1)
    except (LMError, OSError) as exc:
        return _fail(out, exc)
    except Exception as exc:
        from trainsvc_checkpoint import CheckpointError

        from trainsvc_lm._train_log import WandbUnavailableError

        if isinstance(exc, CheckpointError | WandbUnavailableError):
            return _fail(out, exc)
        raise


def _fail(out: _Output, exc: BaseException) -> int:
    field = getattr(exc, "field", None)
    if out.json_mode:
        print(json.dumps({"status": "error", "error": str(exc), "field": field}), flush=True)
    print(f"trainsvc-lm: error: {exc}", file=sys.stderr, flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
