"""The Kaggle workflow with the real ``kaggle`` client against the local fake server (conftest)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from trainsvc_launchers._cli import main
from trainsvc_launchers._kaggle_errors import classify_log

from .conftest import TOKEN, FakeKaggle, FakeSession

CONFIG = """
kind = "emergence"
run_id = "kaggle-run"
seed = 3
step_budget = 1000

[checkpoint]
interval_steps = 100
keep_last = 2

[kaggle]
slug = "trainsvc-demo"
session_hours = 11.0
"""


def _config(tmp_path: Path, text: str = CONFIG) -> Path:
    path = tmp_path / "launch.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _status_json(step: int, finished: bool) -> bytes:
    return json.dumps(
        {"state": "ok", "step": step, "finished": finished, "run_id": "kaggle-run"}
    ).encode()


def _state(state_dir: Path) -> dict[str, Any]:
    return json.loads((state_dir / "state.json").read_text(encoding="utf-8"))


def _kaggle(*args: str, cfg: Path, state_dir: Path) -> int:
    return main(["kaggle", *args, "--config", str(cfg), "--state-dir", str(state_dir), "--json"])


def test_submit_running_complete_downloads_output(
    fake_kaggle: FakeKaggle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, sd = _config(tmp_path), tmp_path / "state"
    fake_kaggle.sessions["trainsvc-demo-s1"] = FakeSession(
        statuses=["QUEUED", "RUNNING", "COMPLETE"],
        files={
            "status.json": _status_json(1000, True),
            "trainsvc-data/ckpt/step_1000.safetensors": b"\x00" * 64,
        },
        log="step 1000/1000 — fertig ✓\n",
    )
    assert _kaggle("submit", cfg=cfg, state_dir=sd) == 0
    pushed = fake_kaggle.pushed[0]
    assert pushed["slug"] == "tester/trainsvc-demo-s1"
    assert pushed["enableGpu"] is True and pushed["kernelType"] == "script"
    assert "kaggle-run" in pushed["text"] and "EMBEDDED_SPEC" in pushed["text"]
    assert fake_kaggle.methods()[0] == "IntrospectToken"
    assert _state(sd)["status"] == "waiting_training"

    assert _kaggle("monitor", "--interval", "0", cfg=cfg, state_dir=sd) == 0
    state = _state(sd)
    assert state["status"] == "completed" and state["next_action"] == "evaluate_results"
    assert state["steps_done"] == 1000 and state["kernel_id"] == "tester/trainsvc-demo-s1"
    out = sd / "output" / "s1"
    assert (out / "trainsvc-data" / "ckpt" / "step_1000.safetensors").read_bytes() == b"\x00" * 64
    assert (out / "trainsvc-demo-s1.log").read_text(
        encoding="utf-8"
    ) == "step 1000/1000 — fertig ✓\n"
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert all({"section", "level", "message"} <= set(line) for line in lines)
    statuses = [line.get("status") for line in lines if "status" in line]
    assert statuses[:3] == ["waiting_training", "in_progress", "completed"]
    for path in sd.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".log"):
            assert TOKEN not in path.read_text(encoding="utf-8")


def test_push_error_in_http_200_is_reported(
    fake_kaggle: FakeKaggle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_kaggle.push_error = "Notebook title is already in use"
    cfg, sd = _config(tmp_path), tmp_path / "state"
    assert _kaggle("submit", cfg=cfg, state_dir=sd) == 1
    out = capsys.readouterr().out
    assert "Notebook title is already in use" in out
    assert _state(sd)["error"]["kind"] == "push_rejected"  # what was tried is recorded


def test_oom_log_is_classified_with_next_step(fake_kaggle: FakeKaggle, tmp_path: Path) -> None:
    cfg, sd = _config(tmp_path), tmp_path / "state"
    fake_kaggle.sessions["trainsvc-demo-s1"] = FakeSession(
        statuses=["RUNNING", "ERROR"],
        log="step 12\njaxlib.xla_extension.XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory while trying to allocate 8.00GiB\n",
        failure_message="Your notebook hit an error",
    )
    assert _kaggle("submit", cfg=cfg, state_dir=sd) == 0
    assert _kaggle("monitor", "--interval", "0", cfg=cfg, state_dir=sd) == 1
    state = _state(sd)
    assert state["status"] == "error" and state["next_action"] == "fix_and_resubmit"
    assert state["error"]["kind"] == "out_of_memory"
    assert "RESOURCE_EXHAUSTED" in state["error"]["evidence"]
    assert "n_envs" in state["error"]["next_step"]


def test_monitor_restarted_midway_resumes(fake_kaggle: FakeKaggle, tmp_path: Path) -> None:
    cfg, sd = _config(tmp_path), tmp_path / "state"
    fake_kaggle.sessions["trainsvc-demo-s1"] = FakeSession(
        statuses=["QUEUED", "RUNNING", "RUNNING", "COMPLETE"],
        files={"status.json": _status_json(1000, True)},
    )
    assert _kaggle("submit", cfg=cfg, state_dir=sd) == 0
    assert _kaggle("monitor", "--interval", "0", "--max-polls", "2", cfg=cfg, state_dir=sd) == 0
    midway = _state(sd)
    assert (
        midway["status"] == "in_progress"
        and midway["polls"] == 2
        and midway["next_action"] == "wait"
    )
    assert _kaggle("monitor", "--interval", "0", cfg=cfg, state_dir=sd) == 0
    final = _state(sd)
    assert final["status"] == "completed" and final["polls"] == 4
    assert final["submitted_at"] == midway["submitted_at"]
    assert fake_kaggle.methods().count("SaveKernel") == 1


def test_chained_second_session_takes_previous_output(
    fake_kaggle: FakeKaggle, tmp_path: Path
) -> None:
    cfg, sd = _config(tmp_path), tmp_path / "state"
    fake_kaggle.sessions["trainsvc-demo-s1"] = FakeSession(
        statuses=["RUNNING", "COMPLETE"], files={"status.json": _status_json(450, False)}
    )
    fake_kaggle.sessions["trainsvc-demo-s2"] = FakeSession(
        statuses=["RUNNING", "COMPLETE"], files={"status.json": _status_json(1000, True)}
    )
    assert _kaggle("submit", cfg=cfg, state_dir=sd) == 0
    assert _kaggle("monitor", "--interval", "0", "--chain", cfg=cfg, state_dir=sd) == 0
    state = _state(sd)
    assert state["session"] == 2 and state["status"] == "completed" and state["steps_done"] == 1000
    assert [h["step"] for h in state["history"]] == [450, 1000]
    second = fake_kaggle.pushed[1]
    assert second["slug"] == "tester/trainsvc-demo-s2"
    assert second["kernelDataSources"] == ["tester/trainsvc-demo-s1"]
    methods = [
        m for m in fake_kaggle.methods() if m in ("SaveKernel", "GetAcceleratorQuotaStatistics")
    ]
    assert methods == ["GetAcceleratorQuotaStatistics", "SaveKernel"] * 2


def test_chain_without_progress_is_a_crash_loop(fake_kaggle: FakeKaggle, tmp_path: Path) -> None:
    cfg, sd = _config(tmp_path), tmp_path / "state"
    for n in range(1, 6):
        fake_kaggle.sessions[f"trainsvc-demo-s{n}"] = FakeSession(
            statuses=["COMPLETE"], files={"status.json": _status_json(200, False)}
        )
    assert _kaggle("submit", cfg=cfg, state_dir=sd) == 0
    assert _kaggle("monitor", "--interval", "0", "--chain", cfg=cfg, state_dir=sd) == 2
    assert fake_kaggle.methods().count("SaveKernel") == 3


def test_quota_exhausted_blocks_submit(fake_kaggle: FakeKaggle, tmp_path: Path) -> None:
    fake_kaggle.quota_used_s = fake_kaggle.quota_total_s - 600
    assert _kaggle("submit", cfg=_config(tmp_path), state_dir=tmp_path / "state") == 1
    assert "SaveKernel" not in fake_kaggle.methods()


def test_credentials_from_dotenv_legacy_key(
    fake_kaggle: FakeKaggle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KAGGLE_API_TOKEN")
    env_file = tmp_path / ".env"
    env_file.write_text('KAGGLE_USERNAME=tester\nKAGGLE_KEY="legacy-key-abc"\n', encoding="utf-8")
    sd = tmp_path / "state"
    code = main(
        [
            "kaggle",
            "submit",
            "--config",
            str(_config(tmp_path)),
            "--state-dir",
            str(sd),
            "--env-file",
            str(env_file),
        ]
    )
    assert code == 0
    assert "IntrospectToken" not in fake_kaggle.methods()
    assert any(h.startswith("Basic ") for h in fake_kaggle.auth_headers)
    assert "legacy-key-abc" not in (sd / "state.json").read_text(encoding="utf-8")


def test_missing_credentials_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle-dir"))
    code = main(
        [
            "kaggle",
            "status",
            "--config",
            str(_config(tmp_path)),
            "--env-file",
            str(tmp_path / "none.env"),
        ]
    )
    assert code == 1
    assert "KAGGLE_API_TOKEN" in capsys.readouterr().out


def test_datasets_uploads_wheels(fake_kaggle: FakeKaggle, tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "trainsvc-0.1.0-py3-none-any.whl").write_bytes(b"PK-not-really-a-wheel")
    assert (
        main(
            [
                "kaggle",
                "datasets",
                "--wheels-dir",
                str(wheels),
                "--dataset",
                "tester/trainsvc-wheels",
            ]
        )
        == 0
    )
    assert list(fake_kaggle.uploads.values()) == [b"PK-not-really-a-wheel"]
    create = next(body for name, body in fake_kaggle.calls if name == "CreateDataset")
    assert create["slug"] == "trainsvc-wheels" and create["isPrivate"] is True


def test_background_monitor_survives_in_new_session(
    fake_kaggle: FakeKaggle, tmp_path: Path
) -> None:
    cfg, sd = _config(tmp_path), tmp_path / "state"
    fake_kaggle.sessions["trainsvc-demo-s1"] = FakeSession(
        statuses=["RUNNING", "COMPLETE"], files={"status.json": _status_json(1000, True)}
    )
    assert _kaggle("submit", cfg=cfg, state_dir=sd) == 0
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainsvc_launchers",
            "kaggle",
            "monitor",
            "--config",
            str(cfg),
            "--state-dir",
            str(sd),
            "--interval",
            "0.1",
            "--background",
            "--json",
        ],
        capture_output=True,
        text=True,
        encoding="utf-8",
        check=True,
        timeout=120,
    )
    pid = json.loads(proc.stdout.splitlines()[0])["pid"]
    deadline = time.monotonic() + 120
    while _state(sd)["status"] != "completed" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _state(sd)["status"] == "completed"
    with contextlib.suppress(ProcessLookupError):  # unless it already finished:
        assert os.getsid(pid) == pid  # its own session: closing our terminal does not end it
    # The monitor saves state.json before it logs its final report: wait for that line.
    log = sd / "monitor.log"
    while "completed" not in log.read_text(encoding="utf-8") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "completed" in log.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("log", "kind"),
    [
        ("requests.exceptions.ReadTimeout: HTTPSConnectionPool read timed out", "network_timeout"),
        ("ModuleNotFoundError: No module named 'trainsvc_client'", "missing_dependency"),
        (
            "FileNotFoundError: [Errno 2] No such file or directory: '/kaggle/input/wheels'",
            "missing_dataset",
        ),
        ("Your notebook exceeded the maximum run time of 12 hours", "session_or_quota_limit"),
        ("Killed: OOM while allocating", "out_of_memory"),
        ("something odd happened", "unknown"),
    ],
)
def test_error_classification(log: str, kind: str) -> None:
    result = classify_log(log)
    assert result.kind == kind and result.next_step


def test_status_and_output_commands(
    fake_kaggle: FakeKaggle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, sd = _config(tmp_path), tmp_path / "state"
    fake_kaggle.sessions["trainsvc-demo-s1"] = FakeSession(
        statuses=["RUNNING", "COMPLETE"],
        files={"status.json": _status_json(1000, True)},
        log="ok\n",
    )
    assert _kaggle("status", cfg=cfg, state_dir=sd) == 0
    assert "nothing submitted yet" in capsys.readouterr().out
    assert _kaggle("submit", cfg=cfg, state_dir=sd) == 0
    capsys.readouterr()
    assert _kaggle("status", cfg=cfg, state_dir=sd) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["quota"]["total_hours"] == 30.0 and lines[0]["quota"]["used_hours"] == 1.0
    assert lines[-1]["state"]["status"] == "in_progress"
    assert _kaggle("output", cfg=cfg, state_dir=sd) == 0
    assert (
        json.loads((sd / "output" / "s1" / "status.json").read_text(encoding="utf-8"))["step"]
        == 1000
    )


def _half_done_chain(fake_kaggle: FakeKaggle, tmp_path: Path) -> tuple[Path, Path]:
    """Session 1 ends at step 450 of 1000; session 2 (when pushed) finishes the run."""
    cfg, sd = _config(tmp_path), tmp_path / "state"
    fake_kaggle.sessions["trainsvc-demo-s1"] = FakeSession(
        statuses=["COMPLETE"], files={"status.json": _status_json(450, False)}
    )
    fake_kaggle.sessions["trainsvc-demo-s2"] = FakeSession(
        statuses=["COMPLETE"], files={"status.json": _status_json(1000, True)}
    )
    assert _kaggle("submit", cfg=cfg, state_dir=sd) == 0
    return cfg, sd


def _assert_session_2_continues_session_1(fake_kaggle: FakeKaggle, sd: Path) -> None:
    pushed = [p for p in fake_kaggle.pushed if p["slug"] == "tester/trainsvc-demo-s2"]
    assert pushed and pushed[-1]["kernelDataSources"] == ["tester/trainsvc-demo-s1"]
    assert [p["slug"] for p in fake_kaggle.pushed].count("tester/trainsvc-demo-s1") == 1


def test_chain_resumes_after_a_quota_refusal(fake_kaggle: FakeKaggle, tmp_path: Path) -> None:
    cfg, sd = _half_done_chain(fake_kaggle, tmp_path)
    fake_kaggle.quota_used_s = int(29.5 * 3600)
    assert _kaggle("monitor", "--interval", "0", "--chain", cfg=cfg, state_dir=sd) == 1
    state = _state(sd)
    assert (state["session"], state["next_action"]) == (1, "wait_for_quota")
    assert "monitor --chain" in state["error"]["next_step"]
    # plain submit neither pushes session 1 again nor ignores the quota
    assert _kaggle("submit", cfg=cfg, state_dir=sd) == 1
    fake_kaggle.quota_used_s = 3600  # the quota is back
    assert _kaggle("monitor", "--interval", "0", "--chain", cfg=cfg, state_dir=sd) == 0
    state = _state(sd)
    assert (state["session"], state["steps_done"], state["status"]) == (2, 1000, "completed")
    _assert_session_2_continues_session_1(fake_kaggle, sd)


def test_quota_refusal_then_submit_next_or_plain_submit(
    fake_kaggle: FakeKaggle, tmp_path: Path
) -> None:
    cfg, sd = _half_done_chain(fake_kaggle, tmp_path)
    fake_kaggle.quota_used_s = int(29.5 * 3600)
    assert _kaggle("monitor", "--interval", "0", "--chain", cfg=cfg, state_dir=sd) == 1
    fake_kaggle.quota_used_s = 3600
    assert _kaggle("submit", "--next", cfg=cfg, state_dir=sd) == 0
    assert _state(sd)["session"] == 2
    _assert_session_2_continues_session_1(fake_kaggle, sd)


def test_rejected_chain_push_then_resubmit_pushes_the_next_session(
    fake_kaggle: FakeKaggle, tmp_path: Path
) -> None:
    cfg, sd = _half_done_chain(fake_kaggle, tmp_path)
    fake_kaggle.push_error = "Notebook title already in use"
    assert _kaggle("monitor", "--interval", "0", "--chain", cfg=cfg, state_dir=sd) == 1
    state = _state(sd)
    assert state["next_action"] == "fix_and_resubmit"
    assert "submit --next" in state["error"]["next_step"]
    fake_kaggle.push_error = None
    assert _kaggle("submit", "--resubmit", cfg=cfg, state_dir=sd) == 0
    state = _state(sd)
    assert (state["session"], state["attempt"]) == (2, 1)
    _assert_session_2_continues_session_1(fake_kaggle, sd)


def test_a_rejected_first_push_is_recorded(fake_kaggle: FakeKaggle, tmp_path: Path) -> None:
    cfg, sd = _config(tmp_path), tmp_path / "state"
    fake_kaggle.push_error = "Invalid dataset sources"
    assert _kaggle("submit", cfg=cfg, state_dir=sd) == 1
    state = _state(sd)
    assert state["next_action"] == "fix_and_resubmit"
    assert state["error"]["kind"] == "push_rejected"
    assert "Invalid dataset sources" in state["error"]["message"]
    fake_kaggle.push_error = None
    assert _kaggle("submit", "--resubmit", cfg=cfg, state_dir=sd) == 0
    assert (_state(sd)["session"], _state(sd)["status"]) == (1, "waiting_training")


def test_chain_crash_loop_says_so_in_next_action(fake_kaggle: FakeKaggle, tmp_path: Path) -> None:
    cfg, sd = _config(tmp_path), tmp_path / "state"
    for n in range(1, 6):
        fake_kaggle.sessions[f"trainsvc-demo-s{n}"] = FakeSession(
            statuses=["COMPLETE"], files={"status.json": _status_json(200, False)}
        )
    assert _kaggle("submit", cfg=cfg, state_dir=sd) == 0
    assert _kaggle("monitor", "--interval", "0", "--chain", cfg=cfg, state_dir=sd) == 2
    state = _state(sd)
    assert state["next_action"] == "fix_and_resubmit"
    assert state["error"]["kind"] == "crash_loop"
    # monitoring again does not push another session
    assert _kaggle("monitor", "--interval", "0", "--chain", cfg=cfg, state_dir=sd) == 2
    assert fake_kaggle.methods().count("SaveKernel") == 3


def test_a_second_monitor_of_a_chain_does_not_push(
    fake_kaggle: FakeKaggle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from trainsvc_launchers._kaggle_flow import chain_lock

    cfg, sd = _half_done_chain(fake_kaggle, tmp_path)
    with chain_lock(sd) as holder:  # the first monitor, still running
        assert holder is None
        assert _kaggle("monitor", "--interval", "0", "--chain", cfg=cfg, state_dir=sd) == 1
        assert "another monitor is already running" in capsys.readouterr().out
    assert [p["slug"] for p in fake_kaggle.pushed] == ["tester/trainsvc-demo-s1"]
    # once it is gone, a monitor runs
    assert _kaggle("monitor", "--interval", "0", "--chain", cfg=cfg, state_dir=sd) == 0
    assert [p["slug"] for p in fake_kaggle.pushed].count("tester/trainsvc-demo-s2") == 1


def test_evidence_from_a_json_array_log_is_the_matching_line() -> None:
    entries = [
        {"stream_name": "stdout", "time": 1.5, "data": "Installing trainsvc...\n"},
        {"stream_name": "stdout", "time": 9.0, "data": "step 100 loss 0.5\n" * 20},
        {
            "stream_name": "stderr",
            "time": 42.0,
            "data": "jaxlib.xla_extension.XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory "
            "while trying to allocate 17179869184 bytes.\n",
        },
        {"stream_name": "stderr", "time": 42.1, "data": "Traceback (most recent call last):"},
    ]
    cls = classify_log(json.dumps(entries))
    assert cls.kind == "out_of_memory"
    assert cls.evidence == (
        "jaxlib.xla_extension.XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory "
        "while trying to allocate 17179869184 bytes."
    )


def test_a_cancelled_session_says_so(
    fake_kaggle: FakeKaggle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, sd = _config(tmp_path), tmp_path / "state"
    fake_kaggle.sessions["trainsvc-demo-s1"] = FakeSession(statuses=["CANCEL_ACKNOWLEDGED"])
    assert _kaggle("submit", cfg=cfg, state_dir=sd) == 0
    assert _kaggle("monitor", "--interval", "0", cfg=cfg, state_dir=sd) == 1
    out = capsys.readouterr().out
    assert "None" not in out
    assert "failed (cancelled): the session was cancelled on Kaggle (CANCEL_ACKNOWLEDGED)" in out
    assert _state(sd)["error"]["kind"] == "cancelled"


def test_the_kernel_kaggle_saved_is_the_one_followed(
    fake_kaggle: FakeKaggle, tmp_path: Path
) -> None:
    cfg, sd = _config(tmp_path), tmp_path / "state"
    fake_kaggle.saved_as["tester/trainsvc-demo-s1"] = "tester/trainsvc-demo-s1-renamed"
    fake_kaggle.sessions["trainsvc-demo-s1-renamed"] = FakeSession(
        statuses=["COMPLETE"], files={"status.json": _status_json(1000, True)}
    )
    assert _kaggle("submit", cfg=cfg, state_dir=sd) == 0
    assert _state(sd)["kernel_id"] == "tester/trainsvc-demo-s1-renamed"
    assert _kaggle("monitor", "--interval", "0", cfg=cfg, state_dir=sd) == 0
    assert _state(sd)["steps_done"] == 1000


def test_datasets_adds_a_version_to_an_existing_dataset(
    fake_kaggle: FakeKaggle, tmp_path: Path
) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "trainsvc-0.1.0-py3-none-any.whl").write_bytes(b"PK-first")
    args = ["kaggle", "datasets", "--wheels-dir", str(wheels), "--dataset", "tester/trainsvc-whl"]
    assert main(args) == 0
    (wheels / "trainsvc-0.1.0-py3-none-any.whl").unlink()
    (wheels / "trainsvc-0.2.0-py3-none-any.whl").write_bytes(b"PK-second")
    assert main(args) == 0
    names = [name for name, _ in fake_kaggle.calls]
    assert names.count("CreateDataset") == 1 and names.count("CreateDatasetVersion") == 1
    version = next(body for name, body in fake_kaggle.calls if name == "CreateDatasetVersion")
    assert version["datasetSlug"] == "trainsvc-whl"
    assert b"PK-second" in fake_kaggle.uploads.values()


def test_a_second_background_monitor_is_refused_at_once(
    fake_kaggle: FakeKaggle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from trainsvc_launchers._kaggle_flow import chain_lock

    cfg, sd = _half_done_chain(fake_kaggle, tmp_path)
    with chain_lock(sd):
        code = _kaggle("monitor", "--chain", "--background", cfg=cfg, state_dir=sd)
    assert code == 1
    assert "a monitor is already running for this chain" in capsys.readouterr().out
    assert not (sd / "monitor.pid.json").exists()
