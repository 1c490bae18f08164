"""server.runtime / server.accept without a mail server: a reload swaps the runtime whole or
not at all, and the accept loop waits out descriptor exhaustion with one log line."""

from __future__ import annotations

import dataclasses
import errno
import logging
from pathlib import Path

import pytest
import trio

from imapproxy.config.loader import Address, ClientTLS, Config, Listen
from imapproxy.config.yamlsource import ConfigError
from imapproxy.server import accept
from imapproxy.server.capacity import RateLimitedLog
from imapproxy.server.listener import Proxy
from imapproxy.telemetry.recorder import Telemetry


def test_reload_swaps_the_whole_runtime_or_keeps_the_old_one(tmp_path: Path) -> None:
    running = Config(listen=Listen(Address("127.0.0.1", 14300)))
    offered: list[Config] = []

    def read() -> Config:
        if not offered:
            raise ConfigError("proxy.yaml", 3, 1, "unknown key")
        return offered.pop()

    proxy = Proxy(running, Telemetry(None), reload_config=read)
    before = proxy.runtime
    assert not proxy.reload()  # the file does not parse
    assert proxy.runtime is before
    missing = ClientTLS(tmp_path / "gone.pem", tmp_path / "gone.key")
    offered.append(dataclasses.replace(running, client_tls=missing))
    assert not proxy.reload()  # certificates unusable: nothing of the new file is used
    assert proxy.runtime is before and proxy.runtime.client_tls.start_tls is None
    moved = Config(listen=Listen(Address("127.0.0.1", 14301)))
    offered.append(moved)
    assert proxy.reload()
    assert proxy.runtime is not before
    assert proxy.config.listen.address == Address("127.0.0.1", 14300)  # stays bound


class _Counting(Telemetry):
    def __init__(self) -> None:
        super().__init__(None)
        self.errors: list[tuple[str, str]] = []

    def accept_error(self, leg: str, reason: str) -> None:
        self.errors.append((leg, reason))


class _Exhausted(trio.abc.Listener[trio.abc.Stream]):
    """accept() fails with EMFILE ``failures`` times, then returns a stream."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.stream = trio.testing.MemorySendStream()

    async def accept(self) -> trio.abc.Stream:
        await trio.lowlevel.checkpoint()
        if self.failures:
            self.failures -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return trio.StapledStream(self.stream, trio.testing.MemoryReceiveStream())

    async def aclose(self) -> None:
        pass


async def test_accept_waits_out_emfile_with_one_log_line_and_a_count(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(accept, "capacity_log", RateLimitedLog())  # a budget of its own
    monkeypatch.setattr(accept, "ACCEPT_BACKOFF", 0.01)
    caplog.set_level(logging.INFO, logger="imapproxy")
    telemetry = _Counting()
    inner = _Exhausted(failures=5)
    listener = accept._BackOff(inner, "plain", telemetry, lambda: 7)
    with trio.fail_after(5):
        stream = await listener.accept()
    assert isinstance(stream, trio.StapledStream)
    assert telemetry.errors == [("client", "emfile")] * 5
    lines = [r for r in caplog.records if r.getMessage() == "accept_failed"]
    assert len(lines) == 1 and lines[0].exc_info is None  # no traceback


async def test_accept_lets_other_errors_through() -> None:
    class Broken(_Exhausted):
        async def accept(self) -> trio.abc.Stream:
            raise OSError(errno.EBADF, "Bad file descriptor")

    listener = accept._BackOff(Broken(0), "plain", _Counting(), lambda: 0)
    with pytest.raises(OSError, match="Bad file"):
        await listener.accept()
