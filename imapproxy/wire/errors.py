"""Protocol errors raised by the parsers."""

from __future__ import annotations


class ProtocolError(Exception):
    """The peer sent bytes that violate IMAP framing.

    ``fatal`` errors leave the stream unparseable (the session must close); non-fatal ones
    concern one line, already consumed, and the parser is ready for the next.
    ``tag`` is the offending command's tag when it could be read, so a reply can be tagged.
    """

    def __init__(self, reason: str, *, fatal: bool, tag: bytes | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fatal = fatal
        self.tag = tag
