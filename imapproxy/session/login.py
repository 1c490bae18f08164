"""Login observation: who the client logs in as, read from the bytes it sends upstream.

Today the upstream greets the client and authenticates it; the proxy relays and looks on.
``UpstreamLogin`` is that phase's seam: the greeting (PREAUTH, a refusing BYE), the user a
LOGIN or a SASL exchange names (never the secret), and the outcome of a login. A
pre-authentication phase (the proxy greets and authenticates the client itself, then picks
the upstream by user) replaces this object and the greeting/LOGIN/AUTHENTICATE branches
that call it (``Session`` docstring); the rest of the session is unchanged by that.

Credentials: ``raw`` bytes of LOGIN and SASL lines pass through here; only user names
leave (in ``InFlightCommand.user`` and ``LoginDone``).
"""

from __future__ import annotations

from imapproxy.policy.mailboxes import decode_mailbox
from imapproxy.session.inflight import InFlightCommand
from imapproxy.session.output import LoginDone
from imapproxy.wire.sasl import login_user, sasl_user
from imapproxy.wire.tokens import TokenError, parse_command

LOGINS = ("LOGIN", "AUTHENTICATE")


class UpstreamLogin:
    """Observes a login the upstream performs (see the module docstring)."""

    __slots__ = ("authenticating", "greeted", "server_bye")

    def __init__(self) -> None:
        self.greeted = False
        self.server_bye = False  # the upstream said BYE: the client needs no second one
        # AUTHENTICATE whose first SASL response (the one naming the user) is still to come.
        self.authenticating: InFlightCommand | None = None

    def greeting(self, word: str) -> str | None:
        """The upstream's first response, ``word`` its status; the user it implies."""
        self.greeted = True
        if word == "PREAUTH":
            return "(preauth)"
        if word == "BYE":  # a refusing greeting: the client needs no second BYE
            self.server_bye = True
        return None

    def start_authenticate(self, cmd: InFlightCommand, raw: bytes) -> None:
        """An AUTHENTICATE line: its mechanism, and the user if it has an initial response."""
        self.authenticating = cmd
        words = raw.split(None, 3)
        cmd.mechanism = words[2].decode("ascii", "replace").upper() if len(words) > 2 else "?"
        if len(words) > 3 and words[3].strip() != b"=":  # SASL-IR initial response
            cmd.user = sasl_user(cmd.mechanism, words[3])
            self.authenticating = None  # the initial response was the first one

    def sasl_response(self, raw: bytes) -> InFlightCommand | None:
        """A client line of a SASL exchange; the command if this line named its user."""
        cmd = self.authenticating
        self.authenticating = None  # later lines answer challenges (LOGIN: the password)
        if cmd is not None and cmd.user is None and cmd.mechanism is not None:
            cmd.user = sasl_user(cmd.mechanism, raw)
            if cmd.user is not None:
                return cmd
        return None

    @staticmethod
    def outcome(cmd: InFlightCommand, ok: bool) -> LoginDone:
        """The observation for a LOGIN/AUTHENTICATE the upstream answered."""
        return LoginDone(cmd.mechanism or "LOGIN", "ok" if ok else "failed", cmd.user)


def observe_arguments(cmd: InFlightCommand) -> None:
    """Read what the session tracks from a complete observed command (``cmd.capture``):
    LOGIN's user, SELECT/EXAMINE's mailbox."""
    assert cmd.capture is not None
    raw = b"".join(cmd.capture)
    cmd.capture = None
    if cmd.name == "LOGIN":
        cmd.user = login_user(raw)
        return
    try:  # SELECT / EXAMINE
        args = parse_command(raw).args
    except TokenError:
        return
    value = args[0].astring() if args else None
    cmd.mailbox = decode_mailbox(value) if value is not None else None
