"""The server direction of a session: responses in, what the client sees out.

``ServerResponses`` handles each response's first line (``Response``) and the pieces that
follow (``ResponsePart``, literal payload), for ``Session``'s server drain loop:

* rewriting: capability words the proxy cannot carry are filtered (greeting, ``CAPABILITY``,
  ``[CAPABILITY ...]`` codes); with rewrite rules, responses naming mailboxes are rewritten
  to the client's names (held whole while their literals arrive, up to ``max_line``), and
  status texts (``OK/NO/BAD/BYE``, tagged or not) get upstream names replaced;
* continuations: consumed for a released held command's waiting segment or a confirmed
  ``{n+}``, otherwise relayed; either way the client parser may resume;
* tagged answers: the command leaves the in-flight table, the session state follows its
  outcome (user, selected mailbox; UTF-8 names after ``* ENABLED UTF8=ACCEPT`` answering
  an ENABLE), a ``CommandDone`` is noted, the proxy's own answers
  queued behind it are released, then a deferred STARTTLS is answered.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imapproxy.session.inflight import LOGINS, InFlightCommand
from imapproxy.session.output import ResponseLogged
from imapproxy.wire import LiteralData, Response, ResponseKind, ResponsePart
from imapproxy.wire.grammar import MAILBOX_RESPONSES  # rewritten upstream->client by rules

if TYPE_CHECKING:
    from imapproxy.session.core import Session

# Untagged status responses: their text may quote upstream names (policy.rewrite_status_text).
_STATUS_WORDS = frozenset({"OK", "NO", "BAD", "BYE"})
_DESELECTING = frozenset({"CLOSE", "UNSELECT"})


class ServerResponses:
    """Response handling for one session (see the module docstring)."""

    __slots__ = ("held", "response_bytes", "session")

    def __init__(self, session: Session) -> None:
        self.session = session
        self.held: list[bytes] | None = None  # an untagged response held for rewriting
        # Server bytes since the last tagged answer: the responses that answer commands in
        # flight, credited to the command whose tagged answer closes them.
        self.response_bytes = 0

    def on_response(self, ev: Response) -> bool:
        """A response's first line; True if it resumed the client parser."""
        kind = ev.kind
        if kind is ResponseKind.UNTAGGED:
            self._untagged(ev)
            return False
        s = self.session
        if kind is ResponseKind.CONTINUATION:
            release = s.release_queue
            if release.waiting:
                release.continuation(s.out.to_upstream)
                return False
            client = s.client
            silent = client.silent_continuation  # it confirms a {n+}: not the client's
            resumed = client.continuation_received()
            if not silent:
                s.out.to_client.append(ev.raw)
            return resumed
        if kind is ResponseKind.TAGGED:
            return self._tagged(ev)
        s.out.to_client.append(ev.raw)
        return False

    def _untagged(self, ev: Response) -> None:
        s = self.session
        raw = ev.raw
        word = ev.word
        login = s.login
        if not login.greeted:
            self.response_bytes = 0  # the greeting answers no command
            s.user = s.user or login.greeting(word)
            raw = s.caps.response_code(raw)
        elif word == "CAPABILITY":
            raw = s.caps.untagged(raw)
        elif word in _STATUS_WORDS:
            # A [CAPABILITY ...] code may come with any status (RFC 9051 resp-text-code).
            if b"[CAPABILITY" in raw[:20].upper():
                raw = s.caps.response_code(raw)
            if word == "BYE":
                login.server_bye = True
        elif word == "ENABLED" and not s.utf8:
            s.utf8 = _enables_utf8(raw) and any(
                c.name == "ENABLE" for c in s.inflight.pending.values()
            )
        policy = s.policy
        if (
            policy is not None
            and word in MAILBOX_RESPONSES
            and not ev.partial
            and policy.rewrites_responses()
        ):
            if ev.literal is None:
                rewritten = policy.rewrite_response(raw, s.facts())
                if rewritten == b"":
                    return  # an upstream name with no client-side form: hidden
                raw = rewritten if rewritten is not None else raw
            else:
                self.held = [raw]
                return
        elif policy is not None and word in _STATUS_WORDS and policy.rewrites_responses():
            raw = policy.rewrite_status_text(raw) or raw
        if any(c.log == "full" for c in s.inflight.pending.values()):
            line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
            s.out.notes.append(ResponseLogged(line[:512]))
        s.out.to_client.append(raw)

    def held_part(self, raw: bytes, ev: LiteralData | ResponsePart) -> None:
        """A piece of the response held for rewriting (``held`` is not None)."""
        held = self.held
        assert held is not None
        s = self.session
        held.append(raw)
        if isinstance(ev, ResponsePart) and ev.literal is None and not ev.partial:
            self.held = None
            whole = b"".join(held)
            policy = s.policy
            rewritten = policy.rewrite_response(whole, s.facts()) if policy else None
            if rewritten != b"":  # b"": hidden, see _untagged
                s.out.to_client.append(rewritten if rewritten is not None else whole)
        elif sum(len(p) for p in held) > s.settings.max_line:
            self.held = None  # too large to be a mailbox name: pass through as is
            s.out.to_client.append(b"".join(held))

    def _tagged(self, ev: Response) -> bool:
        s = self.session
        out = s.out
        tag = ev.tag
        cmd = s.inflight.take(tag)
        login = s.login
        if cmd is not None and cmd is login.authenticating:
            login.authenticating = None  # an unfinished SASL exchange is over
        release = s.release_queue
        if release.waiting and tag == release.waiting_tag:
            release.abort(out.to_upstream)  # the upstream refused the held command mid-way
        resumed = s.client.command_finished(tag)
        if cmd is not None and cmd.answered:
            return self._after_tagged() or resumed  # the proxy answered the client already
        status = ev.word
        raw = ev.raw
        code = response_code(raw)
        if code == "CAPABILITY":  # in a NO/BAD too (a failed LOGIN's fresh capabilities)
            raw = s.caps.response_code(raw)
        if cmd is not None:
            self._outcome(cmd, status)
            cmd.bytes_out = self.response_bytes
            out.notes.append(cmd.done(status, code, s.clock(), s.user, s.selected))
        self.response_bytes = 0
        policy = s.policy
        if policy is not None and policy.rewrites_responses():
            raw = policy.rewrite_status_text(raw) or raw  # upstream names in error texts
        out.to_client.append(raw)
        return self._after_tagged() or resumed

    def _after_tagged(self) -> bool:
        """Release the proxy's answers whose turn came, then a deferred STARTTLS.
        True if that resumed the client parser."""
        s = self.session
        inflight = s.inflight
        if inflight.queued_bytes:
            inflight.release_answers(s.out.to_client)
        if s.login.deferred_starttls is not None and not inflight.pending:
            s.login.answer_deferred_starttls()
            return True
        return False

    def _outcome(self, cmd: InFlightCommand, status: str) -> None:
        """The session state after the upstream answered ``cmd``."""
        s = self.session
        name = cmd.name
        ok = status == "OK"
        if name in LOGINS:
            if ok:
                s.user = cmd.user
            s.out.notes.append(s.login.outcome(cmd, ok))
        elif name in ("SELECT", "EXAMINE"):
            # A failed SELECT leaves no mailbox selected (RFC 9051 6.3.2): NO. After BAD the
            # server may still have the old one (Dovecot keeps it after a line-level syntax
            # error, drops it after an argument error): keep it, the stricter for rules.
            if ok:
                s.selected = cmd.mailbox
            elif status != "BAD":
                s.selected = None
        elif name in _DESELECTING and ok:
            s.selected = None


def _enables_utf8(raw: bytes) -> bool:
    """``* ENABLED ... UTF8=ACCEPT ...`` (RFC 5161, 6855): from now on names are UTF-8."""
    return b"UTF8=ACCEPT" in raw.upper().split()[2:]


def response_code(raw: bytes) -> str | None:
    """The response code word of a status response, e.g. ``CAPABILITY`` or ``TRYCREATE``."""
    lb = raw.find(b"[", 0, 64)
    if lb < 0:
        return None
    end = lb + 1
    while end < len(raw) and raw[end] not in b" ]\r\n":
        end += 1
    return raw[lb + 1 : end].decode("ascii", "replace").upper() or None
