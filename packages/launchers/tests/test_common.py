"""Output layer, configs, preflight on this machine, crash-loop detection, kernel folders, notebook."""

from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path

import nbformat
import pytest
from trainsvc_launchers._cli import main
from trainsvc_launchers._config import ConfigError, load_launch_config
from trainsvc_launchers._crashloop import METADATA_FILE, CrashLoopError, record_resume
from trainsvc_launchers._kaggle_kernel import BOOTSTRAP_FILE, KaggleSpec, build_kernel_folder
from trainsvc_launchers._launch import log_path, m4_config
from trainsvc_launchers._notebook import notebook_text
from trainsvc_launchers._output import Reporter

REPO = Path(__file__).resolve().parents[3]


def test_reporter_text_json_and_colour() -> None:
    plain = io.StringIO()
    Reporter(stream=plain).success("SETUP-H100", "GPU found")
    assert plain.getvalue() == "[SETUP-H100] ✅ SUCCESS: GPU found\n"
    coloured = io.StringIO()
    Reporter(stream=coloured, colour=True).error("SETUP-H100", "no GPU")
    assert "\033[31m❌ ERROR\033[0m" in coloured.getvalue()
    as_json = io.StringIO()
    rep = Reporter(stream=as_json, json_mode=True)
    rep.warning("TRAINING-M4", "hot", limit=80)
    assert json.loads(as_json.getvalue()) == {
        "section": "TRAINING-M4",
        "level": "warning",
        "message": "hot",
        "limit": 80,
    }
    assert rep.warnings == 1


def test_bad_config_names_every_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        'kind = "chess"\nrun_id = "Bad_ID"\nstep_budget = -5\ncolour = 1\n[checkpoint]\nkeep_last = 0\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        load_launch_config(path)
    fields = {e.field for e in info.value.errors}
    assert fields == {"kind", "run_id", "step_budget", "colour", "checkpoint.keep_last"}
    assert "[1, 1000]" in str(info.value) and "emergence, othello" in str(info.value)


def test_bad_trainer_fields_use_the_trainer_validation(tmp_path: Path) -> None:
    pytest.importorskip("trainsvc_trainer")
    path = tmp_path / "bad.toml"
    path.write_text(
        "[emergence.env]\nn_envs = 0\nheight = 2\n[emergence.train]\nlearning_rate = 5.0\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        load_launch_config(path)
    fields = {e.field for e in info.value.errors}
    assert fields == {
        "emergence.env.n_envs",
        "emergence.env.height",
        "emergence.train.learning_rate",
    }
    assert "in [1, 4096]" in str(info.value)


def test_unreadable_config(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("kind = [", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid toml"):
        load_launch_config(path)


def test_preflight_on_this_machine_reports_no_gpu(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """This machine has no GPU: ``local`` passes with a warning, ``h100`` fails cleanly (exit 1)."""
    cfg = tmp_path / "ok.toml"
    cfg.write_text('run_id = "pf"\nstep_budget = 10\n', encoding="utf-8")
    assert (
        main(
            [
                "preflight",
                "--target",
                "local",
                "--config",
                str(cfg),
                "--data-dir",
                str(tmp_path),
                "--json",
            ]
        )
        == 0
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    checks = {line["check"]: line for line in lines}
    assert set(checks) == {"python", "accelerator", "config", "disk", "ram", "overall"}
    assert (
        checks["accelerator"]["level"] == "warning"
        and "no accelerator" in checks["accelerator"]["message"]
    )
    assert checks["overall"]["passed"] is True
    assert main(["preflight", "--target", "h100", "--data-dir", str(tmp_path)]) == 1
    text = capsys.readouterr().out
    assert "[PREFLIGHT-H100] ❌ ERROR: accelerator: no NVIDIA GPU found" in text
    assert "preflight failed: accelerator" in text


def test_preflight_fails_on_bad_config_and_huge_disk_need(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "big.toml"
    cfg.write_text(
        "step_budget = 0\n[resources]\ncheckpoint_mb = 900000\nmin_ram_gb = 99999\n",
        encoding="utf-8",
    )
    assert (
        main(["preflight", "--target", "local", "--config", str(cfg), "--data-dir", str(tmp_path)])
        == 1
    )
    assert (
        "config: step_budget: must be an integer in [1, 1000000000000], got 0"
        in capsys.readouterr().out
    )
    cfg.write_text("[resources]\ncheckpoint_mb = 900000\nmin_ram_gb = 99999\n", encoding="utf-8")
    assert (
        main(["preflight", "--target", "local", "--config", str(cfg), "--data-dir", str(tmp_path)])
        == 1
    )
    out = capsys.readouterr().out
    assert "❌ ERROR: disk:" in out and "❌ ERROR: ram:" in out


def test_preflight_kaggle_needs_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle-dir"))
    env = tmp_path / ".env"
    assert main(["preflight", "--target", "kaggle", "--env-file", str(env)]) == 1
    assert "credentials: no Kaggle credentials" in capsys.readouterr().out
    env.write_text("KAGGLE_API_TOKEN=abc-secret\n", encoding="utf-8")
    assert main(["preflight", "--target", "kaggle", "--env-file", str(env)]) == 0
    out = capsys.readouterr().out
    assert f"Kaggle credentials from {env}" in out and "abc-secret" not in out


def test_crash_loop_same_step_three_times_and_progress_resets(tmp_path: Path) -> None:
    assert record_resume(tmp_path, "step_100.safetensors", 100).resume_count == 1
    assert record_resume(tmp_path, "step_100.safetensors", 100).resume_count == 2
    with pytest.raises(CrashLoopError, match="resumed from step 100"):
        record_resume(tmp_path, "step_100.safetensors", 100)
    meta = json.loads((tmp_path / METADATA_FILE).read_text(encoding="utf-8"))
    assert meta["resume_count"] == 3 and meta["last_checkpoint"] == "step_100.safetensors"
    assert record_resume(tmp_path, "step_200.safetensors", 200).resume_count == 1  # progress resets


def test_log_file_naming(tmp_path: Path) -> None:
    now = dt.datetime(2026, 11, 23, 19, 4, 5)
    first = log_path(tmp_path, now)
    assert first.name == "training_20261123_190405.log"
    first.touch()
    assert log_path(tmp_path, now).name == "training_20261123_190405_2.log"


def test_m4_config_is_smaller_with_frequent_checkpoints(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        "[checkpoint]\ninterval_steps = 5000\n[emergence.env]\nn_envs = 64\n", encoding="utf-8"
    )
    small = m4_config(load_launch_config(path))
    assert small.trainer["env"]["n_envs"] == 4 and small.interval_steps == 200


def test_kernel_folder(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        'run_id = "k"\n[kaggle]\nslug = "my-run"\nwheels_dataset = "me/wheels"\nenable_internet = false\n',
        encoding="utf-8",
    )
    cfg = load_launch_config(path)
    spec = KaggleSpec.from_dict(cfg.kaggle, owner="me")
    folder = build_kernel_folder(cfg, spec, 3, tmp_path / "kernel")
    meta = json.loads((folder / "kernel-metadata.json").read_text(encoding="utf-8"))
    assert (
        meta["id"] == "me/my-run-s3"
        and meta["title"] == "my-run-s3"
        and meta["code_file"] == BOOTSTRAP_FILE
    )
    assert meta["kernel_sources"] == ["me/my-run-s2"] and meta["dataset_sources"] == ["me/wheels"]
    assert (
        meta["enable_internet"] is False
        and meta["kernel_type"] == "script"
        and meta["machine_shape"] == "NvidiaTeslaT4"
    )
    script = (folder / BOOTSTRAP_FILE).read_text(encoding="utf-8")
    compile(script, BOOTSTRAP_FILE, "exec")
    assert "'run_id': 'k'" in script and "'session': 3" in script


def test_kaggle_spec_errors_name_fields() -> None:
    with pytest.raises(ConfigError) as info:
        KaggleSpec.from_dict(
            {"slug": "X", "session_hours": 13, "machine_shape": "A100", "dataset_sources": ["nope"]}
        )
    fields = {e.field for e in info.value.errors}
    assert fields == {
        "kaggle.owner",
        "kaggle.slug",
        "kaggle.session_hours",
        "kaggle.machine_shape",
        "kaggle.dataset_sources",
    }


def test_committed_notebook_is_generated_and_valid() -> None:
    committed = REPO / "notebooks" / "kaggle_training.ipynb"
    text = committed.read_text(encoding="utf-8")
    assert text == notebook_text(), (
        "regenerate: trainsvc-launch kaggle notebook --out notebooks/kaggle_training.ipynb"
    )
    nb = nbformat.reads(text, as_version=4)
    nbformat.validate(nb)
    sources = "\n".join(cell.source for cell in nb.cells)
    for step in ("install(", "verify_gpu()", "restore_from_inputs()", "open_run(", "train("):
        assert step in sources


def test_redact_scrubs_secrets_from_text() -> None:
    from trainsvc_launchers._credentials import KaggleCredentials, redact

    creds = KaggleCredentials("environment", {"KAGGLE_USERNAME": "me", "KAGGLE_KEY": "s3cr3t"})
    assert creds.secrets == ["s3cr3t"]
    assert redact("401 for me with key s3cr3t", creds.secrets) == "401 for me with key ***"
    assert "s3cr3t" not in repr(creds)


BAD_KAGGLE = """
kind = "othello"
run_id = "bad-sections"
step_budget = 1000

[othello]
search_depth = -2
epsilon = 3.0
no_such_field = 1
frame_interval = 0

[kaggle]
slug = "X"
enable_gpu = "yes"
enable_internet = 1
machine_shape = "Cray"
session_hours = 13
checkpoint_minutes = -5
dataset_sources = "me/data"
wandb = "no"
colour = "blue"
"""


def test_preflight_kaggle_names_every_bad_kaggle_and_othello_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("trainsvc_engine")
    monkeypatch.setenv("KAGGLE_API_TOKEN", "t")
    cfg = tmp_path / "run.toml"
    cfg.write_text(BAD_KAGGLE, encoding="utf-8")
    code = main(["preflight", "--target", "kaggle", "--config", str(cfg)])
    out = capsys.readouterr().out
    assert code == 1
    assert "preflight passed" not in out
    for name in (
        "kaggle.slug",
        "kaggle.enable_gpu",
        "kaggle.enable_internet",
        "kaggle.machine_shape",
        "kaggle.session_hours",
        "kaggle.checkpoint_minutes",
        "kaggle.dataset_sources",
        "kaggle.wandb",
        "kaggle.colour",
        "othello.search_depth",
        "othello.epsilon",
        "othello.no_such_field",
        "othello.frame_interval",
    ):
        assert name in out, name


def test_credentials_from_the_official_kaggle_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trainsvc_launchers._credentials import find_kaggle_credentials

    for name in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    (home / ".kaggle").mkdir(parents=True)
    (home / ".kaggle" / "kaggle.json").write_text('{"username": "ann", "key": "k1"}')
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("KAGGLE_CONFIG_DIR", raising=False)
    creds = find_kaggle_credentials(tmp_path / "none.env")
    assert creds is not None and creds.values == {"KAGGLE_USERNAME": "ann", "KAGGLE_KEY": "k1"}
    assert creds.source == str(home / ".kaggle" / "kaggle.json")
    other = tmp_path / "cfgdir"
    other.mkdir()
    (other / "kaggle.json").write_text('{"username": "bob", "key": "k2"}')
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(other))
    creds = find_kaggle_credentials(tmp_path / "none.env")
    assert creds is not None and creds.values["KAGGLE_USERNAME"] == "bob"
