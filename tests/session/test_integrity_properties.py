"""Issue 8 property test: the pure session with the real policy, driven by random pipelined
command mixes, random read splits and a fake upstream that answers OK/NO/BAD at random and
sends ``+`` or refuses each literal. Invariants:

1. the upstream receives the client's bytes in order, apart from documented rule effects:
   commands answered by the proxy are absent, ``{n+}`` becomes ``{n}``, and a command the
   server refused before its literal stops after that literal's announcement;
2. no command reaches the upstream whose verdict, in the state the server has reached
   (user after LOGIN's OK, mailbox after SELECT's OK), would be ``block``;
3. the client gets one tagged answer per command, in the order it sent them.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from functools import cache

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imapproxy.policy import SessionFacts
from imapproxy.session.core import Session, SessionSettings
from imapproxy.wire import NEED_DATA, PAUSED, ClientParser, Command, CommandPart, LiteralData
from imapproxy.wire.literals import as_sync
from imapproxy.wire.sasl import login_user
from imapproxy.wire.tokens import parse_command

from .test_integrity import RULES, compile_rules

RULES_HELD = RULES + (
    "- {name: status-archive, action: block, when: {command: [STATUS], mailbox: Archive}}\n"
)
POLICY = compile_rules(RULES_HELD)
IP = ipaddress.ip_address("127.0.0.1")

_PAYLOADS = [b"x CREATE Archive/Inj\r\n", b"Subject: hi\r\n\r\nbody\r\n", b"y DELETE Archive\r\n"]
_SIMPLE = [
    b"LOGIN erin pw",
    b"LOGIN bob pw",
    b"SELECT Archive",
    b"SELECT INBOX",
    b"EXAMINE Archive",
    b"CLOSE",
    b"STORE 1 +FLAGS (\\Deleted)",
    b"EXPUNGE",
    b"DELETE Doomed",
    b"DELETE Archive",
    b"NOOP",
    b"FETCH 1 FLAGS",
    b"UNSELECT",
    b"EXAMINE INBOX",
    b"UID STORE 1 +FLAGS (\\Seen)",
    b"UID EXPUNGE 1",
    b"COPY 1 Archive",
    b"MOVE 1 {7+}\r\nArchive",
    b"LOGIN {4+}\r\nerin pw",  # literals in state-changing commands
    b"SELECT {7+}\r\nArchive",
]


@st.composite
def commands(draw: st.DrawFn) -> list[tuple[bytes, bytes]]:
    """(tag, command bytes) pairs; small tag pool, so duplicates occur."""
    out = []
    for _ in range(draw(st.integers(1, 10))):
        tag = b"t%d" % draw(st.integers(0, 6))
        kind = draw(st.integers(0, len(_SIMPLE) + 1))
        if kind < len(_SIMPLE):
            body = _SIMPLE[kind] + b"\r\n"
        elif kind == len(_SIMPLE):
            box = draw(st.sampled_from([b"INBOX", b"Archive", b"NoSuchBox"]))
            payload = draw(st.sampled_from(_PAYLOADS))
            body = b"APPEND %s {%d+}\r\n%s\r\n" % (box, len(payload), payload)
        else:
            box = draw(st.sampled_from([b"INBOX", b"Archive"]))
            body = b"STATUS {%d+}\r\n%s (MESSAGES)\r\n" % (len(box), box)
        out.append((tag, tag + b" " + body))
    return out


def _converted(raw: bytes) -> bytes:
    """The command as forwarded with rules: every {n+} announcement as {n}."""
    return b"".join(as_sync(line) if line.endswith(b"+}\r\n") else line for line in _lines(raw))


def _lines(raw: bytes) -> list[bytes]:
    return re.findall(rb"[^\n]*\n|[^\n]+$", raw)


def _prefixes(raw: bytes) -> list[bytes]:
    """Where a refused-before-'+' command stops: right after each literal announcement."""
    return [raw[: m.end()] for m in re.finditer(rb"\{\d+\}\r\n", raw)]


def _matches(up: bytes, cmds: list[bytes]) -> bool:
    @cache
    def match(i: int, p: int) -> bool:
        if i == len(cmds):
            return p == len(up)
        full = _converted(cmds[i])
        options = [b"", full, *_prefixes(full)]
        return any(up.startswith(o, p) and match(i + 1, p + len(o)) for o in options)

    return match(0, 0)


@dataclass
class FakeServer:
    """Reads what reaches the upstream with a parser of its own, answers at random."""

    data: st.DataObject
    parser: ClientParser = field(default_factory=ClientParser)
    user: str | None = None
    selected: str | None = None
    received: bytes = b""
    todo: list[tuple[str, bytes, bytes]] = field(default_factory=list)  # (what, tag, raw)
    current: list[bytes] = field(default_factory=list)
    tag: bytes = b""
    violations: list[str] = field(default_factory=list)

    def receive(self, data: bytes) -> None:
        self.received += data
        self.parser.receive_data(data)
        self._drain()

    def _drain(self) -> None:
        for _ in range(10_000):
            ev = self.parser.next_event()
            if ev is NEED_DATA or ev is PAUSED:
                if ev is PAUSED and not any(w == "literal" for w, _, _ in self.todo):
                    self.todo.append(("literal", self.tag, b""))
                return
            if isinstance(ev, Command):
                self.tag, self.current = ev.tag, [ev.raw]
                if ev.literal is None:
                    self._complete()
            elif isinstance(ev, CommandPart):
                self.current.append(ev.raw)
                if ev.literal is None:
                    self._complete()
            elif isinstance(ev, LiteralData):
                self.current.append(ev.data)

    def _complete(self) -> None:
        raw = b"".join(self.current)
        name = parse_command(raw).name.upper()
        facts = SessionFacts(IP, self.user, self.selected)
        if name != "LOGIN" and POLICY.decide(facts, name, raw, True).block is not None:
            self.violations.append(f"{raw!r} reached the server as {self.user}/{self.selected}")
        self.todo.append(("answer", self.tag, raw))

    def step(self) -> bytes:
        """Answer the oldest pending thing; the bytes for the session."""
        what, tag, raw = self.todo.pop(0)
        if what == "literal":
            if self.data.draw(st.booleans(), label="plus"):
                self.parser.continuation_received()
                out = b"+ go\r\n"
            else:
                status = self.data.draw(st.sampled_from(["NO", "BAD"]), label="refusal")
                self.parser.command_finished(tag)
                self._after(self.current[0], status)
                out = tag + b" " + status.encode() + b" [TRYCREATE] refused\r\n"
            self._drain()
            return out
        status = self.data.draw(st.sampled_from(["OK", "OK", "NO", "BAD"]), label="status")
        self._after(raw, status)
        return tag + b" " + status.encode() + b" done\r\n"

    def _after(self, raw: bytes, status: str) -> None:
        """State after the answer, as RFC 9051 has it: SELECT's NO deselects; after BAD the
        old mailbox may stay selected (Dovecot keeps it after a line-level syntax error)."""
        parsed = parse_command(raw) if status == "OK" else None
        name = raw.split()[1].upper()
        if name == b"LOGIN" and status == "OK":
            self.user = login_user(raw)
        elif name in (b"SELECT", b"EXAMINE") and status != "BAD":
            box = parsed.args[0].astring() if parsed is not None else None
            self.selected = box.decode() if box is not None else None
        elif name in (b"CLOSE", b"UNSELECT") and status == "OK":
            self.selected = None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_pipelined_mix_keeps_stream_and_policy_integrity(data: st.DataObject) -> None:
    cmds = data.draw(commands())
    stream = b"".join(raw for _, raw in cmds)
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(stream) - 1)), max_size=8)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    session = Session(SessionSettings(policy=POLICY, facts=SessionFacts), clock=lambda: 0.0)
    server = FakeServer(data)
    down = bytearray()

    def apply(out_up: list[bytes], out_down: list[bytes]) -> None:
        down.extend(b"".join(out_down))
        if out_up:
            server.receive(b"".join(out_up))

    out = session.server_data(b"* OK ready\r\n")
    down.clear()
    for _ in range(10 * len(stream) + 100):
        feed = not session.client_paused and chunks
        if feed and (not server.todo or data.draw(st.booleans(), label="client first")):
            out = session.client_data(chunks.pop(0))
        elif server.todo:
            out = session.server_data(server.step())
        else:
            break
        assert out.close is None
        apply(out.to_upstream, out.to_client)
    assert not chunks, "the session stalled with client bytes unread"
    assert not server.todo and not session.client_paused
    assert not server.violations, server.violations
    assert _matches(server.received, [raw for _, raw in cmds]), server.received
    tagged = [line.split(b" ", 1)[0] for line in bytes(down).split(b"\r\n") if line[:1] == b"t"]
    assert tagged == [tag for tag, _ in cmds]
