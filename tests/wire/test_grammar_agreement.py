"""The client parser, the tokenizer and the policy read the same bytes the same way (issue 9).

Each case is one whole command (literals inline) and what it must mean: the tag, the
command name, the first argument's value and the literal sizes, or "rejected". The three
readers are asked independently:

* the client parser (``ClientParser``, the hot path), fed the command followed by a NOOP,
  with the server's ``+`` simulated for synchronising literals: it must end the command
  exactly where the tokenizer does, so the NOOP is the next command;
* the tokenizer (``tokens.parse_command``), the slow path the policy and session use;
* the policy (``Policy.decide``) with a block rule whose ``when.mailbox`` is exactly the
  expected name: it must block, a rule on another name must not, and a rejected command
  must be refused as unparsable (fail closed), never judged on a misread name.

A disagreement between any two is a policy bypass: the policy judges one name while the
server acts on another, or reads data where the server reads a command.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import pytest

from imapproxy.policy import Policy, SessionFacts
from imapproxy.policy.model import Rule, When
from imapproxy.wire import Command, CommandPart, LiteralData, ProtocolError
from imapproxy.wire.client import ClientParser
from imapproxy.wire.events import NEED_DATA, PAUSED
from imapproxy.wire.sasl import login_user
from imapproxy.wire.tokens import TokenError, TokenKind, parse_command

_UNPARSABLE = "Command arguments could not be checked against policy"
_NOOP = b"z9 NOOP\r\n"


@dataclass(frozen=True)
class Case:
    raw: bytes  # one whole command, literal payloads inline
    tag: bytes | None = None  # None: every reader rejects the command
    name: str = "SELECT"
    value: bytes = b""  # the first argument (the mailbox for SELECT)
    literals: tuple[tuple[int, bool, bool], ...] = ()  # (size, sync, binary) in order


def _padded(size: int, digits: int) -> bytes:
    return b"%0*d" % (digits, size)


CASES = {
    # -- literal announcements: one number64 bound, 1..20 digits, value <= 2^63-1
    "20-digit size": Case(
        b"a SELECT {" + _padded(4, 20) + b"}\r\nSent\r\n",
        b"a",
        value=b"Sent",
        literals=((4, True, False),),
    ),
    "20-digit non-sync": Case(
        b"a SELECT {" + _padded(5, 20) + b"+}\r\nDraft\r\n",
        b"a",
        value=b"Draft",
        literals=((5, False, False),),
    ),
    "zero-size literal": Case(
        b"a SELECT {0}\r\n\r\n", b"a", value=b"", literals=((0, True, False),)
    ),
    "non-sync literal": Case(
        b"a SELECT {5+}\r\nDraft\r\n", b"a", value=b"Draft", literals=((5, False, False),)
    ),
    "literal8": Case(
        b"a APPEND Box ~{5}\r\nhello\r\n",
        b"a",
        name="APPEND",
        value=b"Box",
        literals=((5, True, True),),
    ),
    "literal with LF only": Case(
        b"a SELECT {4}\nSent\r\n", b"a", value=b"Sent", literals=((4, True, False),)
    ),
    "2^63 out of range": Case(b"a SELECT {9223372036854775808}\r\nx\r\n"),
    "2^64 out of range": Case(b"a SELECT {18446744073709551616}\r\nx\r\n"),
    "21 digits": Case(b"a SELECT {" + _padded(4, 21) + b"}\r\nSent\r\n"),
    "literal glued to an atom": Case(b"a SELECT x{4}\r\nSent\r\n"),
    # -- quoted strings: "\\" and "\"" escapes decide whether a literal follows an open quote
    "quoted backslash": Case(b'a SELECT "a\\\\b"\r\n', b"a", value=b"a\\b"),
    "quoted escaped quote": Case(b'a SELECT "say \\"hi\\""\r\n', b"a", value=b'say "hi"'),
    "quoted ends in backslash, then literal": Case(
        b'a SELECT "a\\\\" {4}\r\nSent\r\n', b"a", value=b"a\\", literals=((4, True, False),)
    ),
    "escaped quote keeps it open before a literal": Case(b'a SELECT "x\\" {4}\r\nSent\r\n'),
    "backslash, escaped quote: still open": Case(b'a SELECT "x\\\\\\" {4}\r\nSent\r\n'),
    "quoted 8-bit": Case(b'a SELECT "Entw\xc3\xbcrfe"\r\n', b"a", value=b"Entw\xc3\xbcrfe"),
    # -- atoms: 8-bit bytes (UTF8=ACCEPT clients) are read as the server reads them
    "8-bit atom": Case(b"a SELECT Entw\xc3\xbcrfe\r\n", b"a", value=b"Entw\xc3\xbcrfe"),
    "8-bit atom before a literal": Case(
        b"a SELECT \xc3\xa4 {4}\r\nSent\r\n", b"a", value=b"\xc3\xa4", literals=((4, True, False),)
    ),
    "atom with ] and [": Case(b"a SELECT [Gmail]/Sent\r\n", b"a", value=b"[Gmail]/Sent"),
    # -- tags: 1*<ASTRING-CHAR except "+">
    "odd legal tag": Case(
        b"a]!#$&'-./:;<=>?@[^_`|}~ SELECT x\r\n", b"a]!#$&'-./:;<=>?@[^_`|}~", value=b"x"
    ),
    "numeric tag": Case(b"0001 SELECT x\r\n", b"0001", value=b"x"),
    "tag with +": Case(b"a+b SELECT x\r\n"),
    "tag with %": Case(b"a%b SELECT x\r\n"),
    "tag with *": Case(b"a* SELECT x\r\n"),
    "tag with (": Case(b"a(b SELECT x\r\n"),
    "tag with quote": Case(b'a"b SELECT x\r\n'),
    "tag with backslash": Case(b"a\\b SELECT x\r\n"),
    "tag with {": Case(b"a{b SELECT x\r\n"),
    "8-bit tag": Case(b"\xc3\xa4 SELECT x\r\n"),
    # -- command head: the name ends at SP or the line end
    "name glued to a quote": Case(b'a SELECT"x"\r\n'),
    "lower-case name": Case(b"a select x\r\n", b"a", value=b"x"),
    "login with 20-digit literals": Case(
        b"a LOGIN {" + _padded(3, 20) + b"}\r\nbob {" + _padded(2, 20) + b"}\r\npw\r\n",
        b"a",
        name="LOGIN",
        value=b"bob",
        literals=((3, True, False), (2, True, False)),
    ),
}


def _client_view(raw: bytes) -> tuple[bytes, str, tuple[tuple[int, bool, bool], ...]] | None:
    """(tag, name, literals) as the client parser reads ``raw``; None when it rejects it.

    The parser must then read the NOOP after it as the next command, and hand out exactly
    ``raw`` as the command's bytes."""
    parser = ClientParser()
    parser.receive_data(raw + _NOOP)
    seen: list[bytes] = []
    head: Command | None = None
    literals: list[tuple[int, bool, bool]] = []
    for _ in range(100):
        try:
            ev = parser.next_event()
        except ProtocolError:
            return None
        if ev is PAUSED:
            assert parser.continuation_received()  # the server's "+"
            continue
        if ev is NEED_DATA:
            break
        if isinstance(ev, Command):
            if head is not None:  # the next command: the first one ended here
                assert (ev.tag, ev.name) == (b"z9", "NOOP")
                break
            head = ev
        elif not isinstance(ev, (CommandPart, LiteralData)):
            raise AssertionError(f"unexpected event {ev!r}")
        seen.append(ev.raw if not isinstance(ev, LiteralData) else ev.data)
        literal = getattr(ev, "literal", None)
        if literal is not None:
            literals.append((literal.size, literal.sync, literal.binary))
    else:
        raise AssertionError("parser did not settle")
    assert head is not None
    assert b"".join(seen) == raw
    return head.tag, head.name, tuple(literals)


def _token_view(raw: bytes) -> tuple[bytes, str, bytes, tuple[int, ...]] | None:
    try:
        parsed = parse_command(raw)
    except TokenError:
        return None
    first = parsed.args[0].value if parsed.args else b""
    sizes = tuple(len(t.value) for t in parsed.args if t.kind is TokenKind.LITERAL)
    return parsed.tag, parsed.name, first, sizes


def _glob_escape(name: str) -> str:
    return "".join(f"[{ch}]" if ch in "[]*?" else ch for ch in name)


def _policy_blocks(raw: bytes, name: str, mailbox: str) -> tuple[str, str] | None:
    rule = Rule("exact", "block", When(command=(name,), mailbox=(_glob_escape(mailbox),)))
    facts = SessionFacts(ipaddress.ip_address("192.0.2.1"), None, None, utf8=True)
    return Policy.compile([rule]).decide(facts, name, raw, True).block


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_client_parser_tokenizer_and_policy_agree(case: Case) -> None:
    client = _client_view(case.raw)
    tokens = _token_view(case.raw)
    if case.tag is None:
        assert client is None, "the client parser accepted what must be rejected"
        assert tokens is None, "the tokenizer accepted what must be rejected"
        verdict = _policy_blocks(case.raw, "SELECT", "x")
        assert verdict == ("exact", _UNPARSABLE), "the policy judged an unreadable command"
        return
    assert client == (case.tag, case.name, case.literals)
    assert tokens is not None
    assert tokens[:2] == (case.tag, case.name)
    if case.name != "APPEND":  # APPEND's literal is the message, not an argument read
        assert tokens[2] == case.value
    assert tokens[3] == tuple(size for size, _, _ in case.literals)
    if case.name == "LOGIN":
        assert login_user(case.raw) == case.value.decode()
        return
    wanted = case.value.decode("utf-8")
    assert _policy_blocks(case.raw, case.name, wanted) == ("exact", "Blocked by policy rule exact")
    assert _policy_blocks(case.raw, case.name, wanted + "-other") is None


@pytest.mark.parametrize(
    ("size", "readable"),
    [(2**32, True), (2**63 - 1, True), (2**63, False), (2**64, False)],
)
def test_large_announcements_agree(size: int, readable: bool) -> None:
    """Sizes too large to send: the parser reads the announcement (or fails fatally), the
    tokenizer takes it as a literal running past the data (or out of range), and the policy
    judges APPEND on the mailbox before it (the session streams such payloads)."""
    line = b"a APPEND Box {%d}\r\n" % size
    parser = ClientParser()
    parser.receive_data(line)
    if readable:
        ev = parser.next_event()
        assert isinstance(ev, Command) and ev.literal is not None
        assert (ev.literal.size, ev.literal.sync) == (size, True)
        with pytest.raises(TokenError, match=f"literal of {size} bytes runs past"):
            parse_command(line)
    else:
        with pytest.raises(ProtocolError) as err:
            parser.next_event()
        assert err.value.fatal
        with pytest.raises(TokenError, match="out of range"):
            parse_command(line)
    rule = Rule("box", "block", When(command=("APPEND",), mailbox=("Box",)))
    facts = SessionFacts(ipaddress.ip_address("192.0.2.1"), None, None)
    verdict = Policy.compile([rule]).decide(facts, "APPEND", line, False)
    assert verdict.block == ("box", "Blocked by policy rule box")
