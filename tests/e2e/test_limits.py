"""Abuse limits against the real Dovecot: each limit refuses the offender only.

Distinct client addresses are loopback source addresses (127.0.0.2, 127.0.0.3, ...), all of
which reach the proxy's 127.0.0.1 listener.
"""

from __future__ import annotations

import dataclasses
import socket
import time

import trio

from imapproxy.config.loader import Config, Limits, LoginFailures
from imapproxy.demo.dovecot import Dovecot
from imapproxy.telemetry.metrics import Metrics
from imapproxy.telemetry.recorder import Telemetry
from tests.support.accounts import new_account
from tests.support.rawimap import RawIMAP

from .conftest import ProxyFactory


class ClientFrom(RawIMAP):
    """A RawIMAP whose socket is bound to a chosen loopback source address."""

    def __init__(self, address: tuple[str, int], source: str, timeout: float = 15.0) -> None:
        self.sock = socket.create_connection(address, timeout=timeout, source_address=(source, 0))
        self._buf = bytearray()
        self.greeting = self.read_response()


def _tagged(c: RawIMAP, count: int) -> dict[bytes, bytes]:
    """The next ``count`` tagged answers, by tag (in whatever order they come)."""
    answers: dict[bytes, bytes] = {}
    while len(answers) < count:
        line = c.read_response()
        if not line.startswith((b"*", b"+")):
            answers[line.split(b" ", 1)[0]] = line
    return answers


def _limits(**kw: object) -> Config:
    return Config(limits=dataclasses.replace(Limits(), **kw))  # type: ignore[arg-type]


def _hits(metrics: Metrics, reason: str) -> float:
    return metrics.registry.get_sample_value("imapproxy_limit_hits_total", {"reason": reason}) or 0


async def test_sessions_per_ip(proxy_factory: ProxyFactory, dovecot: Dovecot) -> None:
    metrics = Metrics(process_metrics=False)
    running = await proxy_factory(_limits(max_sessions_per_ip=2), Telemetry(metrics))
    account = new_account(dovecot)

    def run() -> None:
        held = [ClientFrom(running.address, "127.0.0.2") for _ in range(2)]
        assert all(c.greeting.startswith(b"* OK") for c in held)
        extra = ClientFrom(running.address, "127.0.0.2")
        assert extra.greeting == b"* BYE [UNAVAILABLE] Too many connections from your address\r\n"
        extra.close()
        with ClientFrom(running.address, "127.0.0.3") as other:  # another address gets in
            login = b"LOGIN %s %s" % (account.name.encode(), account.password.encode())
            assert other.command(b"a", login)[-1].startswith(b"a OK")
        held[0].command(b"z", b"LOGOUT")
        held[0].close()
        deadline = time.monotonic() + 5  # the slot frees when the proxy has seen the close
        while time.monotonic() < deadline:
            again = ClientFrom(running.address, "127.0.0.2")
            if again.greeting.startswith(b"* OK"):
                again.close()
                break
            again.close()
            time.sleep(0.05)
        else:
            raise AssertionError("the freed slot was not given back")
        held[1].close()

    await trio.to_thread.run_sync(run)
    assert _hits(metrics, "sessions_per_ip") >= 1  # the retry loop may be refused too


async def test_failed_login_throttle(proxy_factory: ProxyFactory, dovecot: Dovecot) -> None:
    metrics = Metrics(process_metrics=False)
    limits = _limits(login_failures=LoginFailures(per_ip=3, per_user=100, window=3.0))
    running = await proxy_factory(limits, Telemetry(metrics))
    account = new_account(dovecot)
    good = b"LOGIN %s %s" % (account.name.encode(), account.password.encode())
    bad = b"LOGIN %s wrong-guess" % account.name.encode()

    def run() -> None:
        with ClientFrom(running.address, "127.0.0.4") as guesser:
            answers, times = [], []
            for i in range(5):
                t0 = time.monotonic()
                answers.append(guesser.command(b"g%d" % i, bad)[-1])
                times.append(time.monotonic() - t0)
            # Three reach Dovecot and fail; then the proxy refuses without asking it.
            assert all(b" NO " in a for a in answers)
            assert [b"[UNAVAILABLE] Too many failed logins" in a for a in answers] == [
                False, False, False, True, True,
            ]  # fmt: skip
            assert times[2] >= 0.4  # the third attempt waited (two failures before it)
            assert times[4] >= 0.25  # refusals are delayed too
            # The right password from another address works meanwhile.
            with ClientFrom(running.address, "127.0.0.5") as other:
                assert other.command(b"a", good)[-1].startswith(b"a OK")
            # Even the right password is refused from the throttled address...
            assert b"[UNAVAILABLE]" in guesser.command(b"g9", good)[-1]
            time.sleep(3.2)  # ... until the window has passed
            assert guesser.command(b"g10", good)[-1].startswith(b"g10 OK")

    await trio.to_thread.run_sync(run)
    assert _hits(metrics, "login_failures_ip") == 3


async def test_pipelined_guesses_cannot_outrun_the_count(
    proxy_factory: ProxyFactory, dovecot: Dovecot
) -> None:
    limits = _limits(login_failures=LoginFailures(per_ip=2, per_user=100, window=30.0))
    running = await proxy_factory(limits)
    account = new_account(dovecot)

    def run() -> None:
        with ClientFrom(running.address, "127.0.0.6") as guesser:
            guesser.send(
                b"".join(
                    b"p%d LOGIN %s guess%d\r\n" % (i, account.name.encode(), i) for i in range(6)
                )
            )
            answers = list(_tagged(guesser, 6).values())
        # One login in flight per session: only the first reached Dovecot.
        reached = [a for a in answers if b"[LIMIT] One login at a time" not in a]
        assert len(reached) == 1 and b"[AUTHENTICATIONFAILED]" in reached[0], answers

    await trio.to_thread.run_sync(run)


async def test_sessions_per_user(proxy_factory: ProxyFactory, dovecot: Dovecot) -> None:
    running = await proxy_factory(_limits(max_sessions_per_user=1))
    account = new_account(dovecot)
    login = b"LOGIN %s %s" % (account.name.encode(), account.password.encode())

    def run() -> None:
        with ClientFrom(running.address, "127.0.0.7") as first:
            assert first.command(b"a", login)[-1].startswith(b"a OK")
            with ClientFrom(running.address, "127.0.0.8") as second:
                reply = second.command(b"b", login)[-1]
                assert reply == b"b NO [LIMIT] Too many sessions for this user\r\n"
                assert second.command(b"c", b"NOOP")[-1].startswith(b"c OK")  # still usable

    await trio.to_thread.run_sync(run)


async def test_auth_timeout_closes_a_silent_connection(
    proxy_factory: ProxyFactory, dovecot: Dovecot
) -> None:
    metrics = Metrics(process_metrics=False)
    running = await proxy_factory(_limits(auth_timeout=0.5), Telemetry(metrics))
    account = new_account(dovecot)
    login = b"LOGIN %s %s" % (account.name.encode(), account.password.encode())

    def run() -> None:
        with ClientFrom(running.address, "127.0.0.9") as silent:
            t0 = time.monotonic()
            assert silent.read_response() == b"* BYE Authentication timeout\r\n"
            assert time.monotonic() - t0 < 3
            silent.sock.settimeout(3)
            assert silent.sock.recv(100) == b""
        with ClientFrom(running.address, "127.0.0.9") as quick:  # logged in: no deadline
            assert quick.command(b"a", login)[-1].startswith(b"a OK")
            time.sleep(0.8)
            assert quick.command(b"b", b"NOOP")[-1].startswith(b"b OK")

    await trio.to_thread.run_sync(run)
    assert _hits(metrics, "auth_timeout") == 1


async def test_max_pipelined(proxy_factory: ProxyFactory, dovecot: Dovecot) -> None:
    running = await proxy_factory(_limits(max_pipelined=4))
    account = new_account(dovecot)
    login = b"LOGIN %s %s" % (account.name.encode(), account.password.encode())

    def run() -> None:
        with ClientFrom(running.address, "127.0.0.10") as c:
            assert c.command(b"a", login)[-1].startswith(b"a OK")
            c.send(b"".join(b"n%d NOOP\r\n" % i for i in range(10)))
            answers = list(_tagged(c, 10).values())
            bad = [a for a in answers if b"BAD [LIMIT] Too many commands in flight" in a]
            assert 1 <= len(bad) <= 6 and all(b" OK " in a for a in answers if a not in bad)
            assert c.command(b"z", b"NOOP")[-1].startswith(b"z OK")  # the session goes on

    await trio.to_thread.run_sync(run)
