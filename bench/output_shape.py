"""What an ordered action list would cost as the session's ``Output``, per command.

    python3 bench/output_shape.py [--rounds N]

Issue 9 proposed ``Output`` as one ORDERED list of actions (``Send(side, data)``,
``Pause``, ``Resume``, ``StartTLS``, ``Close``, ``Note(...)``) that the driver merges per
side, instead of today's per-side lists (``to_client``, ``to_upstream``, ``notes``, then
``start_client_tls`` and ``close``). This measures only the difference: building the
output the way the session does (a fresh one per call, one append per piece) and
consuming it the way the driver does (one write per side, pieces joined; notes handed to
the observers; control actions after the bytes), for three outputs:

* ``command``: the client pump's output for ``a1 NOOP`` (one send upstream);
* ``response``: the upstream pump's output for its tagged OK (one send to the client and
  a ``CommandDone``);
* ``fetch``: a ``FETCH`` answer read in one go (four pieces to the client: the line
  announcing the literal, the payload, the line's rest, the tagged OK; a ``CommandDone``).

For scale it also runs the real ``Session`` on a NOOP and its answer (no sockets): the
whole pure core per command, which the output shape is a part of. Nothing here touches
the network; figures are best-of-N ns per output, so other load on the machine mostly
shows as noise in the last digit.
"""

from __future__ import annotations

import argparse
import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from imapproxy.session.core import Session, SessionSettings
from imapproxy.session.output import CommandDone, Note, Output

COMMAND = b"a1 NOOP\r\n"
ANSWER = b"a1 OK NOOP completed (0.001 + 0.000 secs).\r\n"
FETCH = [
    b"* 1 FETCH (UID 1 BODY[HEADER.FIELDS (SUBJECT)] {24}\r\n",
    b"Subject: Test message\r\n\r\n"[:24],
    b")\r\n",
    b"a2 OK Fetch completed (0.001 + 0.000 secs).\r\n",
]
DONE = CommandDone("a1", "NOOP", "OK", None, 0.0001, None, "u", None, 9, 44)


# --- the proposed shape --------------------------------------------------------------
class Side(enum.Enum):
    CLIENT = "client"
    UPSTREAM = "upstream"


CLIENT, UPSTREAM = Side.CLIENT, Side.UPSTREAM


@dataclass(slots=True)  # not frozen: a frozen dataclass costs 2.5 times as much to build
class Send:
    side: Side
    data: bytes


@dataclass(frozen=True, slots=True)
class StartTLS:
    pass


@dataclass(frozen=True, slots=True)
class Close:
    reason: str


Action = Send | StartTLS | Close | Note


@dataclass(slots=True)
class Actions:
    """The proposed ``Output``: everything one call decided, in the order decided."""

    actions: list[Action] = field(default_factory=list)


# A Send as a plain tuple, the cheapest object an action can be in Python.
TupleAction = tuple[Side, bytes] | Note


@dataclass(slots=True)
class TupleActions:
    actions: list[TupleAction] = field(default_factory=list)


# --- what the driver does with each shape ---------------------------------------------
class Sink:
    """Stands for the two ``Sender`` queues and the observers."""

    __slots__ = ("client", "notes", "upstream")

    def __init__(self) -> None:
        self.client: list[bytes] = []
        self.upstream: list[bytes] = []
        self.notes: list[Note] = []

    def reset(self) -> None:
        self.client.clear()
        self.upstream.clear()
        self.notes.clear()


def drive_lists(out: Output, sink: Sink) -> None:
    """Today's driver (``_enqueue`` + ``_complete``, without the awaits)."""
    if out.to_client:
        sink.client.append(out.to_client[0] if len(out.to_client) == 1 else b"".join(out.to_client))
    if out.to_upstream:
        data = out.to_upstream[0] if len(out.to_upstream) == 1 else b"".join(out.to_upstream)
        sink.upstream.append(data)
    if out.notes:
        sink.notes.extend(out.notes)
    if out.start_client_tls or out.close is not None:
        raise AssertionError("not in these workloads")


def drive_actions(out: Actions, sink: Sink) -> None:
    """The proposed driver: merge the sends per side (one write each), bytes before the
    control actions that follow them, notes to the observers."""
    client: list[bytes] = []
    upstream: list[bytes] = []
    notes: list[Note] = []
    for action in out.actions:
        if type(action) is Send:
            (client if action.side is CLIENT else upstream).append(action.data)
        elif isinstance(action, Note):
            notes.append(action)
        else:  # StartTLS / Close: flush what came before them first
            raise AssertionError("not in these workloads")
    if client:
        sink.client.append(client[0] if len(client) == 1 else b"".join(client))
    if upstream:
        sink.upstream.append(upstream[0] if len(upstream) == 1 else b"".join(upstream))
    if notes:
        sink.notes.extend(notes)


def drive_tuples(out: TupleActions, sink: Sink) -> None:
    client: list[bytes] = []
    upstream: list[bytes] = []
    notes: list[Note] = []
    for action in out.actions:
        if type(action) is tuple:
            side, data = action
            (client if side is CLIENT else upstream).append(data)
        else:
            notes.append(action)
    if client:
        sink.client.append(client[0] if len(client) == 1 else b"".join(client))
    if upstream:
        sink.upstream.append(upstream[0] if len(upstream) == 1 else b"".join(upstream))
    if notes:
        sink.notes.extend(notes)


# --- the three outputs, built as the session builds them ------------------------------
def lists_command(sink: Sink) -> None:
    out = Output()
    out.to_upstream.append(COMMAND)
    drive_lists(out, sink)


def lists_response(sink: Sink) -> None:
    out = Output()
    out.to_client.append(ANSWER)
    out.notes.append(DONE)
    drive_lists(out, sink)


def lists_fetch(sink: Sink) -> None:
    out = Output()
    for piece in FETCH:
        out.to_client.append(piece)
    out.notes.append(DONE)
    drive_lists(out, sink)


def actions_command(sink: Sink) -> None:
    out = Actions()
    out.actions.append(Send(UPSTREAM, COMMAND))
    drive_actions(out, sink)


def actions_response(sink: Sink) -> None:
    out = Actions()
    out.actions.append(Send(CLIENT, ANSWER))
    out.actions.append(DONE)
    drive_actions(out, sink)


def actions_fetch(sink: Sink) -> None:
    out = Actions()
    for piece in FETCH:
        out.actions.append(Send(CLIENT, piece))
    out.actions.append(DONE)
    drive_actions(out, sink)


def tuples_command(sink: Sink) -> None:
    out = TupleActions()
    out.actions.append((UPSTREAM, COMMAND))
    drive_tuples(out, sink)


def tuples_response(sink: Sink) -> None:
    out = TupleActions()
    out.actions.append((CLIENT, ANSWER))
    out.actions.append(DONE)
    drive_tuples(out, sink)


def tuples_fetch(sink: Sink) -> None:
    out = TupleActions()
    for piece in FETCH:
        out.actions.append((CLIENT, piece))
    out.actions.append(DONE)
    drive_tuples(out, sink)


def best_ns(
    runs: list[Callable[[Sink], None]], rounds: int, per_round: int = 20_000
) -> list[float]:
    """Best-of-``rounds`` ns per call of each of ``runs`` (the least disturbed round);
    the runs alternate within each round, so load on the machine hits them alike."""
    sink = Sink()
    best = [float("inf")] * len(runs)
    for _ in range(rounds):
        for i, run in enumerate(runs):
            start = time.perf_counter_ns()
            for _ in range(per_round):
                run(sink)
            best[i] = min(best[i], (time.perf_counter_ns() - start) / per_round)
            sink.reset()
    return best


def session_ns(rounds: int, per_round: int = 5_000) -> float:
    """The real Session: one NOOP in, its answer back (two outputs), ns per command."""
    session = Session(SessionSettings())
    session.server_data(b"* OK ready\r\n")
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter_ns()
        for _ in range(per_round):
            session.client_data(COMMAND)
            session.server_data(ANSWER)
        best = min(best, (time.perf_counter_ns() - start) / per_round)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    rounds = parser.parse_args().rounds
    shapes = {
        "per-side lists (today)": (lists_command, lists_response, lists_fetch),
        "action list, Send(side, data)": (actions_command, actions_response, actions_fetch),
        "action list, Send tuple": (tuples_command, tuples_response, tuples_fetch),
    }
    header = f"{'ns per output, build + merge':32} {'command':>8} {'response':>9} {'fetch':>7}"
    print(header + f" {'cmd+resp':>9}")
    runs = [run for triple in shapes.values() for run in triple]
    measured = best_ns(runs, rounds)
    figures = {}
    for i, name in enumerate(shapes):
        ns = measured[3 * i : 3 * i + 3]
        figures[name] = ns
        print(f"{name:32} {ns[0]:8.0f} {ns[1]:9.0f} {ns[2]:7.0f} {ns[0] + ns[1]:9.0f}")
    whole = session_ns(rounds)
    print(f"{'Session, NOOP + its answer':32} {'':8} {'':9} {'':7} {whole:9.0f}")
    base = sum(figures["per-side lists (today)"][:2])
    for name, ns in list(figures.items())[1:]:
        extra = ns[0] + ns[1] - base
        print(f"{name}: {extra:+.0f} ns per command ({extra / whole:+.1%} of the session's)")


if __name__ == "__main__":
    main()
