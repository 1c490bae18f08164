"""Literal sizes the proxy and Dovecot must read alike (issue 9: one number64 bound).

Dovecot reads a literal size of any number of digits (leading zeros included) as long as the
value fits. The proxy's framer once read up to 20 digits, its tokenizer only 19: a LOGIN
whose user came as a 20-digit literal was forwarded (Dovecot logged the user in) while the
session could not read the user, so per-user block rules did not apply to that session.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from imapproxy.config.loader import load_config
from imapproxy.demo.dovecot import Dovecot
from tests.support.accounts import Account, new_account
from tests.support.rawimap import RawIMAP

from .conftest import ProxyFactory

PER_USER_BLOCK = """
rules:
  - name: no-delete-for-e2e
    action: block
    when: {command: [DELETE], user: ["e2e*"]}
    message: "Deleting folders is disabled by policy"
"""


def _login_with_padded_literals(c: RawIMAP, a: Account, digits: int) -> list[bytes]:
    """LOGIN with user and password as synchronising literals of ``digits``-digit sizes."""
    user, password = a.name.encode(), a.password.encode()
    c.send(b"L LOGIN {%0*d}\r\n" % (digits, len(user)))
    assert c.until_continuation()[-1].startswith(b"+")
    c.send(user + b" {%0*d}\r\n" % (digits, len(password)))
    assert c.until_continuation()[-1].startswith(b"+")
    c.send(password + b"\r\n")
    return c.until_tagged(b"L")


async def test_dovecot_reads_20_digit_literal_sizes(dovecot: Dovecot) -> None:
    """The premise: Dovecot itself logs in with 20-digit (zero-padded) literal sizes."""
    a = new_account(dovecot)

    def run() -> None:
        with RawIMAP(dovecot.address) as c:
            assert _login_with_padded_literals(c, a, 20)[-1].startswith(b"L OK")

    await trio.to_thread.run_sync(run)


async def test_user_given_as_20_digit_literal_is_still_the_user(
    dovecot: Dovecot, proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(PER_USER_BLOCK)
    proxy = await proxy_factory(load_config(path))
    a = new_account(dovecot)

    def run() -> None:
        with RawIMAP(proxy.address) as c:
            assert _login_with_padded_literals(c, a, 20)[-1].startswith(b"L OK")
            assert c.command(b"c1", b"CREATE Keep")[-1].startswith(b"c1 OK")
            answer = c.command(b"d1", b"DELETE Keep")
            assert answer == [
                b"d1 NO [no-delete-for-e2e] Deleting folders is disabled by policy\r\n"
            ]
        with RawIMAP(dovecot.address) as c:
            c.command(b"L", b"LOGIN %s %s" % (a.name.encode(), a.password.encode()))
            assert any(b"Keep" in line for line in c.command(b"l", b'LIST "" Keep')[:-1])

    await trio.to_thread.run_sync(run)


@pytest.mark.parametrize("digits", [21, 24])
async def test_literal_size_with_more_digits_closes_the_session(
    dovecot: Dovecot, proxy_factory: ProxyFactory, digits: int
) -> None:
    """More digits than the grammar's 20: a server may read a literal there, so the proxy
    refuses the line (fatal) instead of forwarding it as a line without a literal."""
    proxy = await proxy_factory()
    a = new_account(dovecot)

    def run() -> None:
        with RawIMAP(proxy.address) as c:
            c.send(b"L LOGIN {%0*d}\r\n" % (digits, len(a.name)))
            answer = c.read_response()
            assert answer.startswith(b"* BYE"), answer
            with pytest.raises((EOFError, ConnectionError)):
                c.read_response()

    await trio.to_thread.run_sync(run)
