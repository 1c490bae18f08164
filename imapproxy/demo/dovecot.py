"""A throwaway local Dovecot 2.3 for demo mode, tests and benchmarks.

Everything (config, sockets, state, log, passwd files, mail) lives inside ``workdir``;
the server listens on loopback only and is stopped by the PID this object started.

Behaviour worth knowing when testing against it:

- Hierarchy separator is "/" (Maildir++ on disk); Drafts/Sent/Trash/Archive/Junk carry
  SPECIAL-USE attributes when they exist (none is auto-created).
- AUTH=PLAIN, LOGIN, XOAUTH2 and OAUTHBEARER; for the OAuth mechanisms the bearer token
  is the user's password. User names are case-insensitive (Dovecot lowercases them).
- Loopback is a trusted network: ID ("x-originating-ip" ...) is honoured and the login
  log line says "secured" for plaintext, "TLS" for TLS connections.
- ``require_tls=True`` listens on 127.0.0.2 and trusts no network, because Dovecot never
  enforces TLS for a client whose IP equals the server's or is trusted.
- ``haproxy=True`` adds a listener (``haproxy_address``) that requires a PROXY v1/v2 header
  from loopback (``haproxy_trusted_networks``) on every connection; the login line's
  ``rip=`` is then the address the header carried. ``login_trusted_networks`` replaces the
  default (loopback, or nothing with ``require_tls``).
- Failed logins answer after ~0.5 s and, unlike stock Dovecot, do not slow down later
  logins from the same IP. stop() takes ~1 s (Dovecot's master waits for its logger).

``Dovecot`` is the facade tests, bench and ``imapproxy demo`` use; the work is in
``dovecot_config`` (files, accounts, dovecot.conf), ``maildir`` (users and mail on disk) and
``dovecot_process`` (start, readiness, stop). Their public names stay importable from here.
"""

from __future__ import annotations

import subprocess
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from imapproxy.demo.dovecot_config import ListenPorts, RunAs, TLSFiles, Workdir, render_config
from imapproxy.demo.dovecot_process import (
    DovecotError,
    dovecot_binary,
    free_port,
    read_log,
    spawn,
    terminate_process,
    wait_ready,
)
from imapproxy.demo.maildir import MailStore

__all__ = ["Dovecot", "DovecotError", "TLSFiles", "dovecot_binary"]

_PORT_ATTEMPTS = 5


class Dovecot:
    """One private Dovecot instance. Not thread-safe; meant for one test session or demo."""

    def __init__(
        self,
        workdir: Path,
        users: Mapping[str, str] = {},  # read-only; copied below
        *,
        tls: TLSFiles | None = None,
        require_tls: bool = False,
        extra_config: str = "",
        haproxy: bool = False,
        login_trusted_networks: str | None = None,
    ) -> None:
        if require_tls and tls is None:
            raise ValueError("require_tls=True needs tls=TLSFiles(...)")
        self.workdir = Path(workdir).absolute()
        self.tls = tls
        self.require_tls = require_tls
        self.extra_config = extra_config
        self.haproxy = haproxy
        self.login_trusted_networks = login_trusted_networks
        self.haproxy_port: int | None = None
        # Dovecot treats a connection whose remote IP equals its local IP, or comes from
        # login_trusted_networks, as secured and then never enforces TLS. To make
        # require_tls bite, listen on 127.0.0.2 (clients connect from 127.0.0.1) and
        # trust nothing.
        self.host = "127.0.0.2" if require_tls else "127.0.0.1"
        self.port = 0
        self.tls_port: int | None = None
        self._initial_users = dict(users)
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[[subprocess.Popen[bytes]], Dovecot] | None = None
        self._files = Workdir(self.workdir)
        self._run_as = RunAs.current()
        self._mail = MailStore(self._files, self._run_as)

    # -- paths ------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self._files.config_path

    @property
    def log_path(self) -> Path:
        return self._files.log_path

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def tls_address(self) -> tuple[str, int] | None:
        return None if self.tls_port is None else (self.host, self.tls_port)

    @property
    def haproxy_address(self) -> tuple[str, int] | None:
        """The listener that requires a PROXY header (``haproxy=True``)."""
        return None if self.haproxy_port is None else (self.host, self.haproxy_port)

    @property
    def pid(self) -> int | None:
        """PID of the master process this object started, while it runs."""
        return self._proc.pid if self._proc is not None else None

    # -- lifecycle --------------------------------------------------------------------
    def start(self, timeout: float = 15.0) -> None:
        if self._proc is not None:
            raise DovecotError("Dovecot already started")
        binary = dovecot_binary()
        if binary is None:
            raise DovecotError("dovecot binary not found (apt-get install dovecot-imapd)")
        self._files.prepare()
        for name, password in self._initial_users.items():
            self.add_user(name, password)

        deadline = time.monotonic() + timeout
        for attempt in range(_PORT_ATTEMPTS):
            self.port = free_port(self.host)
            self.tls_port = free_port(self.host) if self.tls is not None else None
            self.haproxy_port = free_port(self.host) if self.haproxy else None
            ports = ListenPorts(self.host, self.port, self.tls_port, self.haproxy_port)
            self.config_path.write_text(self._render_config(ports))
            log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            self._proc = spawn(binary, self._files)
            # Safety net for a forgotten stop(): terminate at garbage collection or exit.
            self._finalizer = weakref.finalize(self, terminate_process, self._proc)
            try:
                wait_ready(self._proc, self._files, ports, deadline, log_offset)
                return
            except DovecotError as e:
                self.stop()
                if "Address already in use" in str(e) and attempt + 1 < _PORT_ATTEMPTS:
                    continue  # lost the race for the free port; pick new ones
                raise
            except BaseException:  # e.g. Ctrl-C while waiting: leave nothing running
                self.stop()
                raise
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Stop the master this object started (SIGTERM, then SIGKILL); idempotent."""
        proc, self._proc = self._proc, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if proc is not None:
            terminate_process(proc)

    def __enter__(self) -> Dovecot:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- users and mail (maildir.MailStore) -------------------------------------------
    def add_user(self, name: str, password: str) -> None:
        """Create (or replace) a user; usable for LOGIN immediately, also while running
        (one passwd file per user, see ``MailStore.add_user``)."""
        self._mail.add_user(name, password)

    def maildir(self, user: str) -> Path:
        return self._mail.maildir(user)

    def deliver(
        self,
        user: str,
        message: bytes,
        folder: str = "INBOX",
        flags: str = "",
        *,
        internaldate: float | None = None,
    ) -> Path:
        """Write ``message`` as-is into the user's Maildir; return the file's path. ``flags``
        are Maildir info letters ("" = unseen, in new/); ``folder`` ("/"-separated) is created
        and subscribed if needed; ``internaldate`` pins INTERNALDATE (see
        ``MailStore.deliver``)."""
        return self._mail.deliver(user, message, folder, flags, internaldate=internaldate)

    def log_text(self) -> str:
        return read_log(self._files)

    # -- internals --------------------------------------------------------------------
    def _render_config(self, ports: ListenPorts) -> str:
        return render_config(
            self._files,
            self._run_as,
            ports,
            tls=self.tls,
            require_tls=self.require_tls,
            haproxy=self.haproxy,
            login_trusted_networks=self.login_trusted_networks,
            extra_config=self.extra_config,
        )
