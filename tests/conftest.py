"""Session-wide fixtures: one throwaway Dovecot for the whole run, fresh users per test."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from imapproxy import compiled
from imapproxy.demo.dovecot import Dovecot, dovecot_binary
from tests.support.accounts import Account, new_account
from tests.support.messages import make_message

SeedMessage = Callable[..., bytes]


def _under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def pytest_configure(config: pytest.Config) -> None:
    # tests/test_compiled.py runs tests against a compiled copy of the tree and says so: a
    # copy whose core silently ran from source must not pass for the compiled one.
    expected = os.environ.get("IMAPPROXY_EXPECT_CORE")
    if expected and compiled.running() != expected:
        raise pytest.UsageError(f"the core runs {compiled.running()}, expected {expected}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Anything that (transitively) needs the dovecot fixture gets the `dovecot` marker,
    # so `pytest -m "not dovecot"` runs the pure unit tests only.
    for item in items:
        if "dovecot" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.dovecot)


@pytest.fixture(scope="session")
def dovecot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dovecot]:
    """One running Dovecot for the session (plaintext IMAP on 127.0.0.1, no TLS)."""
    if dovecot_binary() is None:
        reason = "dovecot binary not found (apt-get install dovecot-imapd)"
        if _under_ci():
            pytest.fail(f"{reason}; CI is set, so this is an error, not a skip")
        pytest.skip(reason)
    server = Dovecot(tmp_path_factory.mktemp("dovecot"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def imap_user(dovecot: Dovecot) -> Account:
    """A brand-new user with an empty mailbox, valid for LOGIN right away."""
    return new_account(dovecot)


@pytest.fixture
def seed_message(dovecot: Dovecot) -> SeedMessage:
    """``seed_message(account, message=None, *, folder="INBOX", flags="", size=1000,
    subject="Test message", eight_bit=False, attachment=None, internaldate=None) -> bytes``

    Writes a message straight into the account's Maildir (no IMAP round trip) and
    returns the exact bytes stored, for byte-for-byte comparison with FETCH results.
    Without ``message``, one is built with ``make_message`` from the other arguments.
    """

    def seed(
        account: Account,
        message: bytes | None = None,
        *,
        folder: str = "INBOX",
        flags: str = "",
        size: int = 1000,
        subject: str = "Test message",
        eight_bit: bool = False,
        attachment: bytes | None = None,
        internaldate: float | None = None,
    ) -> bytes:
        if message is None:
            message = make_message(
                size, subject=subject, eight_bit=eight_bit, attachment=attachment
            )
        dovecot.deliver(
            account.name, message, folder=folder, flags=flags, internaldate=internaldate
        )
        return message

    return seed


@pytest.fixture
def dovecot_log(dovecot: Dovecot) -> Callable[[], str]:
    """Returns a callable giving the Dovecot log lines written since the test started."""
    start = len(dovecot.log_path.read_bytes()) if dovecot.log_path.exists() else 0

    def since_start() -> str:
        return dovecot.log_path.read_bytes()[start:].decode(errors="replace")

    return since_start
