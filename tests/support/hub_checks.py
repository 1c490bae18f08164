"""Checks on a session served by the readiness hub, shared by the plain and TLS hub tests."""

from __future__ import annotations

import trio

from imapproxy.net.hub import IN, OUT, Hub
from imapproxy.server.driver import SessionDriver


def all_tasks() -> list[trio.lowlevel.Task]:
    """Every task of the current run, from the root task down."""
    found: list[trio.lowlevel.Task] = []

    def walk(task: trio.lowlevel.Task) -> None:
        found.append(task)
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                walk(child)

    root = trio.lowlevel.current_root_task()
    assert root is not None
    walk(root)
    return found


async def assert_a_slow_reader_stops_upstream_reads(
    driver: SessionDriver, client: trio.abc.SendStream, size: int
) -> None:
    """Send ``f FETCH 1 (BODY.PEEK[])`` (a message of ``size`` bytes) on ``client`` and read
    nothing: once the client side has bytes waiting, the hub writes to the client and no
    longer reads the upstream, and no more bytes move while the client reads nothing."""
    hub = Hub.current()
    client_fd, upstream_fd = driver._fds
    await client.send_all(b"f FETCH 1 (BODY.PEEK[])\r\n")
    with trio.fail_after(10):  # the client reads nothing: its side fills up
        while not driver._to_client.pending:
            await trio.sleep(0.02)
    await trio.sleep(0.3)
    assert hub.mask(client_fd) == OUT  # waiting to write, not reading the client
    assert hub.mask(upstream_fd) & IN == 0  # backpressure: the server is not read
    stalled = driver.bytes_down
    await trio.sleep(0.3)
    assert driver.bytes_down == stalled < size // 2
