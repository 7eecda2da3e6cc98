"""Local processes for development and tests: redis-server, rclone's S3 server, sdq itself."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

DEV_S3_KEY = "sdq-dev"
DEV_S3_SECRET = "sdq-dev-secret"  # noqa: S105 - loopback-only development server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout_s: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s}s")


def find_binary(name: str) -> str:
    """A binary on PATH, or beside this interpreter (a virtualenv's bin/)."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if not found:
        raise FileNotFoundError(f"{name} not found on PATH")
    return found


@dataclass
class Service:
    """A child process started in its own process group, so its children stop with it."""

    name: str
    proc: subprocess.Popen
    port: int | None = None
    log_path: Path | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def stop(self, timeout_s: float = 15.0) -> None:
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait()
        # Reap stragglers of the group (e.g. a prefork child that ignored SIGTERM).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def spawn(
    name: str, args: list[str], *, log_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )


def start_redis(data_dir: Path, *, port: int | None = None, appendonly: bool = True) -> Service:
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    args = [
        find_binary("redis-server"),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(data_dir),
        "--save", "",
        "--appendonly", "yes" if appendonly else "no",
        "--appendfsync", "everysec",
        "--maxmemory-policy", "noeviction",
    ]  # fmt: skip
    log_path = data_dir / "redis.log"
    proc = spawn("redis", args, log_path=log_path)
    wait_for_port(port, proc=proc)
    return Service("redis", proc, port, log_path, {"url": f"redis://127.0.0.1:{port}/0"})


def start_s3(
    data_dir: Path,
    *,
    port: int | None = None,
    key: str = DEV_S3_KEY,
    secret: str = DEV_S3_SECRET,
) -> Service:
    """``rclone serve s3`` over a local folder: a real S3 server that checks signatures."""
    port = port or free_port()
    root = data_dir / "objects"
    root.mkdir(parents=True, exist_ok=True)
    args = [
        find_binary("rclone"),
        "serve", "s3", str(root),
        "--addr", f"127.0.0.1:{port}",
        "--auth-key", f"{key},{secret}",
        "--dir-cache-time", "1s",
        "--config", "/dev/null",
        "--log-level", "NOTICE",
    ]  # fmt: skip
    log_path = data_dir / "rclone.log"
    proc = spawn("s3", args, log_path=log_path)
    wait_for_port(port, proc=proc)
    return Service("s3", proc, port, log_path, {"url": f"http://127.0.0.1:{port}"})


def sdq_command(*args: str) -> list[str]:
    """Run the sdq CLI with this interpreter (works without the console script on PATH)."""
    return [sys.executable, "-m", "cli.main", *args]
