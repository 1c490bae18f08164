"""Sans-I/O IMAP wire protocol: framing and parsing for both directions, no sockets."""

from .client import ClientParser
from .errors import ProtocolError
from .events import (
    CLOSED,
    NEED_DATA,
    PAUSED,
    ClientEvent,
    Command,
    CommandPart,
    EmptyLine,
    IdleDone,
    LiteralData,
    LiteralHeader,
    Response,
    ResponseKind,
    ResponsePart,
    SaslResponse,
    Sentinel,
    ServerEvent,
)
from .server import ServerParser

__all__ = [
    "CLOSED",
    "NEED_DATA",
    "PAUSED",
    "ClientEvent",
    "ClientParser",
    "Command",
    "CommandPart",
    "EmptyLine",
    "IdleDone",
    "LiteralData",
    "LiteralHeader",
    "ProtocolError",
    "Response",
    "ResponseKind",
    "ResponsePart",
    "SaslResponse",
    "Sentinel",
    "ServerEvent",
    "ServerParser",
]
