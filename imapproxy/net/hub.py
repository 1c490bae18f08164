"""One readiness hub per trio run: session sockets served without a task switch.

Waiting in trio costs a task wake-up and an ``epoll_ctl`` per wait; for a proxy whose typical
read is one small command, that is most of its CPU. The hub instead keeps the sockets of every
session leg it serves (plain TCP, and TLS legs after their handshake: their handlers read
what OpenSSL decrypted already in the same turn, which epoll cannot report) registered,
level-triggered, and calls the handler of each ready one synchronously (a pass, up to
``MAX_EVENTS`` sockets): a handler reads, decides and writes without blocking, and changes
what it waits for with ``watch``. Where trio allows it (``net.io_wait``, ``mode`` "io-wait")
the sockets are registered in trio's own epoll object and served in trio's own wait for I/O,
one ``epoll_wait`` for both; otherwise (``mode`` "task") in a ``select.epoll`` object of the
hub's own, served by a system task of the run that waits for its descriptor (started by the
first ``Hub.current()``). Either way other tasks run between passes, and a busy socket gets
one turn per pass (fairness; level-triggered, nothing is lost by not draining a socket at
once).

Contract for handlers (``Ready``):

* ``hub_ready(fd, events)`` runs in a pass (in io-wait mode outside any task: it may set
  events and move deadlines, but not ``await`` or ask for the current task) and must not
  block: it is called only for a descriptor it ``watch``-es with a non-zero mask, with the
  ``select.EPOLL*`` bits that are ready (``EPOLLHUP``/``EPOLLERR`` may come whatever the
  mask).
* An exception out of ``hub_ready`` is the handler's bug, never the hub's: the hub calls
  ``hub_failed(exc)`` (which must stop watching the handler's descriptors) and serves the
  others on. Should that raise too, the hub forgets the descriptor and logs it.
* A descriptor must be ``forget``-ten before it is closed (a closed number is soon reused).

A mask of 0 unregisters the descriptor instead of keeping it with no interest: epoll reports
``EPOLLHUP`` and ``EPOLLERR`` whatever the mask, and a level-triggered hang-up on a socket
nobody reads would otherwise wake the hub on every pass.

In trio's wait for I/O a pass costs neither a task switch, nor trio's two ``epoll_ctl`` calls
per wait, nor a second ``epoll_wait``; the passes and this contract are the same in both
modes.
"""

from __future__ import annotations

import contextlib
import logging
import select
from typing import Protocol

import trio

from imapproxy.net import io_wait

__all__ = ["ERR", "HUP", "IN", "OUT", "Hub", "Ready"]

log = logging.getLogger("imapproxy")

IN = select.EPOLLIN
OUT = select.EPOLLOUT
ERR = select.EPOLLERR  # reported whatever the mask
HUP = select.EPOLLHUP  # reported whatever the mask
MAX_EVENTS = 256  # ready sockets served per pass, between two checkpoints


class Ready(Protocol):
    def hub_ready(self, fd: int, events: int) -> None: ...
    def hub_failed(self, exc: Exception) -> None: ...


_current: trio.lowlevel.RunVar[Hub] = trio.lowlevel.RunVar("imapproxy_hub")


class Hub:
    """The hub of the current trio run (``current``); ``watch``/``forget`` descriptors."""

    __slots__ = ("_epoll", "_handlers", "_masks", "mode", "passes")

    def __init__(self) -> None:
        self._epoll = select.epoll()  # trio's own once io_wait attached the hub (share)
        self._handlers: dict[int, Ready] = {}
        self._masks: dict[int, int] = {}  # registered descriptors only (mask != 0)
        self.passes = 0  # passes with work done (tests read it)
        self.mode = "task"  # or "io-wait": served in trio's wait for I/O (net.io_wait)

    @staticmethod
    def current() -> Hub:
        """This trio run's hub, made (and its task started) on first use."""
        try:
            return _current.get()
        except LookupError:
            hub = Hub()
            _current.set(hub)
            if io_wait.attach(hub):
                hub.mode = "io-wait"
            else:
                trio.lowlevel.spawn_system_task(hub._serve, name="imapproxy readiness hub")
            return hub

    def watch(self, fd: int, handler: Ready, mask: int) -> None:
        """Wait for ``mask`` (``IN``, ``OUT``, both, or 0: nothing) on ``fd``; the ready
        bits go to ``handler``. No system call when the mask is the one already set."""
        old = self._masks.get(fd, 0)
        if mask == old:
            return
        ep = self._epoll
        if mask == 0:
            del self._masks[fd]
            self._handlers.pop(fd, None)
            with contextlib.suppress(OSError):  # closed under us: the kernel dropped it
                ep.unregister(fd)
            return
        self._masks[fd] = mask
        self._handlers[fd] = handler
        if old:
            try:
                ep.modify(fd, mask)
                return
            except FileNotFoundError:  # closed and reused while registered: start afresh
                pass
        try:
            ep.register(fd, mask)
        except FileExistsError:
            # Sharing trio's epoll: trio leaves a descriptor it waited on registered, disarmed
            # (one-shot, no interest), and registers it afresh should that fail later.
            ep.modify(fd, mask)

    def forget(self, fd: int) -> None:
        """Stop watching ``fd`` (idempotent); call it before the descriptor is closed."""
        if fd in self._masks:
            self.watch(fd, self._handlers[fd], 0)

    def mask(self, fd: int) -> int:
        return self._masks.get(fd, 0)

    @property
    def watched(self) -> int:
        """Descriptors registered now."""
        return len(self._masks)

    def fileno(self) -> int:
        """The hub's epoll descriptor: readable when a watched socket is ready (task mode;
        in io-wait mode it is trio's own)."""
        return self._epoll.fileno()

    def share(self, epoll: select.epoll) -> None:
        """Register from now on in ``epoll`` (trio's, by ``net.io_wait``, before anything is
        watched): the hub's sockets are then among the events trio's own wait returns, and
        ``io_wait`` serves them (``handlers``) with no second ``epoll_wait``. Whoever
        owns ``epoll`` closes it."""
        assert not self._masks
        self._epoll.close()
        self._epoll = epoll

    @property
    def handlers(self) -> dict[int, Ready]:
        """Watched descriptors and their handlers (io-wait mode's dispatch reads it)."""
        return self._handlers

    def serve_pass(self) -> None:
        """One pass: up to ``MAX_EVENTS`` ready descriptors, each to its handler. Never
        blocks (the caller knows the hub's descriptor is readable, or polls)."""
        events = self._epoll.poll(0, MAX_EVENTS)
        if events:
            self.passes += 1
        for fd, ready in events:
            self._dispatch(fd, ready)

    def close(self) -> None:
        """The run is over: forget every handler and close the epoll object (a shared one
        is its owner's: trio closes it right after)."""
        self._handlers.clear()
        self._masks.clear()
        if self.mode != "io-wait":
            self._epoll.close()

    async def _serve(self) -> None:
        """The hub as a task (when ``net.io_wait`` cannot attach it): wait, pass, repeat."""
        try:
            while True:
                await trio.lowlevel.wait_readable(self._epoll.fileno())
                self.serve_pass()
        finally:
            self.close()

    def _dispatch(self, fd: int, ready: int) -> None:
        handler = self._handlers.get(fd)
        if handler is None:  # forgotten earlier in this pass
            return
        try:
            handler.hub_ready(fd, ready)
        except Exception as exc:
            self.failed(fd, handler, exc)

    def failed(self, fd: int, handler: Ready, exc: Exception) -> None:
        """``handler.hub_ready`` raised ``exc`` (the contract in the module docstring)."""
        try:
            handler.hub_failed(exc)
        except Exception:
            log.exception("readiness handler failed on descriptor %d", fd)
            self.forget(fd)
