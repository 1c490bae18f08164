"""Where client commands carry mailbox names, and reading those arguments.

The tables say which argument of each mailbox-bearing command is a mailbox name (what a
rewrite maps, what ``when.mailbox`` matches) and which commands act on the selected
mailbox; the functions read those tokens from a parsed command. Token offsets index the
command's own bytes, so a rewrite splices the original (see ``splice``).
"""

from __future__ import annotations

import contextlib

from imapproxy.policy.mailboxes import decode_mailbox, decode_mutf7
from imapproxy.wire import grammar
from imapproxy.wire.commands import KNOWN_COMMANDS
from imapproxy.wire.tokens import ParsedCommand, Token, TokenError, TokenKind, parse_command

__all__ = [
    "LIST_COMMANDS",
    "MAILBOX_ARGS",
    "REWRITE_COMMANDS",
    "SELECTED_COMMANDS",
    "as_examine",
    "decoded_selected",
    "list_tokens",
    "mailbox_tokens",
    "parse_arguments",
]

# Argument positions of mailbox names in client commands.
_FIRST = (0,)
MAILBOX_ARGS: dict[str, tuple[int, ...]] = {
    **dict.fromkeys(
        (
            "SELECT",
            "EXAMINE",
            "CREATE",
            "DELETE",
            "SUBSCRIBE",
            "UNSUBSCRIBE",
            "STATUS",
            "APPEND",
            "GETQUOTAROOT",
            "MYRIGHTS",
            "GETACL",
            "SETACL",
            "DELETEACL",
            "LISTRIGHTS",
            "SETMETADATA",
            "GETMETADATA",  # shifted by one when options come first, see mailbox_tokens
        ),
        _FIRST,
    ),
    "RENAME": (0, 1),
    **dict.fromkeys(("COPY", "MOVE", "UID COPY", "UID MOVE", "REPLACE", "UID REPLACE"), (1,)),
}
LIST_COMMANDS = frozenset({"LIST", "LSUB", "XLIST"})
REWRITE_COMMANDS = frozenset(MAILBOX_ARGS) | LIST_COMMANDS
# Commands acting on the selected mailbox: when.mailbox also sees facts.selected.
# COPY is absent on purpose: it leaves the source unchanged, so a glob on it means the
# destination ("no COPY into Archive" must not forbid copying out of it).
SELECTED_COMMANDS = frozenset(
    {"CHECK", "CLOSE", "UNSELECT", "EXPUNGE", "SEARCH", "FETCH", "STORE", "MOVE"}
    | {"SORT", "THREAD", "REPLACE"}
    | {name for name in KNOWN_COMMANDS if name.startswith("UID ") and name != "UID COPY"}
)
_TRAILING_LITERAL = grammar.LITERAL_AT_END_RE


def parse_arguments(raw: bytes, complete: bool) -> ParsedCommand | None:
    """The command's arguments, or None when they cannot be parsed.

    Token offsets index ``raw`` itself, so rewrites splice the original bytes; when the
    command is incomplete, parsing stops before the live literal's announcement (APPEND's
    message), which a rewrite then keeps as it is.
    """
    end = len(raw)
    if not complete:
        m = _TRAILING_LITERAL.search(raw)
        if m is not None:
            end = m.start()
    try:
        return parse_command(raw[:end])
    except TokenError:
        return None


def mailbox_tokens(command: str, parsed: ParsedCommand) -> list[Token] | None:
    """The mailbox-name tokens of a command, or None if they are missing or malformed."""
    positions = MAILBOX_ARGS[command]
    args = parsed.args
    if command == "GETMETADATA" and args and args[0].kind is TokenKind.LIST:
        positions = (1,)  # GETMETADATA (options) mailbox entries
    tokens: list[Token] = []
    for index in positions:
        if index >= len(args) or args[index].kind is TokenKind.LIST:
            return None
        tokens.append(args[index])
    if command in ("SETMETADATA", "GETMETADATA") and tokens[0].value == b"":
        return []  # "" addresses server annotations, not a mailbox
    return tokens


def list_tokens(parsed: ParsedCommand) -> list[tuple[Token, bool]]:
    """LIST [(selection)] reference pattern|(patterns) [RETURN (...)]: (token, is_reference)."""
    args = list(parsed.args)
    if args and args[0].kind is TokenKind.LIST:
        args = args[1:]  # LIST-EXTENDED selection options
    if len(args) < 2:
        return [(args[0], True)] if args else []
    reference, patterns = args[0], args[1]
    members = patterns.items if patterns.kind is TokenKind.LIST else (patterns,)
    return [(reference, True), *[(p, False) for p in members]]


def as_examine(raw: bytes) -> bytes:
    """``tag SELECT args`` as ``tag EXAMINE args`` (the command word is the second one)."""
    space = raw.find(b" ")
    assert raw[space + 1 : space + 7].upper() == b"SELECT", raw[:64]
    return raw[: space + 1] + b"EXAMINE" + raw[space + 7 :]


def decoded_selected(selected: str, delimiter: bytes | None) -> str:
    """The session's selected mailbox as globs see it."""
    # Sessions may hand over the wire form; modified UTF-7 ("&AOQ-") decodes here.
    if "&" in selected and selected.isascii():
        with contextlib.suppress(ValueError):
            selected = decode_mutf7(selected.encode("ascii"))
    return decode_mailbox(selected.encode("utf-8"), True, delimiter)
