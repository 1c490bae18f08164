"""The IMAP grammar the proxy reads, each rule written once (RFC 9051 section 9 unless noted).

Every parser and rewriter of the proxy (framer, client parser, tokenizer, policy, session)
takes its patterns, bounds and word lists from here, so two copies of a rule can never
disagree: a disagreement is a policy bypass (one reader sees a literal or a mailbox name
where another sees something else). Rules are byte patterns (``rb"..."`` source, composed
into larger rules by concatenation, like h11's ``_abnf.py``), compiled once at import, so
the per-command hot path pays nothing for the composition.

Where the proxy is deliberately stricter or laxer than the RFC, the rule says so and why.
"""

from __future__ import annotations

import base64
import binascii
import re

# -- limits (the proxy's own, not the RFC's) ---------------------------------------------
# The default cap on a client command line and on a server line held whole; longer lines
# stream as pieces (see framing.py). Config `limits.max_line` overrides it.
DEFAULT_MAX_LINE = 64 * 1024

# -- characters --------------------------------------------------------------------------
#   CHAR           = %x01-7F                        (RFC 5234)
#   CTL            = %x00-1F / %x7F                 (RFC 5234)
#   atom-specials  = "(" / ")" / "{" / SP / CTL / list-wildcards / quoted-specials /
#                    resp-specials
#   list-wildcards = "%" / "*"
#   quoted-specials = DQUOTE / "\"
#   resp-specials  = "]"
# The classes below are negated sets over all 256 byte values: CTL, SP, the specials and
# every 8-bit byte (CHAR is 7-bit) are outside them.
_NOT_CHAR_OR_CTL_OR_SP = rb"\x00-\x20\x7f-\xff"

#   ATOM-CHAR      = <any CHAR except atom-specials>
ATOM_CHAR = rb"[^" + _NOT_CHAR_OR_CTL_OR_SP + rb'(){%*"\\\]]'
#   ASTRING-CHAR   = ATOM-CHAR / resp-specials
ASTRING_CHAR = rb"[^" + _NOT_CHAR_OR_CTL_OR_SP + rb'(){%*"\\]'
#   list-char      = ATOM-CHAR / list-wildcards / resp-specials
LIST_CHAR = rb"[^" + _NOT_CHAR_OR_CTL_OR_SP + rb'(){"\\]'
#   tag            = 1*<any ASTRING-CHAR except "+">
TAG_CHAR = rb"[^" + _NOT_CHAR_OR_CTL_OR_SP + rb'(){%*"\\+]'

ATOM = ATOM_CHAR + rb"+"
ASTRING_ATOM = ASTRING_CHAR + rb"+"  # the atom form of an astring
LIST_MAILBOX_ATOM = LIST_CHAR + rb"+"  # the atom form of list-mailbox
TAG = TAG_CHAR + rb"+"

# -- command head ------------------------------------------------------------------------
#   command        = tag SP (command-any / command-auth / command-nonauth /
#                    command-select) CRLF
#   uid            = "UID" SP (copy / move / fetch / search / store / uid-expunge)
# Command names are atoms; the proxy reads the letter-led ones servers define (X-commands
# included) and requires the name to end at SP or the line end, as servers do.
COMMAND_NAME = rb"[A-Za-z][A-Za-z0-9._-]*"
_END_OF_WORD = rb"(?=[ \r\n]|\Z)"
# Groups: 1 tag, 2 command name. The UID sub-command follows at m.end() + 1.
COMMAND_HEAD_RE = re.compile(rb"(" + TAG + rb") (" + COMMAND_NAME + rb")" + _END_OF_WORD)
COMMAND_NAME_RE = re.compile(rb"(" + COMMAND_NAME + rb")" + _END_OF_WORD)
TAG_RE = re.compile(TAG)

#   response-tagged = tag SP resp-cond-state CRLF
#   response-data   = "*" SP (resp-cond-state / resp-cond-bye / mailbox-data /
#                     message-data / capability-data / ...) CRLF
#   message-data    = nz-number SP ("EXPUNGE" / ("FETCH" SP msg-att))
# "* 12 FETCH", "* OK", "a1 NO": groups 1 the tag (or "*"), 2 the response word after an
# optional message number. Laxer than the client side on purpose: the proxy trusts the
# server's framing and only needs the word.
RESPONSE_HEAD_RE = re.compile(rb"([^ \r\n]+) (?:[0-9]+ )?([A-Za-z][A-Za-z0-9._=-]*)")

# -- quoted strings ----------------------------------------------------------------------
#   quoted         = DQUOTE *QUOTED-CHAR DQUOTE
#   QUOTED-CHAR    = <any TEXT-CHAR except quoted-specials> / "\" quoted-specials /
#                    UTF8-2 / UTF8-3 / UTF8-4
#   TEXT-CHAR      = <any CHAR except CR and LF>
# Read as Dovecot reads it: a backslash escapes any byte but CR and LF (the RFC allows only
# "\\" and "\""), 8-bit bytes are taken as they come (UTF8=ACCEPT names, RFC 6855).
QUOTED_CHAR = rb'(?:[^"\\\r\n]|\\[^\r\n])'
QUOTED = rb'"(' + QUOTED_CHAR + rb'*)"'  # group 1: the content, still escaped
QUOTED_RE = re.compile(QUOTED)
_QUOTED_ESCAPE_RE = re.compile(rb"\\(.)", re.DOTALL)
# What a quoted string the proxy writes may hold: 7-bit TEXT-CHAR without NUL.
_QUOTABLE_RE = re.compile(rb"[\x01-\x09\x0b\x0c\x0e-\x7f]*\Z")


def unquote(content: bytes) -> bytes:
    """The value of a quoted string's content (QUOTED group 1): escapes removed."""
    return _QUOTED_ESCAPE_RE.sub(rb"\1", content) if b"\\" in content else content


def quote(value: bytes) -> bytes:
    """``value`` as a quoted string (the caller checks it may be one, see ``quotable``)."""
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def quotable(value: bytes) -> bool:
    """Whether ``value`` fits a quoted string the RFC 9051 way (7-bit, no CR, LF, NUL)."""
    return _QUOTABLE_RE.match(value) is not None


def is_astring_atom(value: bytes) -> bool:
    return _ASTRING_ATOM_RE.match(value) is not None


def is_list_mailbox_atom(value: bytes) -> bool:
    return _LIST_MAILBOX_ATOM_RE.match(value) is not None


_ASTRING_ATOM_RE = re.compile(ASTRING_ATOM + rb"\Z")
_LIST_MAILBOX_ATOM_RE = re.compile(LIST_MAILBOX_ATOM + rb"\Z")

# -- literals ----------------------------------------------------------------------------
#   literal        = "{" number64 ["+"] "}" CRLF *CHAR8       (RFC 9051, RFC 7888 "+")
#   literal8       = "~{" number64 ["+"] "}" CRLF *OCTET      (RFC 3516, RFC 7888 "+")
#   number64       = 1*DIGIT ; unsigned 63-bit integer (0 <= n <= 9,223,372,036,854,775,807)
# One digit bound for every reader: 1 to 20 digits (len(str(2**64)) == 20, room for leading
# zeros) and then the value range check of ``literal_size``. An announcement with more
# digits is refused as out of range (``overlong_literal``), never read as "no literal": a
# server would read it as one. LF alone is accepted as a line end, as servers do.
MAX_LITERAL_SIZE = (1 << 63) - 1
NUMBER64 = rb"[0-9]{1,20}"
# Groups: 1 "~" (binary) or "", 2 the size digits, 3 "+" (non-synchronising) or "".
LITERAL_HEAD = rb"(~?)\{(" + NUMBER64 + rb")(\+?)\}"
LITERAL_ANNOUNCEMENT = LITERAL_HEAD + rb"\r?\n"
LITERAL_HEAD_RE = re.compile(LITERAL_HEAD)
LITERAL_ANNOUNCEMENT_RE = re.compile(LITERAL_ANNOUNCEMENT)
# How a line that announces a literal ends (the cheap test before the regular expression).
LITERAL_LINE_ENDS = (b"}\r\n", b"}\n")
# The announcement a line ends with (search from at most LITERAL_TAIL bytes before the end).
LITERAL_AT_END_RE = re.compile(LITERAL_ANNOUNCEMENT + rb"\Z")
# The same with the space before it: strip it to see the arguments before a literal.
SPACED_LITERAL_AT_END_RE = re.compile(rb" ?" + LITERAL_ANNOUNCEMENT + rb"\Z")
# The longest announcement: "~{" + 20 digits + "+}" CRLF = 26 bytes; kept a little wider.
LITERAL_TAIL = 32
_DIGITS = b"0123456789"


def literal_size(digits: bytes) -> int | None:
    """The value of number64 ``digits`` (1..20 ASCII digits), None when out of range."""
    size = int(digits)
    return size if size <= MAX_LITERAL_SIZE else None


def overlong_literal(line: bytes) -> bool:
    """Whether ``line`` ends in a literal announcement with more digits than NUMBER64 takes.

    Only worth asking when ``LITERAL_AT_END_RE`` did not match; costs the length of the
    digit run, not of the line.
    """
    body = line[:-3] if line.endswith(b"}\r\n") else line[:-2] if line.endswith(b"}\n") else b""
    if body.endswith(b"+"):
        body = body[:-1]
    run = len(body) - len(body.rstrip(_DIGITS))
    return run > 20 and body[: len(body) - run].endswith(b"{")


# -- mailbox names -----------------------------------------------------------------------
#   mailbox        = "INBOX" / astring
# Outside UTF8=ACCEPT (RFC 6855) non-ASCII names travel in modified UTF-7 (RFC 3501 5.1.3):
# printable US-ASCII stands for itself except "&", written "&-"; other characters are
# UTF-16BE in modified base64 ("," for "/", no padding) between "&" and "-".
_B64_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,")


def encode_mutf7(name: str) -> bytes:
    """Encode a mailbox name in modified UTF-7; ValueError for lone surrogates."""
    out = bytearray()
    run: list[str] = []

    def flush() -> None:
        if run:
            utf16 = "".join(run).encode("utf-16-be")
            out.extend(b"&" + base64.b64encode(utf16).rstrip(b"=").replace(b"/", b",") + b"-")
            run.clear()

    for ch in name:
        if "\x20" <= ch <= "\x7e":
            flush()
            out.extend(b"&-" if ch == "&" else ch.encode("ascii"))
        else:
            run.append(ch)
    flush()
    return bytes(out)


def decode_mutf7(wire: bytes) -> str:
    """Decode modified UTF-7 strictly; ValueError when ``wire`` is not valid mUTF-7."""
    out: list[str] = []
    i, n = 0, len(wire)
    while i < n:
        byte = wire[i]
        if byte == 0x26:  # '&'
            end = wire.find(b"-", i + 1)
            if end < 0:
                raise ValueError("unterminated '&' sequence")
            chunk = wire[i + 1 : end]
            if not chunk:
                out.append("&")
            else:
                if not _B64_CHARS.issuperset(chunk):
                    raise ValueError("invalid character in '&' sequence")
                padded = chunk.replace(b",", b"/") + b"=" * (-len(chunk) % 4)
                try:
                    utf16 = base64.b64decode(padded, validate=True)
                    out.append(utf16.decode("utf-16-be"))
                except (binascii.Error, UnicodeDecodeError):
                    raise ValueError("invalid base64 or UTF-16 in '&' sequence") from None
            i = end + 1
        elif 0x20 <= byte <= 0x7E:
            out.append(chr(byte))
            i += 1
        else:
            raise ValueError(f"byte 0x{byte:02x} not allowed in modified UTF-7")
    return "".join(out)


# The wire form of a name follows the session's mode: UTF-8 once UTF8=ACCEPT is enabled
# (RFC 6855), modified UTF-7 before. "INBOX" is case-insensitive, and so is the first
# component of a name under it (``inbox/x`` is ``INBOX/x``, RFC 9051 5.1); the other
# components are case-sensitive.
def encode_mailbox(name: str, utf8: bool) -> bytes:
    """The wire form of a decoded name in the session's mode."""
    return name.encode("utf-8") if utf8 else encode_mutf7(name)


def decode_mailbox(wire: bytes, utf8: bool = False, delimiter: bytes | None = b"/") -> str:
    """The name as a ``str`` (for glob matching and for the session's view); never raises.

    Invalid modified UTF-7 falls back to the bytes as UTF-8 with replacement characters, so
    a malformed name still matches ``*``-style globs. A leading INBOX component is upper
    case (``canonical_inbox``).
    """
    wire = canonical_inbox(wire, delimiter)
    if b"&" not in wire and wire.isascii():
        return wire.decode("ascii")  # the common case: nothing to decode
    if utf8 or not wire.isascii():
        return wire.decode("utf-8", "replace")
    try:
        return decode_mutf7(wire)
    except ValueError:
        return wire.decode("utf-8", "replace")


def canonical_inbox(wire: bytes, delimiter: bytes | None) -> bytes:
    """Upper-case a leading INBOX component; other components stay case-sensitive."""
    if wire[:5].upper() == b"INBOX" and (
        len(wire) == 5 or (delimiter is not None and wire[5:].startswith(delimiter))
    ):
        return b"INBOX" + wire[5:]
    return wire


# -- responses that carry mailbox names --------------------------------------------------
#   mailbox-data   = "LIST" SP mailbox-list / "LSUB" SP mailbox-list /
#                    "STATUS" SP mailbox SP "(" [status-att-list] ")" / ...
# LIST-like responses carry the name after flags and delimiter; the others first
# (MYRIGHTS, ACL, LISTRIGHTS RFC 4314; METADATA RFC 5464; QUOTAROOT RFC 9208).
LIST_RESPONSES = frozenset({"LIST", "LSUB", "XLIST"})
NAME_FIRST_RESPONSES = frozenset(
    {"STATUS", "MYRIGHTS", "ACL", "LISTRIGHTS", "METADATA", "QUOTAROOT"}
)
MAILBOX_RESPONSES = LIST_RESPONSES | NAME_FIRST_RESPONSES
