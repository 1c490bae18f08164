"""The session's abuse-limit seams: the login gate and the bound on pipelined commands."""

from __future__ import annotations

import base64

from imapproxy.session.output import LoginDone

from .test_session import Recorder

GREETING = b"* OK ready\r\n"
REFUSAL = b"NO [UNAVAILABLE] Too many failed logins, try later"


class Gate:
    def __init__(self, refuse: set[str | None]) -> None:
        self.refuse = refuse
        self.asked: list[str | None] = []

    def __call__(self, user: str | None) -> bytes | None:
        self.asked.append(user)
        return REFUSAL if user in self.refuse else None


def _start(gate: Gate, **settings: object) -> Recorder:
    pb = Recorder(login_gate=gate, **settings)
    pb.s(GREETING)
    return pb


def test_refused_login_never_reaches_the_server() -> None:
    gate = Gate({"mallory"})
    pb = _start(gate)
    pb.c(b"a LOGIN mallory guess\r\nb NOOP\r\n")
    assert pb.up == b"b NOOP\r\n"
    assert pb.down == GREETING + b"a " + REFUSAL + b"\r\n"
    assert LoginDone("LOGIN", "blocked", "mallory") in pb.notes
    pb.c(b"c LOGIN alice pw\r\n")
    assert pb.up.endswith(b"c LOGIN alice pw\r\n")
    assert gate.asked == ["mallory", "alice"]


def test_literal_user_name_is_judged_by_address_and_relayed_exactly() -> None:
    gate = Gate({None})
    pb = _start(gate)
    pb.c(b"a LOGIN {7}\r\n")
    assert pb.up == b"" and pb.down.endswith(b"a " + REFUSAL + b"\r\n")
    assert gate.asked == [None]
    gate.refuse.clear()
    pb.c(b"b LOGIN {5}\r\n")
    assert pb.up == b"b LOGIN {5}\r\n"  # the server's own "+" is relayed, nothing held
    pb.s(b"+ OK\r\n")
    assert pb.down.endswith(b"+ OK\r\n")


def test_authenticate_is_gated_with_the_user_of_its_first_response() -> None:
    gate = Gate({"mallory"})
    pb = _start(gate)
    plain = base64.b64encode(b"\x00mallory\x00guess")
    pb.c(b"a AUTHENTICATE PLAIN\r\n")
    assert pb.up == b"a AUTHENTICATE PLAIN\r\n"
    pb.s(b"+ \r\n")
    pb.c(plain + b"\r\n")
    assert pb.up == b"a AUTHENTICATE PLAIN\r\n*\r\n"  # cancelled, credentials not sent
    assert pb.down.endswith(b"a " + REFUSAL + b"\r\n")
    pb.s(b"a BAD cancelled\r\n")  # swallowed: the client has its answer
    assert not pb.down.endswith(b"cancelled\r\n")
    pb.c(b"b AUTHENTICATE PLAIN " + plain + b"\r\n")  # SASL-IR: gated at once
    assert not pb.up.endswith(plain + b"\r\n")
    assert gate.asked == ["mallory", "mallory"]


def test_commands_beyond_the_pipelining_bound_are_answered_bad() -> None:
    pb = Recorder(max_pipelined=3)
    pb.s(GREETING)
    pb.c(b"".join(b"t%d NOOP\r\n" % i for i in range(5)))
    assert pb.up == b"t0 NOOP\r\nt1 NOOP\r\nt2 NOOP\r\n"
    assert pb.down == GREETING  # the proxy's answers wait behind those forwarded before them
    answers = b"t0 OK done\r\nt1 OK done\r\nt2 OK done\r\n"
    pb.s(answers)
    assert pb.down == GREETING + answers + (
        b"t3 BAD [LIMIT] Too many commands in flight\r\n"
        b"t4 BAD [LIMIT] Too many commands in flight\r\n"
    )
    pb.c(b"t5 NOOP\r\n")  # room again
    assert pb.up.endswith(b"t5 NOOP\r\n")
