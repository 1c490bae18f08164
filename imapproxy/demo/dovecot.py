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
"""

from __future__ import annotations

import contextlib
import grp
import itertools
import os
import pwd
import re
import resource
import shutil
import signal
import socket
import subprocess
import time
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from imapproxy.wire.grammar import encode_mutf7

__all__ = ["Dovecot", "DovecotError", "TLSFiles", "dovecot_binary"]

_USERNAME_RE = re.compile(r"^[A-Za-z0-9_@-][A-Za-z0-9._@-]*$")
_MAILDIR_FLAGS = frozenset("DFPRST")
_LOG_TAIL_LINES = 40
_PORT_ATTEMPTS = 5
_FD_LIMIT = 65536
_SEQ = itertools.count()  # unique Maildir file names within this process
_CHROOTED_SERVICES = ("anvil", "imap-login", "imap-urlauth-login")


class DovecotError(RuntimeError):
    """Dovecot failed to start, or was used in a state that does not allow the call."""


@dataclass(frozen=True)
class TLSFiles:
    cert: Path  # PEM chain
    key: Path


def dovecot_binary() -> str | None:
    """Path of the dovecot master binary, or None when it is not installed."""
    return shutil.which("dovecot") or next(
        (p for p in ("/usr/sbin/dovecot", "/usr/local/sbin/dovecot") if os.access(p, os.X_OK)),
        None,
    )


def _free_port(host: str) -> int:
    # Racy by nature (the port is released before Dovecot binds it); start() retries.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _raised_fd_limit() -> Iterator[None]:
    """Let the child inherit a soft RLIMIT_NOFILE raised towards the hard limit.

    With 1,000+ sessions Dovecot's log process alone holds a pipe per imap process, so
    the common soft limit of 1024 is not enough. Our own limit is restored afterwards.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = _FD_LIMIT if hard == resource.RLIM_INFINITY else min(hard, _FD_LIMIT)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        try:
            yield
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    else:
        yield


def _terminate_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    # Only the master we started; it takes its own children down with it.
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10.0)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10.0)


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

        if os.geteuid() == 0:
            # Dovecot refuses uid 0 for mail access: mail belongs to nobody.
            nobody = pwd.getpwnam("nobody")
            self._mail_uid, self._mail_gid = nobody.pw_uid, nobody.pw_gid
            self._internal_user, self._internal_group = "dovecot", "dovecot"
            self._login_user = "dovenull"
        else:
            # Unprivileged (demo mode): every Dovecot process runs as the current user.
            self._mail_uid, self._mail_gid = os.getuid(), os.getgid()
            self._internal_user = self._login_user = pwd.getpwuid(self._mail_uid).pw_name
            self._internal_group = grp.getgrgid(self._mail_gid).gr_name

    # -- paths ------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.workdir / "dovecot.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "dovecot.log"

    @property
    def _users_dir(self) -> Path:
        return self.workdir / "users"

    @property
    def _home_root(self) -> Path:
        return self.workdir / "home"

    @property
    def _stderr_path(self) -> Path:
        return self.workdir / "dovecot.stderr"

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
        self._prepare_dirs()
        for name, password in self._initial_users.items():
            self.add_user(name, password)

        deadline = time.monotonic() + timeout
        for attempt in range(_PORT_ATTEMPTS):
            self.port = _free_port(self.host)
            self.tls_port = _free_port(self.host) if self.tls is not None else None
            self.haproxy_port = _free_port(self.host) if self.haproxy else None
            self.config_path.write_text(self._render_config())
            log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            with open(self._stderr_path, "wb") as err, _raised_fd_limit():
                self._proc = subprocess.Popen(
                    [binary, "-F", "-c", str(self.config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=err,
                    stderr=err,
                    cwd=self.workdir,
                    start_new_session=True,  # a Ctrl-C in the terminal is ours to handle
                )
            # Safety net for a forgotten stop(): terminate at garbage collection or exit.
            self._finalizer = weakref.finalize(self, _terminate_process, self._proc)
            try:
                self._wait_ready(deadline, log_offset)
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

    def _wait_ready(self, deadline: float, log_offset: int) -> None:
        assert self._proc is not None
        ports = [self.port] + [p for p in (self.tls_port, self.haproxy_port) if p is not None]
        for port in ports:
            last_error = "no attempt made"
            while True:
                if self._proc.poll() is not None:
                    raise DovecotError(
                        f"dovecot exited with status {self._proc.returncode} during start\n"
                        + self._diagnostics()
                    )
                if " Fatal: " in self._log_since(log_offset):
                    # e.g. a service that cannot start; the master would retry for ever.
                    raise DovecotError("dovecot logged a fatal error\n" + self._diagnostics())
                if time.monotonic() > deadline:
                    raise DovecotError(
                        f"dovecot did not answer on {self.host}:{port} in time ({last_error})\n"
                        + self._diagnostics()
                    )
                try:
                    with socket.create_connection((self.host, port), timeout=1.0) as s:
                        if port == self.port:
                            greeting = s.recv(512)
                            if not greeting.startswith(b"* OK"):
                                raise OSError(f"unexpected greeting {greeting[:80]!r}")
                    break
                except OSError as e:
                    last_error = str(e)
                    time.sleep(0.05)

    def stop(self) -> None:
        """Stop the master this object started (SIGTERM, then SIGKILL); idempotent."""
        proc, self._proc = self._proc, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if proc is not None:
            _terminate_process(proc)

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

    # -- users and mail ---------------------------------------------------------------
    def add_user(self, name: str, password: str) -> None:
        """Create (or replace) a user; usable for LOGIN immediately, also while running.

        Each user has its own passwd file (passdb path ``users/%u``): Dovecot re-reads a
        passwd file at most once per second, so appending to a shared file could be missed
        by a login in the same second, while a new file is always read fresh.
        """
        key = self._user_key(name)
        if any(c in password for c in ":\r\n\0"):
            raise ValueError("password must not contain ':', CR, LF or NUL")
        self._prepare_dirs()
        maildir = self.maildir(key)
        for sub in ("cur", "new", "tmp"):
            self._mkdir(maildir / sub)
        # Home "<root>/./<name>" makes Dovecot chroot into <root> before dropping to the
        # mail uid, so the mail processes need no access to workdir's ancestors (pytest's
        # tmp dirs are 0700 root).
        home = f"{self._home_root}/./{key}" if self._chroot else str(self._home_root / key)
        line = f"{key}:{{PLAIN}}{password}:{self._mail_uid}:{self._mail_gid}::{home}::\n"
        tmp = self._users_dir / f".{key}.tmp"
        tmp.write_text(line)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self._users_dir / key)

    def maildir(self, user: str) -> Path:
        return self._home_root / self._user_key(user) / "Maildir"

    def deliver(
        self,
        user: str,
        message: bytes,
        folder: str = "INBOX",
        flags: str = "",
        *,
        internaldate: float | None = None,
    ) -> Path:
        """Write ``message`` as-is into the user's Maildir; return the file's path.

        ``folder`` uses "/" as hierarchy separator (as the IMAP namespace does) and is
        created and subscribed if needed; ``flags`` are Maildir info letters (D draft,
        F flagged, R answered, S seen, T deleted, e.g. "FS"): empty means an unseen message
        in new/, anything else a message in cur/ with those flags. ``internaldate`` (Unix
        time) pins IMAP INTERNALDATE, which Dovecot takes from the file's mtime.
        """
        bad = set(flags) - _MAILDIR_FLAGS
        if bad:
            raise ValueError(f"unknown Maildir flags {''.join(sorted(bad))!r}; use D F P R S T")
        root = self.maildir(user)
        if not root.is_dir():
            raise ValueError(f"unknown user {user!r}; call add_user() first")
        box = root if folder.upper() == "INBOX" else self._ensure_folder(root, folder)
        now_us = time.time_ns() // 1000
        base = f"{now_us // 10**6}.M{now_us % 10**6}P{os.getpid()}Q{next(_SEQ)}.imapproxy"
        tmp = box / "tmp" / base
        with open(tmp, "xb") as f:
            f.write(message)
        self._chown(tmp)
        if internaldate is not None:
            os.utime(tmp, (internaldate, internaldate))
        if flags:
            dest = box / "cur" / f"{base}:2,{''.join(sorted(set(flags)))}"
        else:
            dest = box / "new" / base
        os.rename(tmp, dest)
        return dest

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- internals --------------------------------------------------------------------
    @property
    def _chroot(self) -> bool:
        return os.geteuid() == 0

    def _user_key(self, name: str) -> str:
        # Dovecot lowercases user names (auth_username_format = %Lu) before lookups.
        if not _USERNAME_RE.match(name) or ".." in name:
            raise ValueError(f"invalid user name {name!r} (letters, digits, . _ @ - only)")
        return name.lower()

    def _ensure_folder(self, root: Path, folder: str) -> Path:
        parts = folder.split("/")
        if any(not p or "." in p or p.startswith("~") for p in parts):
            raise ValueError(f"unsupported folder name {folder!r} (no '.', empty parts or '~')")
        # modified UTF-7: the on-disk and on-wire form of non-ASCII mailbox names
        encoded = [encode_mutf7(p).decode("ascii") for p in parts]
        box = root / ("." + ".".join(encoded))
        if not box.is_dir():
            for sub in ("cur", "new", "tmp"):
                self._mkdir(box / sub)
            marker = box / "maildirfolder"
            marker.touch()
            self._chown(marker)
        self._subscribe(root, encoded)
        return box

    def _subscribe(self, root: Path, parts: list[str]) -> None:
        # Dovecot 2.3 "V 2" subscriptions format: hierarchy levels separated by TAB.
        subs = root / "subscriptions"
        entry = "\t".join(parts)
        lines = subs.read_text().splitlines() if subs.exists() else []
        names = lines[2:] if lines[:1] == ["V\t2"] else lines
        if entry in names:
            return
        tmp = root / "tmp" / f"subscriptions.{os.getpid()}.{next(_SEQ)}"
        tmp.write_text("V\t2\n\n" + "".join(n + "\n" for n in [*names, entry]))
        self._chown(tmp)
        os.replace(tmp, subs)

    def _prepare_dirs(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # base_dir must be world-readable (Dovecot "fixes" it otherwise, with a warning).
        (self.workdir / "run").mkdir(mode=0o755, exist_ok=True)
        (self.workdir / "state").mkdir(mode=0o700, exist_ok=True)
        self._users_dir.mkdir(mode=0o700, exist_ok=True)
        self._home_root.mkdir(mode=0o755, exist_ok=True)

    def _mkdir(self, path: Path) -> None:
        missing: list[Path] = []
        p = path
        while not p.exists():
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            d.mkdir(mode=0o700)
            self._chown(d)

    def _chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            os.chown(path, self._mail_uid, self._mail_gid)

    def _render_config(self) -> str:
        w = self.workdir
        lines = [
            "# Generated by imapproxy.dovecot; throwaway instance, do not edit.",
            f"base_dir = {w}/run",
            f"state_dir = {w}/state",
            f"log_path = {self.log_path}",
            "instance_name = imapproxy-dovecot",
            "protocols = imap",
            f"listen = {self.host}",
            "shutdown_clients = yes",
            f"default_internal_user = {self._internal_user}",
            f"default_internal_group = {self._internal_group}",
            f"default_login_user = {self._login_user}",
            f"first_valid_uid = {self._mail_uid}",
            f"last_valid_uid = {self._mail_uid}",
            f"first_valid_gid = {min(self._mail_gid, 1)}",
            "",
            # XOAUTH2/OAUTHBEARER verify the bearer token like a password against the
            # passdb, so with this setup the token is simply the user's password.
            "auth_mechanisms = plain login xoauth2 oauthbearer",
            "auth_verbose = yes",
            # Failed logins answer within ~0.5 s (Dovecot batches failures) instead of 2 s.
            "auth_failure_delay = 0",
            f"disable_plaintext_auth = {'yes' if self.require_tls else 'no'}",
            # Lets the proxy pass ID ("x-originating-ip" ...); with require_tls trusting
            # loopback would also mark every connection as secured.
            f"login_trusted_networks = {self._login_trusted()}",
            "mail_max_userip_connections = 10000",
            "",
            "mail_location = maildir:~/Maildir",
            "mail_fsync = never",
        ]
        if self.haproxy:
            lines.append("haproxy_trusted_networks = 127.0.0.0/8")
        if self._chroot:
            lines.append(f"valid_chroot_dirs = {self._home_root}")
        lines += [
            "namespace inbox {",
            "  inbox = yes",
            "  separator = /",
            "  mailbox Drafts {\n    special_use = \\Drafts\n  }",
            "  mailbox Sent {\n    special_use = \\Sent\n  }",
            "  mailbox Trash {\n    special_use = \\Trash\n  }",
            "  mailbox Archive {\n    special_use = \\Archive\n  }",
            "  mailbox Junk {\n    special_use = \\Junk\n  }",
            "}",
            "",
            "passdb {",
            "  driver = passwd-file",
            f"  args = scheme=PLAIN {self._users_dir}/%u",
            "}",
            "userdb {",
            "  driver = passwd-file",
            f"  args = {self._users_dir}/%u",
            "}",
            "",
        ]
        if self.tls is None:
            lines.append("ssl = no")
        else:
            lines += [
                f"ssl = {'required' if self.require_tls else 'yes'}",
                f"ssl_cert = <{self.tls.cert.absolute()}",
                f"ssl_key = <{self.tls.key.absolute()}",
            ]
        lines += [
            "",
            # Room for a benchmark holding 1,000+ logged-in sessions: one imap process
            # per session, all logins served by a few long-lived imap-login processes.
            "default_process_limit = 2500",
            "default_client_limit = 10000",
            "service imap-login {",
            "  inet_listener imap {",
            f"    address = {self.host}",
            f"    port = {self.port}",
            "  }",
            "  inet_listener imaps {",
            f"    address = {self.host}",
            f"    port = {self.tls_port or 0}",
            "    ssl = yes",
            "  }",
            *(
                [
                    "  inet_listener imap_haproxy {",
                    f"    address = {self.host}",
                    f"    port = {self.haproxy_port}",
                    "    haproxy = yes",
                    "  }",
                ]
                if self.haproxy_port is not None
                else []
            ),
            "  service_count = 0",
            "  process_min_avail = 2",
            "  client_limit = 2000",
            "}",
            "service imap {",
            "  process_limit = 2000",
            "}",
            # Every client here comes from 127.0.0.1; Dovecot's per-IP auth penalty would
            # delay *all* logins by up to 15 s for 29 s after any failed one. mode = 0
            # removes the penalty socket, which disables the penalty.
            "service anvil {",
            "  unix_listener anvil-auth-penalty {",
            "    mode = 0",
            "  }",
            "}",
        ]
        if self._chroot:
            # Auth reads the passwd files, which sit below workdir's (possibly 0700) parents.
            lines += ["service auth {", "  user = root", "}"]
        else:
            # chroot() needs root; these services chroot by default.
            lines += [f"service {svc} {{\n  chroot =\n}}" for svc in _CHROOTED_SERVICES]
        if self.extra_config:
            lines += ["", "# extra_config", self.extra_config]
        return "\n".join(lines) + "\n"

    def _login_trusted(self) -> str:
        if self.login_trusted_networks is not None:
            return self.login_trusted_networks
        return "" if self.require_tls else "127.0.0.0/8"

    def _log_since(self, offset: int) -> str:
        try:
            return self.log_path.read_bytes()[offset:].decode(errors="replace")
        except FileNotFoundError:
            return ""

    def _diagnostics(self) -> str:
        tail = "\n".join(self.log_text().splitlines()[-_LOG_TAIL_LINES:])
        stderr = ""
        with contextlib.suppress(OSError):
            stderr = self._stderr_path.read_text(errors="replace").strip()
        return (
            f"config: {self.config_path}\n"
            f"--- stderr ---\n{stderr or '(empty)'}\n"
            f"--- log tail ({self.log_path}) ---\n{tail or '(empty)'}"
        )
