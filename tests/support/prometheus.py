"""A real Prometheus server for tests (Debian package `prometheus`), on loopback.

    with PrometheusServer.start(["127.0.0.1:9143"], tmp_path) as prom:
        prom.wait_for_series('imapproxy_build_info', timeout=15)
        series = prom.query('sum by (command) (rate(imapproxy_commands_total[1m]))')

It writes a config scraping the given targets every second, keeps its TSDB in the given
directory, listens on a free 127.0.0.1 port, and is stopped by the PID it started.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

PROMETHEUS = "prometheus"
SCRAPE_INTERVAL = "1s"
JOB = "imapproxy"


class PrometheusError(RuntimeError):
    pass


def prometheus_binary() -> str | None:
    return shutil.which(PROMETHEUS)


def free_port() -> int:
    """A currently free loopback port (a small race with other binders is accepted)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config(targets: Sequence[str]) -> str:
    # JSON is valid YAML: no YAML writer needed, no quoting surprises.
    return json.dumps(
        {
            "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
            "scrape_configs": [
                {
                    "job_name": JOB,
                    "scrape_interval": SCRAPE_INTERVAL,
                    "scrape_timeout": SCRAPE_INTERVAL,
                    "static_configs": [{"targets": list(targets)}],
                }
            ],
        },
        indent=2,
    )


@dataclass
class PrometheusServer:
    process: subprocess.Popen[bytes]
    port: int
    workdir: Path
    log_path: Path
    _log_file: Any = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(
        cls, targets: Sequence[str], workdir: Path, *, ready_timeout: float = 30.0
    ) -> PrometheusServer:
        binary = prometheus_binary()
        if binary is None:
            raise PrometheusError("prometheus not installed (apt-get install prometheus)")
        for target in targets:
            if not target.startswith(("127.0.0.1:", "[::1]:", "localhost:")):
                raise ValueError(f"tests scrape loopback targets only, not {target!r}")
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "prometheus.yml"
        config.write_text(_config(targets))
        port = free_port()
        log_path = workdir / "prometheus.log"
        log_file = log_path.open("wb")
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
        server = cls(process, port, workdir, log_path, log_file)
        try:
            server._wait_ready(ready_timeout)
        except BaseException:
            server.stop()
            raise
        return server

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise PrometheusError(
                    f"prometheus exited with {self.process.returncode}:\n{self.log()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise PrometheusError(f"prometheus not ready after {timeout}s:\n{self.log()}")
            time.sleep(0.1)

    def log(self) -> str:
        self._log_file.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the process this object started (SIGTERM, then SIGKILL after `timeout`)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        self._log_file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- HTTP API ---------------------------------------------------------------------------

    def _api(self, path: str, params: dict[str, str]) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as err:
            # 400/422 carry Prometheus's own explanation (bad PromQL, ...).
            detail = err.read().decode(errors="replace")
            raise PrometheusError(f"{path} {params}: HTTP {err.code}: {detail}") from None
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Evaluate an instant query now; the result as a list of {metric, value} series
        (a scalar result becomes one series with empty labels)."""
        data = self._api("query", {"query": expr})
        if data["resultType"] in ("vector", "matrix"):
            return list(data["result"])
        return [{"metric": {}, "value": data["result"]}]

    def targets_up(self) -> list[dict[str, Any]]:
        data = self._api("targets", {"state": "active"})
        return [t for t in data["activeTargets"] if t.get("health") == "up"]

    def wait_for_series(
        self, expr: str, timeout: float, *, min_count: int = 1
    ) -> list[dict[str, Any]]:
        """Poll `expr` until it returns at least `min_count` series; raise on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if len(result) >= min_count:
                return result
            if self.process.poll() is not None:
                raise PrometheusError(f"prometheus exited:\n{self.log()}")
            if time.monotonic() > deadline:
                raise PrometheusError(
                    f"{expr!r}: {len(result)} series after {timeout}s (want {min_count}); "
                    f"targets up: {len(self.targets_up())}\n{self.log()}"
                )
            time.sleep(0.25)
