"""TLS fixtures for the e2e tests: a trustme PKI, a log-event collector, a second
session-wide Dovecot that insists on TLS (``ssl = required``, ``disable_plaintext_auth =
yes``) with a STARTTLS listener and an implicit-TLS listener, and a third for the client-IP
tests (``edge_dovecot``).

Import the ``*_fixture`` functions into a test module; tests ask for them by their
fixture names (``pki``, ``tls_dovecot``, ``events``).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme

from imapproxy.demo.dovecot import Dovecot, TLSFiles

# Names on the test certificate: Dovecot's require_tls instance listens on 127.0.0.2.
CERT_NAMES = ("localhost", "imap.test", "127.0.0.1", "127.0.0.2")


@dataclass(frozen=True)
class PKI:
    ca: trustme.CA
    ca_file: Path  # trusts ``cert``
    cert: Path  # chain PEM for CERT_NAMES
    key: Path
    other_ca_file: Path  # a CA that signed nothing here: verification must fail with it

    def client_context(self) -> ssl.SSLContext:
        """A verifying client context that trusts the test CA (no system store: fast)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.ca.configure_trust(ctx)
        return ctx

    def issue(self, directory: Path, *names: str) -> tuple[Path, Path]:
        """A fresh leaf from the same CA, written to ``directory``/{cert,key}.pem."""
        directory.mkdir(parents=True, exist_ok=True)
        # mbsync insists on a common name.
        leaf = self.ca.issue_cert(*(names or CERT_NAMES), common_name=(names or CERT_NAMES)[0])
        cert, key = directory / "cert.pem", directory / "key.pem"
        cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(key))
        return cert, key


@pytest.fixture(scope="session", name="pki")
def pki_fixture(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    base = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    ca_file = base / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    other_ca_file = base / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca_file))
    pki = PKI(ca, ca_file, base / "cert.pem", base / "key.pem", other_ca_file)
    pki.issue(base)
    return pki


@pytest.fixture(scope="session", name="tls_dovecot")
def tls_dovecot_fixture(
    dovecot: Dovecot, pki: PKI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Dovecot]:
    """Dovecot on 127.0.0.2 that refuses plaintext LOGIN: ``address`` is its STARTTLS
    listener, ``tls_address`` its implicit-TLS one. (``dovecot``: its skip-or-fail policy
    when the binary is missing, and the proxy fixtures need it anyway.)"""
    server = Dovecot(
        tmp_path_factory.mktemp("dovecot-tls"), tls=TLSFiles(pki.cert, pki.key), require_tls=True
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session", name="edge_dovecot")
def edge_dovecot_fixture(
    dovecot: Dovecot, pki: PKI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Dovecot]:
    """Dovecot for the client-IP tests: TLS (STARTTLS on ``address``, implicit on
    ``tls_address``), a listener requiring a PROXY header (``haproxy_address``), and only
    the proxy's 127.0.0.1 trusted to send ID x-originating-ip, so a client address
    reaches ``rip=`` only through the proxy."""
    server = Dovecot(
        tmp_path_factory.mktemp("dovecot-edge"),
        tls=TLSFiles(pki.cert, pki.key),
        haproxy=True,
        login_trusted_networks="127.0.0.1/32",
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Events:
    """Structured log events of the ``imapproxy`` loggers, as (event, level, fields)."""

    records: list[logging.LogRecord] = field(default_factory=list)

    def named(self, event: str) -> list[dict[str, Any]]:
        return [
            {"level": r.levelname, **getattr(r, "imapproxy_fields", {})}
            for r in self.records
            if r.getMessage() == event
        ]

    async def wait_for(self, event: str, timeout: float = 5.0) -> list[dict[str, Any]]:
        """For events the proxy's tasks log after the client saw the effect."""
        with trio.move_on_after(timeout):
            while not self.named(event):
                await trio.sleep(0.01)
        return self.named(event)


class _Collect(logging.Handler):
    def __init__(self, events: Events) -> None:
        super().__init__(logging.DEBUG)
        self.events = events

    def emit(self, record: logging.LogRecord) -> None:
        self.events.records.append(record)


@pytest.fixture(name="events")
def events_fixture() -> Iterator[Events]:
    root = logging.getLogger("imapproxy")
    found = Events()
    handler = _Collect(found)
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield found
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def log_since(server: Dovecot) -> Callable[[], str]:
    """The server's log lines written from now on."""
    start = server.log_path.stat().st_size if server.log_path.exists() else 0
    return lambda: server.log_path.read_bytes()[start:].decode(errors="replace")
