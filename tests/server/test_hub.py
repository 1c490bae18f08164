"""The readiness hub's mechanics (``net.hub``) on real socket pairs: what is watched is what
is served, a failing handler costs only its own descriptor, a hang-up on an unwatched socket
does not wake the hub, and a flood of ready sockets is served in bounded, fair passes with
other tasks running between them. Every test runs with the hub served in trio's I/O wait
(``net.io_wait``) and as a task (the fallback), and trio's own contract (timers,
``wait_all_tasks_blocked``, closing at the end of the run) holds in both."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from imapproxy.net import hub as hub_module
from imapproxy.net.hub import IN, OUT, Hub

pytestmark = pytest.mark.usefixtures("hub_mode")  # each test in both modes (conftest.py)


class Counter:
    """A handler that counts its calls and reads nothing (level-triggered: stays ready)."""

    def __init__(self, fail: bool = False) -> None:
        self.calls = 0
        self.events = 0
        self.failed: list[Exception] = []
        self.fail = fail

    def hub_ready(self, fd: int, events: int) -> None:
        self.calls += 1
        self.events |= events
        if self.fail:
            raise RuntimeError("handler bug")

    def hub_failed(self, exc: Exception) -> None:
        self.failed.append(exc)
        Hub.current().forget(self.fd)

    fd = -1


class Reader(Counter):
    """A handler that reads what arrives on ``sock`` (its descriptor) into ``got``."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock
        self.fd = sock.fileno()
        self.got: list[bytes] = []

    def hub_ready(self, fd: int, events: int) -> None:
        super().hub_ready(fd, events)
        self.got.append(self.sock.recv(100))


def _pairs(n: int) -> list[tuple[socket.socket, socket.socket]]:
    pairs = [socket.socketpair() for _ in range(n)]
    for a, b in pairs:
        a.setblocking(False)
        b.setblocking(False)
    return pairs


def _close(pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    for a, b in pairs:
        a.close()
        b.close()


async def _settle() -> None:
    # Let the hub (in trio's I/O wait, or a system task) take a few passes.
    for _ in range(5):
        await trio.sleep(0.01)


async def test_one_hub_per_run_and_only_watched_masks_are_served() -> None:
    hub = Hub.current()
    assert Hub.current() is hub
    [(a, b)] = pairs = _pairs(1)
    try:
        counter = Counter()
        counter.fd = a.fileno()
        hub.watch(a.fileno(), counter, IN)
        await _settle()
        assert counter.calls == 0  # nothing to read yet
        b.send(b"x")
        await _settle()
        assert counter.calls > 0 and counter.events & IN
        hub.watch(a.fileno(), counter, OUT)  # writable at once, readable ignored
        before = counter.calls
        await _settle()
        assert counter.calls > before and counter.events & OUT
        hub.forget(a.fileno())
        assert hub.watched == 0
        before = counter.calls
        await _settle()
        assert counter.calls == before
        hub.forget(a.fileno())  # idempotent
    finally:
        _close(pairs)


async def test_a_failing_handler_loses_its_descriptor_only() -> None:
    hub = Hub.current()
    pairs = _pairs(2)
    try:
        bad, good = Counter(fail=True), Counter()
        for handler, (a, b) in zip((bad, good), pairs, strict=True):
            handler.fd = a.fileno()
            hub.watch(a.fileno(), handler, IN)
            b.send(b"x")
        await _settle()
        assert len(bad.failed) == 1 and bad.calls == 1
        assert isinstance(bad.failed[0], RuntimeError)
        assert good.calls > 1  # still served, pass after pass
        assert hub.mask(pairs[0][0].fileno()) == 0
        assert hub.mask(pairs[1][0].fileno()) == IN
        hub.forget(pairs[1][0].fileno())
    finally:
        _close(pairs)


async def test_a_hang_up_on_an_unwatched_socket_does_not_wake_the_hub() -> None:
    """Mask 0 unregisters: epoll would report HUP whatever the mask, on every pass."""
    hub = Hub.current()
    [(a, b)] = _pairs(1)
    try:
        counter = Counter()
        counter.fd = a.fileno()
        hub.watch(a.fileno(), counter, IN)
        hub.watch(a.fileno(), counter, 0)
        b.close()
        passes = hub.passes
        await _settle()
        assert counter.calls == 0
        assert hub.passes == passes
        hub.watch(a.fileno(), counter, IN)  # watched again: the hang-up is seen
        await _settle()
        assert counter.calls > 0
        hub.forget(a.fileno())
    finally:
        a.close()


async def test_a_flood_is_served_in_fair_bounded_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub_module, "MAX_EVENTS", 8)
    hub = Hub.current()
    pairs = _pairs(40)
    counters = [Counter() for _ in pairs]
    try:
        for counter, (a, b) in zip(counters, pairs, strict=True):
            counter.fd = a.fileno()
            hub.watch(a.fileno(), counter, IN)
            b.send(b"x")  # never read: ready on every pass
        passes = hub.passes
        ticks = 0
        with trio.fail_after(5):
            for _ in range(20):  # another task keeps running while the hub is flooded
                await trio.lowlevel.checkpoint()
                ticks += 1
        assert ticks == 20
        await _settle()
        served = hub.passes - passes
        calls = [c.calls for c in counters]
        assert sum(calls) <= served * 8  # bounded: at most MAX_EVENTS per pass
        assert min(calls) > 0
        assert max(calls) - min(calls) <= 1  # epoll rotates the ready list: fair
        for a, _ in pairs:
            hub.forget(a.fileno())
    finally:
        _close(pairs)


async def test_a_socket_goes_from_trio_to_the_hub_and_back_and_back_again() -> None:
    """In io-wait mode both share trio's epoll: trio leaves a socket it waited on registered
    (disarmed), the hub takes it over, forgets it, and trio waits on it afresh."""
    hub = Hub.current()
    [(a, b)] = pairs = _pairs(1)
    reader = Reader(a)
    got = reader.got
    try:
        for round_ in range(2):
            b.send(b"trio%d" % round_)
            with trio.fail_after(2):
                await trio.lowlevel.wait_readable(a)
            assert a.recv(100) == b"trio%d" % round_
            hub.watch(a.fileno(), reader, IN)
            b.send(b"hub%d" % round_)
            with trio.fail_after(2):
                while len(got) <= round_:
                    await trio.sleep(0.005)
            assert got[round_] == b"hub%d" % round_
            hub.forget(a.fileno())
        assert hub.watched == 0 and reader.failed == []
    finally:
        _close(pairs)


async def test_a_task_waiting_on_a_watched_socket_is_woken() -> None:
    """Both claiming one descriptor breaks the hub's contract, but must not hang the task:
    trio's waiter wins the event (io-wait mode shares trio's epoll)."""
    hub = Hub.current()
    [(a, b)] = pairs = _pairs(1)
    counter = Counter()
    counter.fd = a.fileno()
    try:
        hub.watch(a.fileno(), counter, IN)
        async with trio.open_nursery() as nursery:
            woken = trio.Event()

            async def waiter() -> None:
                await trio.lowlevel.wait_readable(a)
                woken.set()

            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            b.send(b"x")
            with trio.fail_after(2):
                await woken.wait()
        hub.forget(a.fileno())
    finally:
        _close(pairs)


def _system_task_names() -> set[str]:
    root = trio.lowlevel.current_root_task()
    assert root is not None
    return {t.name for n in root.child_nurseries for t in n.child_tasks}


async def test_the_mode_is_the_one_asked_for_and_only_the_task_mode_has_a_task(
    hub_mode: str,
) -> None:
    hub = Hub.current()
    assert hub.mode == hub_mode  # this trio supports the I/O-wait mode
    assert ("imapproxy readiness hub" in _system_task_names()) == (hub_mode == "task")


async def test_timers_and_wait_all_tasks_blocked_keep_their_meaning_while_sockets_are_served() -> (
    None
):
    hub = Hub.current()
    [(a, b)] = pairs = _pairs(1)
    try:
        echo = Reader(a)
        echoed = echo.got
        hub.watch(a.fileno(), echo, IN)
        start = trio.current_time()
        for i in range(20):  # socket traffic between timer waits
            b.send(b"%d" % i)
            await trio.sleep(0.005)
        elapsed = trio.current_time() - start
        assert 0.1 <= elapsed < 2  # each sleep lasted its time: not cut short, not stuck
        assert b"".join(echoed) == b"".join(b"%d" % i for i in range(20))
        with trio.fail_after(2):  # an idle watched socket is no runnable task
            await trio.testing.wait_all_tasks_blocked()
        hub.forget(a.fileno())
    finally:
        _close(pairs)


def test_the_hubs_epoll_is_closed_when_the_run_ends(hub_mode: str) -> None:
    hubs: list[Hub] = []

    async def main() -> None:
        hubs.append(Hub.current())

    trio.run(main)
    [hub] = hubs
    assert hub.mode == hub_mode
    assert hub._epoll.closed
