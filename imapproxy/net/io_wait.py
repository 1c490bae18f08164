"""The readiness hub served in trio's own I/O wait: no task switch per pass.

Served from a system task (``Hub._serve``), every pass of the hub costs a trip through
trio's scheduler: ``wait_readable`` on the hub's epoll descriptor arms it in trio's epoll
(``EPOLL_CTL_MOD``/``ADD``, one-shot), the wake-up disarms it (another ``epoll_ctl``), and
the task is rescheduled and resumed. For a relay whose typical pass is one small command,
that is a large share of the work per command.

``attach`` instead makes the hub register its sockets (level-triggered) in trio's own epoll
object (``Hub.share``), and makes trio's ``get_events`` (the one place trio waits for I/O,
called by its run loop between batches of tasks) sort what that one ``epoll_wait`` returns:
a descriptor the hub watches (and trio does not wait on) goes to its handler, at once and
synchronously (a pass), the others go to trio as usual; one wait returns at most
``MAX_EVENTS`` of both together while the hub watches any. One system call per pass, where a
hub with an epoll of its own needs two (trio's wait for the hub's descriptor, then the
hub's). When a pass leaves trio nothing to do (no task woken, no other descriptor ready, no
deadline moved earlier), ``get_events`` waits again within the timeout trio gave it and
serves the next pass, up to ``_PASSES_PER_WAIT``, without turning trio's loop in between.
Nothing else changes for trio: timeouts, cancellation, signals (``KeyboardInterrupt`` is
delivered as to any code outside a task: it sets trio's pending flag and wakes the loop
through its wake-up socket, one of trio's descriptors) and the other tasks' I/O. Any task a
pass makes runnable runs before the next pass, which is the fairness the task gave.

Sharing trio's epoll: a descriptor is the hub's or trio's, never both at once (the hub
forgets a session's sockets before its task waits on them, ``server.hub_pump``); should
both claim one, trio's waiter wins and the event goes to trio. trio leaves a descriptor it
waited on registered but disarmed (one-shot), which ``Hub.watch`` takes over, and it
re-registers one the hub removed.

Contract kept for trio: ``get_events`` returns something false only when its timeout
expired with nothing ready (trio then jumps a mock clock or wakes ``wait_all_tasks_blocked``
waiters); a pass of the hub with no event for trio returns ``_SERVED``, empty but true.

Handlers therefore run outside any task: they may do what ``Ready`` allows (no ``await``),
including setting events, moving cancel-scope deadlines and ``trio.current_time()``, but
not ``trio.lowlevel.current_task()``.

This uses trio internals (``GLOBAL_RUN_CONTEXT``, ``EpollIOManager`` and its ``_epoll``,
``_registered`` and ``_force_wakeup_fd``).
``attach`` checks for exactly what it uses and returns False otherwise (another trio, a
platform without epoll, guest mode), and the hub then runs as a task: the same semantics,
the old cost. ``IMAPPROXY_HUB_TASK=1`` in the environment forces that mode (a diagnostic:
it is what to compare against when the hub is suspected).
"""

from __future__ import annotations

import os
import select
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imapproxy.net.hub import Hub

__all__ = ["FORCE_TASK_ENV", "attach"]

FORCE_TASK_ENV = "IMAPPROXY_HUB_TASK"


class _Served(tuple[()]):
    """No event for trio, and no timeout either (``get_events``'s contract)."""

    __slots__ = ()

    def __bool__(self) -> bool:
        return True


_SERVED = _Served()
# Passes served in one call of get_events while trio has nothing to do (each waits in epoll
# first); then trio's loop turns once more all the same (its deadlines, its instruments).
_PASSES_PER_WAIT = 64


def attach(hub: Hub) -> bool:
    """Serve ``hub`` in the current trio run's I/O wait (module docstring); False, with
    nothing changed, when this trio cannot: the caller runs the hub as a task then."""
    if os.environ.get(FORCE_TASK_ENV):
        return False
    try:
        from trio._core._io_epoll import EpollIOManager
        from trio._core._run import GLOBAL_RUN_CONTEXT

        runner = GLOBAL_RUN_CONTEXT.runner
        io = runner.io_manager
        trio_epoll = io._epoll
        registered = io._registered
        wakeup_fd = io._force_wakeup_fd
    except (ImportError, AttributeError):
        return False
    if type(io) is not EpollIOManager or runner.is_guest:
        return False
    if not isinstance(trio_epoll, select.epoll) or not isinstance(registered, dict):
        return False
    if not isinstance(wakeup_fd, int):
        return False
    io.__class__ = _serving_class(EpollIOManager, hub, runner, wakeup_fd)
    hub.share(trio_epoll)
    return True


def _serving_class(base: Any, hub: Hub, runner: Any, wakeup_fd: int) -> type:
    """A subclass of trio's epoll manager (no new slots, so an instance can switch to it)
    whose ``get_events`` serves ``hub`` and whose ``close`` closes it too."""
    from imapproxy.net import hub as hub_module  # (it imports this module)

    base_close = base.close
    runq = runner.runq
    deadlines = runner.deadlines
    monotonic = time.monotonic
    handlers = hub.handlers

    def serve(events: list[tuple[int, int]], registered: dict[int, Any]) -> Any:
        """Serve the hub's events of one wait (a pass); trio's own are returned."""
        theirs = None
        served = 0
        for fd, ready in events:
            handler = handlers.get(fd)
            if handler is not None and fd not in registered:
                served += 1
                try:
                    handler.hub_ready(fd, ready)
                except Exception as exc:
                    hub.failed(fd, handler, exc)
            elif fd in registered or fd == wakeup_fd:
                if theirs is None:
                    theirs = []
                theirs.append((fd, ready))
            # else: forgotten by a handler earlier in this pass (never trio's)
        if served:
            hub.passes += 1
        return theirs

    def max_events(registered: dict[int, Any]) -> int:
        # trio asks for as many as it waits on; with the hub's sockets in the same epoll a
        # wait returns at most MAX_EVENTS of either (a bounded pass; epoll rotates its
        # level-triggered ready list, so the rest come first next time, trio's included).
        if handlers:
            return hub_module.MAX_EVENTS
        return max(1, len(registered))

    def get_events(self: Any, timeout: float) -> Any:
        registered = self._registered
        epoll = self._epoll
        events = epoll.poll(timeout, max_events(registered))
        if not events:
            return events  # the timeout expired: trio's own case
        started = 0.0
        first_deadline = 0.0
        for _ in range(_PASSES_PER_WAIT):
            theirs = serve(events, registered) if handlers else events
            if theirs or runq:
                return theirs or _SERVED
            # Nothing for trio: no task woken, no other descriptor. Wait on within the
            # timeout trio asked for, unless a handler moved a deadline earlier.
            if not started:
                started, first_deadline = monotonic(), deadlines.next_deadline()
            elif deadlines.next_deadline() < first_deadline:
                return _SERVED
            left = timeout - (monotonic() - started)
            if left <= 0:
                return _SERVED
            events = epoll.poll(left, max_events(registered))
            if not events:
                return _SERVED  # served during the timeout: not trio's "nothing happened"
        return serve(events, registered) or _SERVED

    def close(self: Any) -> None:
        hub.close()
        base_close(self)

    namespace = {"__slots__": (), "get_events": get_events, "close": close}
    return type("HubServingEpollIOManager", (base,), namespace)
