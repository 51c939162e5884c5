"""Bearer tokens, the loopback rule and TLS."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from trainsvc_client import UnauthenticatedError, connect

TOKEN = "s3cret-token"


def test_token_is_required_when_configured(start_service: Any, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n", encoding="utf-8")
    svc = start_service(extra=["--token-file", str(token_file)], token=TOKEN)
    with svc.client() as anonymous, pytest.raises(UnauthenticatedError):
        anonymous.list_runs_page()
    with svc.client("wrong") as wrong, pytest.raises(UnauthenticatedError):
        wrong.get_run("runs/x")
    with svc.client("wrong") as wrong, pytest.raises(UnauthenticatedError):
        list(wrong.stream_events("runs/-"))
    with svc.client(TOKEN) as good:
        assert list(good.list_runs()) == []
    # Health checks stay open for probes.
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(svc.address) as ch:
        assert (
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5).status
            == 1
        )


def test_beyond_loopback_needs_a_token_or_insecure(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        "-c",
        "from trainsvc import main; main()",
        "serve",
        "--listen",
        "0.0.0.0:0",
        "--data-dir",
        str(tmp_path / "d"),
        "--metrics-listen",
        "",
    ]
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"}
    )
    assert out.returncode == 1
    assert "token" in out.stderr and "--insecure" in out.stderr


def test_tls(start_service: Any, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    svc = start_service(extra=["--tls-cert", str(cert), "--tls-key", str(key)], ready=False)
    with connect(
        svc.address, tls=True, root_certificates=cert.read_bytes(), server_name="localhost"
    ) as c:
        import time

        for _ in range(100):
            try:
                assert list(c.list_runs()) == []
                break
            except Exception:
                time.sleep(0.2)
        else:
            raise AssertionError(svc.log())
    with connect(svc.address) as plain, pytest.raises(Exception):  # noqa: B017
        plain.list_runs_page(timeout=3)


def test_metrics_beyond_loopback_need_a_token_or_insecure(tmp_path: Path) -> None:
    # Issue 24, item 15: --metrics-listen 0.0.0.0 needed no token.
    cmd = [
        sys.executable,
        "-c",
        "from trainsvc import main; main()",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        str(tmp_path / "d"),
        "--metrics-listen",
        "0.0.0.0:0",
    ]
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"}
    )
    assert out.returncode == 1
    assert "--metrics-listen" in out.stderr and "--insecure" in out.stderr


def test_metrics_need_the_token_when_one_is_configured(start_service: Any, tmp_path: Path) -> None:
    import urllib.error
    import urllib.request

    token_file = tmp_path / "token"
    token_file.write_text(TOKEN, encoding="utf-8")
    svc = start_service(
        extra=["--token-file", str(token_file), "--metrics-listen", "127.0.0.1:0"], token=TOKEN
    )
    url = f"http://127.0.0.1:{svc.metrics_port()}/metrics"
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10)
        assert info.value.code == 401
        info.value.close()
    good = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(good, timeout=10) as reply:
        assert b"trainsvc_runs" in reply.read()
