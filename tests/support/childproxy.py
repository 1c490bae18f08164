"""The proxy as a child process (``python -m imapproxy --config ...``), for tests that measure
the process itself (descriptors, RSS) or want it on its own core (stress).

Ready means READY=1 on a private NOTIFY_SOCKET (the listener is bound by then). Stopped by its
own PID only.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ChildProxy:
    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        rules: str = "",
        limits: str = "",
        metrics: bool = False,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        # A short directory: AF_UNIX paths are limited to 107 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix="cpx"))
        self.port = free_port()
        self.metrics_port = free_port() if metrics else None
        metrics_line = (
            f'metrics: {{address: "127.0.0.1:{self.metrics_port}"}}\n'
            if metrics
            else "metrics: {address: null}\n"
        )
        # Its own control socket: the default as root (/run/imapproxy/control.sock) would be
        # shared by every proxy on the machine, and another test's client would reach it.
        self.control_path = self.dir / "control.sock"
        config = self.dir / "config.yaml"
        config.write_text(
            f'listen: "127.0.0.1:{self.port}"\n'
            f'upstream: {{address: "{upstream[0]}:{upstream[1]}", tls: none}}\n'
            f'control: {{socket: "{self.control_path}"}}\n'
            + metrics_line
            + "log: {level: info, format: json}\n"
            # Many sessions from 127.0.0.1: the per-address and per-user limits are off
            # unless a test sets limits of its own.
            + "limits:\n"
            + (limits or "  max_sessions_per_ip: 0\n  max_sessions_per_user: 0\n")
            + (f"rules:\n{rules}" if rules else "")
        )
        self.log_path = self.dir / "stderr.log"
        notify = str(self.dir / "notify")
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(notify)
        self._notify.settimeout(30)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "imapproxy", "--config", str(config)],
                cwd=ROOT,
                env={**os.environ, "NOTIFY_SOCKET": notify, "PYTHONPATH": str(ROOT)},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                preexec_fn=preexec_fn,
            )
        try:
            message = self._notify.recv(4096).decode()
        except TimeoutError:
            self.stop()
            raise AssertionError(f"proxy not ready in 30 s:\n{self.log_text()}") from None
        assert message == "READY=1", message

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def log_text(self) -> str:
        return self.log_path.read_bytes().decode(errors="replace")

    def events(self) -> list[dict[str, object]]:
        return self.parse_events(self.log_text())

    @staticmethod
    def parse_events(text: str) -> list[dict[str, object]]:
        """The JSON log lines (anything else, e.g. a traceback, is skipped)."""
        out = []
        for line in text.splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if isinstance(item, dict):
                out.append(item)
        return out

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.02)
        return predicate()

    def stop(self) -> str:
        """Stop (SIGKILL if SIGTERM does not do it) and return the log."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._notify.close()
        text = self.log_text()
        shutil.rmtree(self.dir, ignore_errors=True)
        return text
