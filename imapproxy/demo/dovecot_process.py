"""Starting, waiting for and stopping one Dovecot master process.

Only the PID started here is ever signalled; the master takes its own children down with it.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator

from imapproxy.demo.dovecot_config import ListenPorts, Workdir

__all__ = [
    "DovecotError",
    "diagnostics",
    "dovecot_binary",
    "free_port",
    "read_log",
    "spawn",
    "terminate_process",
    "wait_ready",
]

_LOG_TAIL_LINES = 40
_FD_LIMIT = 65536


class DovecotError(RuntimeError):
    """Dovecot failed to start, or was used in a state that does not allow the call."""


def dovecot_binary() -> str | None:
    """Path of the dovecot master binary, or None when it is not installed."""
    return shutil.which("dovecot") or next(
        (p for p in ("/usr/sbin/dovecot", "/usr/local/sbin/dovecot") if os.access(p, os.X_OK)),
        None,
    )


def free_port(host: str) -> int:
    """A port free on ``host`` now. Racy by nature (the port is released before Dovecot binds
    it): the caller retries on "Address already in use"."""
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


def spawn(binary: str, workdir: Workdir) -> subprocess.Popen[bytes]:
    """Start the master in the foreground on ``workdir``'s config, output to its stderr
    file, in its own session (a Ctrl-C in the terminal is ours to handle)."""
    with open(workdir.stderr_path, "wb") as err, _raised_fd_limit():
        return subprocess.Popen(
            [binary, "-F", "-c", str(workdir.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
            cwd=workdir.root,
            start_new_session=True,
        )


def terminate_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the master, SIGKILL after 10 s; nothing if it already exited."""
    if proc.poll() is not None:
        return
    # Only the master we started; it takes its own children down with it.
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10.0)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10.0)


def wait_ready(
    proc: subprocess.Popen[bytes],
    workdir: Workdir,
    ports: ListenPorts,
    deadline: float,
    log_offset: int,
) -> None:
    """Return once every listener accepts (the IMAP one with a ``* OK`` greeting); raise
    DovecotError (with diagnostics) if the master exits, logs a fatal error (it would retry
    for ever) or ``deadline`` (monotonic) passes."""
    listening = [ports.imap] + [p for p in (ports.tls, ports.haproxy) if p is not None]
    for port in listening:
        last_error = "no attempt made"
        while True:
            if proc.poll() is not None:
                raise DovecotError(
                    f"dovecot exited with status {proc.returncode} during start\n"
                    + diagnostics(workdir)
                )
            if " Fatal: " in _log_since(workdir, log_offset):
                # e.g. a service that cannot start; the master would retry for ever.
                raise DovecotError("dovecot logged a fatal error\n" + diagnostics(workdir))
            if time.monotonic() > deadline:
                raise DovecotError(
                    f"dovecot did not answer on {ports.host}:{port} in time ({last_error})\n"
                    + diagnostics(workdir)
                )
            try:
                with socket.create_connection((ports.host, port), timeout=1.0) as s:
                    if port == ports.imap:
                        greeting = s.recv(512)
                        if not greeting.startswith(b"* OK"):
                            raise OSError(f"unexpected greeting {greeting[:80]!r}")
                break
            except OSError as e:
                last_error = str(e)
                time.sleep(0.05)


def read_log(workdir: Workdir) -> str:
    """The whole Dovecot log ("" before it exists)."""
    try:
        return workdir.log_path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _log_since(workdir: Workdir, offset: int) -> str:
    try:
        return workdir.log_path.read_bytes()[offset:].decode(errors="replace")
    except FileNotFoundError:
        return ""


def diagnostics(workdir: Workdir) -> str:
    """What to show when a start fails: config path, stderr and the log's tail."""
    tail = "\n".join(read_log(workdir).splitlines()[-_LOG_TAIL_LINES:])
    stderr = ""
    with contextlib.suppress(OSError):
        stderr = workdir.stderr_path.read_text(errors="replace").strip()
    return (
        f"config: {workdir.config_path}\n"
        f"--- stderr ---\n{stderr or '(empty)'}\n"
        f"--- log tail ({workdir.log_path}) ---\n{tail or '(empty)'}"
    )
