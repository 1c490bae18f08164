"""Rule dataclasses: what the config loader produces and ``Policy.compile`` consumes.

Values here are already validated and normalised (command names upper-cased, CIDRs parsed),
so the engine never re-checks them; the loader (``policy.rulefile``) owns the error messages.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

ACTIONS: tuple[str, ...] = ("block", "log", "rewrite_mailbox", "read_only", "trace")
# trace: whole sessions are recorded by the inspector (imapproxy.inspect.trace); the engine
# never sees these rules.
Action = Literal["block", "log", "rewrite_mailbox", "read_only", "trace"]
Detail = Literal["command", "full"]
Direction = Literal["client", "server"]


@dataclass(frozen=True, slots=True)
class When:
    """Conditions, AND-ed; an empty tuple / None means "any"."""

    command: tuple[str, ...] = ()  # normalised names: "DELETE", "UID FETCH"
    user: tuple[str, ...] = ()  # fnmatch globs, matched case-insensitively
    mailbox: tuple[str, ...] = ()  # fnmatch globs on the decoded client-side name
    client: tuple[Network, ...] = ()
    direction: Direction | None = None

    @property
    def is_empty(self) -> bool:
        return not (self.command or self.user or self.mailbox or self.client or self.direction)


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    action: Action
    when: When = field(default_factory=When)
    message: str | None = None  # block: the text after `TAG NO [...]`
    detail: Detail = "command"  # log: "full" also logs untagged responses
    from_: str | None = None  # rewrite_mailbox: client-side name (decoded)
    to: str | None = None  # rewrite_mailbox: upstream name (decoded)
    bodies: int | None = 0  # trace: literal payload bytes kept per literal (None: all)
    location: str = ""  # "file:line:col" of the rule, for messages and `check`

    def block_message(self) -> str:
        return self.message or f"Blocked by policy rule {self.name}"
