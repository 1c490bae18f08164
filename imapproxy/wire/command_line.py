"""A client command line read the way a server reads it: tag, command name, literal placement.

Pure functions over one line (or the first piece of an over-long one); the client parser
(``client.py``) calls them and keeps the state. A line a server answers ``BAD`` without
running anything raises ``ProtocolError(fatal=False, tag=...)`` (``tag`` when it could be
read), so the proxy answers it ``BAD`` itself and never forwards it:

* ``command_head``: ``tag SP name`` (grammar: tag, command name), and for ``UID`` its
  sub-command; anything else is not a command;
* ``literal_starts_argument``: whether a literal announced at a line's end is one a server
  reads as a literal. It is not when the command takes no arguments (``NO_ARGUMENTS``: a
  server skips whatever follows their name), when the ``{`` is glued to an atom, or when a
  quoted string is still open before it; the server would then run the announced "payload"
  as a command of its own, unchecked by the rules.
"""

from __future__ import annotations

from . import grammar
from .errors import ProtocolError

# Commands that take no arguments: a server skips whatever follows the name on their line.
NO_ARGUMENTS = frozenset(
    {
        "CAPABILITY",
        "CHECK",
        "CLOSE",
        "EXPUNGE",
        "IDLE",
        "LOGOUT",
        "NAMESPACE",
        "NOOP",
        "STARTTLS",
        "UNAUTHENTICATE",
        "UNSELECT",
    }
)

_HEAD = grammar.COMMAND_HEAD_RE  # tag SP command-name
_NAME = grammar.COMMAND_NAME_RE  # the UID sub-command
_TAG_ONLY = grammar.TAG_RE
_QUOTED = grammar.QUOTED_RE
_LITERAL_START = grammar.LITERAL_AT_END_RE


def command_head(line: bytes) -> tuple[bytes, str, int]:
    """``(tag, NAME, arguments_start)`` of a command line: the name upper case, ``"UID
    FETCH"`` style for UID commands; ``arguments_start`` is the offset just after the
    command name (before UID's sub-command). Raises ``ProtocolError(fatal=False)`` for a
    line that is no command (``tag`` set when the line starts with one)."""
    m = _HEAD.match(line)
    if m is None:
        t = _TAG_ONLY.match(line)
        tag = t.group() if t is not None and line[t.end() : t.end() + 1] == b" " else None
        raise ProtocolError("malformed command line", fatal=False, tag=tag)
    tag = m.group(1)
    name = m.group(2).decode("ascii").upper()
    if name == "UID":
        sub = _NAME.match(line, m.end() + 1)
        if sub is None:
            raise ProtocolError("UID needs a command", fatal=False, tag=tag)
        name = "UID " + sub.group(1).decode("ascii").upper()
    return tag, name, m.end()


def literal_starts_argument(name: str, line: bytes, arguments_start: int) -> bool:
    """Whether the literal announced at the end of ``line`` (a line of command ``name``
    whose arguments start at ``arguments_start``; 0 for a line after a literal) starts an
    argument: the command takes arguments, the announcement follows a space or ``(``, and
    no quoted string is left open before it."""
    if name in NO_ARGUMENTS:
        return False
    m = _LITERAL_START.search(line, max(arguments_start, len(line) - grammar.LITERAL_TAIL))
    if m is None:
        return False
    start = m.start()
    if start <= arguments_start or line[start - 1 : start] not in (b" ", b"("):
        return False
    return b'"' not in _QUOTED.sub(b"", line[arguments_start:start])
