"""The IMAP command vocabulary shared by the parser, config validation and metrics.

Command names are normalised to upper case; UID-prefixed commands are named with a single
space ("UID FETCH"), the form rules and metric labels use.
"""

from __future__ import annotations

# RFC 9051, RFC 3501 and the extensions real clients and servers use.
BASE_COMMANDS: frozenset[str] = frozenset(
    {
        "APPEND",
        "AUTHENTICATE",
        "CAPABILITY",
        "CHECK",
        "CLOSE",
        "COMPRESS",
        "COPY",
        "CREATE",
        "DELETE",
        "DELETEACL",
        "ENABLE",
        "EXAMINE",
        "EXPUNGE",
        "FETCH",
        "GETACL",
        "GETMETADATA",
        "GETQUOTA",
        "GETQUOTAROOT",
        "ID",
        "IDLE",
        "LIST",
        "LISTRIGHTS",
        "LOGIN",
        "LOGOUT",
        "LSUB",
        "MOVE",
        "MYRIGHTS",
        "NAMESPACE",
        "NOOP",
        "NOTIFY",
        "RENAME",
        "REPLACE",
        "SEARCH",
        "SELECT",
        "SETACL",
        "SETMETADATA",
        "SETQUOTA",
        "SORT",
        "STARTTLS",
        "STATUS",
        "STORE",
        "SUBSCRIBE",
        "THREAD",
        "UNAUTHENTICATE",
        "UNSELECT",
        "UNSUBSCRIBE",
        "XLIST",
        "ESEARCH",
        "URLFETCH",
        "GENURLAUTH",
        "RESETKEY",
        "CANCELUPDATE",
    }
)

# Commands that may follow "UID".
UID_SUBCOMMANDS: frozenset[str] = frozenset(
    {"COPY", "EXPUNGE", "FETCH", "MOVE", "REPLACE", "SEARCH", "SORT", "STORE", "THREAD"}
)

KNOWN_COMMANDS: frozenset[str] = BASE_COMMANDS | frozenset(
    f"UID {name}" for name in UID_SUBCOMMANDS
)


def normalise_command_name(name: str) -> str:
    """Upper-case a command name and fold any run of spaces ("uid  fetch" -> "UID FETCH")."""
    return " ".join(name.upper().split())


def is_known_command(name: str) -> bool:
    return normalise_command_name(name) in KNOWN_COMMANDS
