"""What a session is configured with, and the seam to the policy engine.

The session depends on these protocols, not on ``imapproxy.policy``: tests drive it with
small fakes, and the engine stays a pure module of its own. What the session tells the
policy about itself is declared here (``SessionFacts``), so mypy checks both sides of
``decide`` against one type; the policy imports it (imports point down: policy -> session).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from imapproxy.wire.grammar import DEFAULT_MAX_LINE

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


# --- the policy seam (implemented by imapproxy.policy.Policy) --------------------------
@dataclass(frozen=True, slots=True)
class SessionFacts:
    """What the session knows when a rule judges a command or response."""

    client_ip: IPAddress  # the client's address (PROXY-carried when behind a balancer)
    user: str | None  # after a successful LOGIN/AUTHENTICATE (LOGIN: read from the command)
    selected: str | None  # the selected mailbox as the client names it (decoded)
    utf8: bool = False  # the server enabled UTF8=ACCEPT: names on the wire are UTF-8


class VerdictLike(Protocol):
    @property
    def block(self) -> tuple[str, str] | None: ...
    @property
    def rewritten(self) -> bytes | None: ...
    @property
    def log(self) -> str | None: ...
    @property
    def matched(self) -> tuple[tuple[str, str], ...]: ...


class PolicyLike(Protocol):
    def needs_arguments(self, command: str) -> bool: ...
    def decide(
        self, facts: SessionFacts, command: str, raw: bytes, complete: bool
    ) -> VerdictLike: ...
    def rewrites_responses(self) -> bool: ...
    # facts: the session's, for rules that judge a response (a `* STATUS` of LIST-STATUS)
    def rewrite_response(self, raw: bytes, facts: SessionFacts | None = None) -> bytes | None: ...
    # tagged and untagged OK/NO/BAD/BYE: upstream names in the text -> client names
    def rewrite_status_text(self, raw: bytes) -> bytes | None: ...


# (client ip, user, selected, utf8) -> facts; SessionFacts itself unless a test records them
FactsFactory = Callable[[IPAddress, str | None, str | None, bool], SessionFacts]


_LOOPBACK = ipaddress.ip_address("127.0.0.1")


@dataclass(frozen=True, slots=True)
class SessionSettings:
    client_ip: IPAddress = _LOOPBACK
    max_line: int = DEFAULT_MAX_LINE
    offer_starttls: bool = False  # the proxy performs STARTTLS with clients itself
    require_tls: bool = False  # refuse LOGIN/AUTHENTICATE until the client leg is TLS
    client_tls_active: bool = False  # the client connected over implicit TLS
    policy: PolicyLike | None = None
    # When set, consulted for every command instead of ``policy``: a reload (SIGHUP) then
    # applies to sessions already open, from their next command on.
    policy_source: Callable[[], PolicyLike | None] | None = None
    facts: FactsFactory = SessionFacts  # builds the facts each decision is made under
    # Confirmed literals: None (production) means "while rules are in force".
    confirm_literals: bool | None = None
    hide_capabilities: frozenset[bytes] = frozenset({b"STARTTLS", b"LOGINDISABLED"})
    # Abuse limits (server.guard): consulted before a LOGIN/AUTHENTICATE goes upstream, with
    # the user it names (None: not known, e.g. a LOGIN too large to hold). None lets it
    # through; otherwise the text the proxy answers with (``NO [LIMIT] ...``), and the
    # server never sees the attempt.
    login_gate: Callable[[str | None], bytes | None] | None = None
    max_pipelined: int = 0  # commands in flight above this are answered BAD; 0: no bound
