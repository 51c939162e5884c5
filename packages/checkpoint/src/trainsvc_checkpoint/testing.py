"""A local S3-compatible server for tests and benchmarks of remote checkpoints.

`local_s3()` starts moto's S3 server on 127.0.0.1 (a free port), creates a
bucket and yields a `LocalS3`: its endpoint, a boto3 client, and the
credentials in the forms the code under test takes (s3fs ``storage_options``,
``AWS_*`` environment variables). It needs ``moto[server]`` and ``boto3``,
which are development dependencies, not this library's.

Example::

    from trainsvc_checkpoint.testing import local_s3

    with local_s3("runs") as s3:
        ckpt.save(s3.url("demo/step_1.safetensors"), tree, storage_options=s3.storage_options)
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REGION = "us-east-1"


@dataclass(frozen=True)
class LocalS3:
    """A running local S3 server with one bucket (see `local_s3`)."""

    endpoint: str
    bucket: str
    key: str
    secret: str = ""
    client: Any = None
    """A boto3 S3 client of the server (None when `local_s3(auth=True)`)."""

    def url(self, path: str = "") -> str:
        """``s3://<bucket>/<path>``."""
        return f"s3://{self.bucket}/{path}".rstrip("/")

    @property
    def storage_options(self) -> dict[str, Any]:
        """The s3fs options of this server and its credentials."""
        return {
            "key": self.key,
            "secret": self.secret,
            "client_kwargs": {"endpoint_url": self.endpoint, "region_name": REGION},
        }

    @property
    def env(self) -> dict[str, str]:
        """The same credentials as ``AWS_*`` environment variables (no endpoint)."""
        return {
            "AWS_ACCESS_KEY_ID": self.key,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_DEFAULT_REGION": REGION,
        }

    def keys(self, prefix: str) -> list[str]:
        """The keys under ``prefix/``, without it, sorted."""
        reply = self.client.list_objects_v2(Bucket=self.bucket, Prefix=f"{prefix}/")
        return sorted(o["Key"].removeprefix(f"{prefix}/") for o in reply.get("Contents", []))


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def local_s3(
    bucket: str = "trainsvc-test",
    *,
    key: str = "test",
    secret: str = "test",
    process: bool = False,
    auth: bool = False,
) -> Iterator[LocalS3]:
    """moto's S3 server on 127.0.0.1 with ``bucket`` created; stopped on exit.

    Args:
        bucket: the bucket to create (none with ``auth``).
        key, secret: the credentials the client and the options carry (moto
            accepts any unless ``auth``).
        process: run the server as its own process (``moto_server``) instead of a
            thread of this one, so that it does not share the caller's GIL
            (benchmarks).
        auth: a server process that checks every request's signature (moto's IAM
            emulation from the first call): no credentials are valid, so every
            request is refused as a bad key would be. No bucket, no client.

    Raises:
        ImportError: moto or boto3 is not installed.
        RuntimeError: the server did not start within 30 s.
    """
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    if process or auth:
        stop = _start_process(port, auth)
    else:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        stop = server.stop
    try:
        if auth:
            yield LocalS3(endpoint, bucket, key, secret)
            return
        import boto3  # type: ignore[import-untyped]

        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            region_name=REGION,
        )
        client.create_bucket(Bucket=bucket)
        yield LocalS3(endpoint, bucket, key, secret, client)
    finally:
        stop()


def _start_process(port: int, auth: bool) -> Any:
    """Start ``moto_server`` on ``port``; return what stops it."""
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"} if auth else None
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def stop() -> None:
        server.kill()
        server.wait()

    deadline = time.monotonic() + 30
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return stop
        if server.poll() is not None or time.monotonic() > deadline:
            stop()
            raise RuntimeError(f"moto_server did not start on 127.0.0.1:{port}")
        time.sleep(0.1)
