"""A trainer checkpoint as a servable artifact: a PEFT adapter or a complete model directory.

`export_artifact` reads a LoRA or GRPO trainer checkpoint (the file, or the newest
valid one of a run directory) without building a trainer, and writes what a model
registry serves:

- LoRA runs, and GRPO runs with ``train.mode = "lora"``: a PEFT adapter
  (``adapter_config.json`` + ``adapter_model.safetensors``) on the run's
  ``model.dir`` (the artifact's base model);
- GRPO runs with ``train.mode = "full"``: a complete Hugging Face model directory
  (config, weights, tokenizer files; a digit model gets a generated tokenizer).

``python -m trainsvc_lm._export CHECKPOINT OUT_DIR`` does the same and prints the
`ExportedArtifact` as JSON (the service runs it in a child process, so the service
itself never imports JAX).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainsvc_lm._errors import ConfigError


@dataclass(frozen=True)
class ExportedArtifact:
    """What `export_artifact` wrote.

    Attributes:
        kind: ``adapter`` or ``full``.
        path: the directory written.
        base_model: the adapter's base model directory ("" for ``full``).
        checkpoint: the checkpoint file read; step: its step.
        trainer: ``lora`` or ``grpo``.
    """

    kind: str
    path: str
    base_model: str
    checkpoint: str
    step: int
    trainer: str


def _arrays(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _arrays(v) for k, v in tree.items()}
    return np.asarray(tree)


def export_artifact(source: str | Path, out_dir: str | Path) -> ExportedArtifact:
    """Writes the artifact of a checkpoint file or run directory into ``out_dir``.

    Raises:
        ConfigError: (field ``checkpoint``) not a trainsvc-lm trainer checkpoint, or
            an adapter whose run names no base model.
        trainsvc_checkpoint.CheckpointError: a corrupt file.
    """
    from trainsvc_checkpoint import load

    from trainsvc_lm import _grpo, _train
    from trainsvc_lm._peft import TOKENIZER_FILES, export_peft
    from trainsvc_lm._train import find_checkpoint_file

    path = find_checkpoint_file(source)
    tree = load(path)
    meta = json.loads(tree.get("meta", "{}"))
    out = Path(out_dir)
    fmt = meta.get("format")
    step = int(meta.get("step", 0))
    if fmt == _train.STATE_FORMAT:
        saved = _train.read_checkpoint(path)
        base = saved.config.model.dir
        if base is None:
            raise ConfigError("checkpoint", f"{path}: the run names no base model (model.dir)")
        export_peft(out, saved.lora, saved.config.lora, base_model_name_or_path=str(base))
        return ExportedArtifact("adapter", str(out), str(base), str(path), step, "lora")
    if fmt != _grpo.STATE_FORMAT:
        raise ConfigError(
            "checkpoint",
            f"{path} is not a trainsvc-lm trainer checkpoint (format {fmt!r}; expected "
            f"{_train.STATE_FORMAT!r} or {_grpo.STATE_FORMAT!r})",
        )
    from trainsvc_lm._grpo_config import GRPOConfig

    config = GRPOConfig.from_dict(meta["config"])
    trainable = _arrays(tree["trainable"])
    base = config.model.dir
    if config.train.mode == "lora":
        if base is None:
            raise ConfigError("checkpoint", f"{path}: a LoRA run needs model.dir as its base")
        export_peft(out, trainable, config.lora, base_model_name_or_path=str(base))
        return ExportedArtifact("adapter", str(out), str(base), str(path), step, "grpo")
    from trainsvc_lm._config import ModelConfig
    from trainsvc_lm._tasks import digit_model_config, write_digit_tokenizer
    from trainsvc_lm._weights import save_model

    if base is None:
        m = config.model
        model_config = digit_model_config(
            hidden_size=m.hidden_size,
            num_layers=m.num_layers,
            num_heads=m.num_heads,
            intermediate_size=m.intermediate_size,
        )
    else:
        model_config = ModelConfig.from_file(base)
    save_model(out, model_config, trainable)
    if base is None:
        write_digit_tokenizer(out)
    else:
        for name in TOKENIZER_FILES:
            src = Path(base) / name
            if src.is_file():
                (out / name).write_bytes(src.read_bytes())
    return ExportedArtifact("full", str(out), "", str(path), step, "grpo")


def main(argv: list[str] | None = None) -> int:
    """``python -m trainsvc_lm._export CHECKPOINT OUT_DIR``: the artifact, as JSON on stdout."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m trainsvc_lm._export CHECKPOINT_OR_RUN_DIR OUT_DIR", file=sys.stderr)
        return 2
    try:
        exported = export_artifact(args[0], args[1])
    except Exception as exc:  # reported to the caller, who names the request field
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 1
    print(json.dumps(asdict(exported)))
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["ExportedArtifact", "export_artifact"]
