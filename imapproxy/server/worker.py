"""One worker of ``--workers N`` (see ``server.workers``): the normal Proxy, plus its link to
the supervising parent.

The parent starts ``python -m imapproxy`` with ``IMAPPROXY_WORKER_FD`` set to one end of a
socketpair; ``cli`` then calls ``serve_worker``. Over that link the worker says ``ready``
(listening) and ``reloaded``, and asks the parent's shared ``Limiter`` about sessions and
logins (``SharedLimits``). Metrics are recorded in prometheus_client's multiprocess files and
served by the parent; ``Metrics.flush_hot`` copies the fast-path families there each second.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from imapproxy.config.loader import Config
from imapproxy.server.guard import limit_values
from imapproxy.server.limits import Limiter, LimitValues, LoginVerdict
from imapproxy.server.listener import Proxy
from imapproxy.server.reuseport import open_reuseport_listeners
from imapproxy.telemetry.logs import log_event
from imapproxy.telemetry.recorder import Telemetry

if TYPE_CHECKING:
    from imapproxy.telemetry.metrics import Metrics

__all__ = ["WORKER_FD_ENV", "SharedLimits", "WorkerProxy", "serve_worker"]

log = logging.getLogger("imapproxy")

WORKER_FD_ENV = "IMAPPROXY_WORKER_FD"
_ASK_TIMEOUT = 1.0


class SharedLimits:
    """A ``LimitBackend`` that asks the parent; a local Limiter if the parent stops answering."""

    def __init__(self, fd: int, values: LimitValues) -> None:
        self._sock = socket.socket(fileno=fd)
        self._sock.settimeout(_ASK_TIMEOUT)
        self._buf = b""
        self._local: Limiter | None = None
        self._values = values

    def tell(self, **msg: Any) -> None:
        if self._local is not None:
            return
        try:
            self._sock.sendall(json.dumps(msg).encode() + b"\n")
        except OSError as exc:
            self._fall_back(exc)

    def _ask(self, **msg: Any) -> Any:
        self.tell(**msg)
        try:
            while b"\n" not in self._buf:
                chunk = self._sock.recv(4096)
                if not chunk:
                    raise ConnectionResetError("the supervising parent closed the link")
                self._buf += chunk
        except OSError as exc:  # socket.timeout is an OSError
            self._fall_back(exc)
            return None
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)["r"]

    def _fall_back(self, exc: Exception) -> None:
        if self._local is None:
            log_event(log, "limits_local", error=str(exc), level=logging.ERROR)
            self._local = Limiter(self._values)

    def update(self, values: LimitValues) -> None:
        self._values = values
        if self._local is not None:
            self._local.update(values)
        self.tell(op="update", values=_values_dict(values))

    def open_session(self, ip: str) -> str | None:
        if self._local is None:
            answer = self._ask(op="open_session", ip=ip)
            if self._local is None:
                return answer  # type: ignore[no-any-return]
        assert self._local is not None
        return self._local.open_session(ip)

    def close_session(self, ip: str, user: str | None) -> None:
        if self._local is not None:
            self._local.close_session(ip, user)
        self.tell(op="close_session", ip=ip, user=user)

    def check_login(self, ip: str, user: str | None) -> LoginVerdict:
        if self._local is None:
            answer = self._ask(op="check_login", ip=ip, user=user)
            if self._local is None:
                return LoginVerdict(answer[0], answer[1])
        assert self._local is not None
        return self._local.check_login(ip, user)

    def login_finished(self, ip: str, user: str | None, result: str) -> None:
        if self._local is not None:
            self._local.login_finished(ip, user, result)
        self.tell(op="login_finished", ip=ip, user=user, result=result)


def _values_dict(values: LimitValues) -> dict[str, Any]:
    return {f: getattr(values, f) for f in LimitValues.__dataclass_fields__}


# --- the worker ---------------------------------------------------------------------
class WorkerProxy(Proxy):
    """The normal Proxy, bound with SO_REUSEPORT, telling the parent about reloads."""

    open_listeners = staticmethod(open_reuseport_listeners)

    def __init__(self, *args: Any, link: SharedLimits, **kwargs: Any) -> None:
        super().__init__(*args, limits=link, **kwargs)
        self.link = link

    def reload(self) -> bool:
        ok = super().reload()
        self.link.tell(op="reloaded", ok=ok)
        return ok


class _WorkerPid(logging.Filter):
    """Adds ``worker=<pid>`` to every structured log line of a worker."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = getattr(record, "imapproxy_fields", None)
        record.imapproxy_fields = {**(fields or {}), "worker": os.getpid()}
        return True


def serve_worker(cfg: Config, reload: Callable[[], Config] | None, fd: int) -> int:
    """Run one worker (the parent set ``IMAPPROXY_WORKER_FD``); the process exit code."""
    for handler in logging.getLogger("imapproxy").handlers:
        handler.addFilter(_WorkerPid())
    link = SharedLimits(fd, limit_values(cfg.limits))
    metrics = None
    if cfg.metrics.address is not None:  # recorded here, served by the parent
        from imapproxy.telemetry.metrics import Metrics

        metrics = Metrics(process_metrics=False)
    proxy: WorkerProxy

    async def main() -> None:
        async with trio.open_nursery() as outer:
            if metrics is not None:
                outer.start_soon(_flush_every_second, metrics)
            async with trio.open_nursery() as nursery:
                await nursery.start(proxy.serve)
                link.tell(op="ready")
            outer.cancel_scope.cancel()  # the proxy has stopped

    failed = False
    try:
        # Inside the try: unusable certificates (TLSSetupError) are reported like a busy port.
        proxy = WorkerProxy(cfg, Telemetry(metrics), reload_config=reload, link=link)
        trio.run(main)
    except* OSError as group:
        failed = True
        for exc in group.exceptions:
            log_event(log, "fatal", error=str(exc), level=logging.CRITICAL)
    finally:
        if metrics is not None:
            metrics.flush_hot()
    return 1 if failed else 0


async def _flush_every_second(metrics: Metrics) -> None:
    while True:
        await trio.sleep(1.0)
        metrics.flush_hot()
