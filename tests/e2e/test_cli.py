"""The installed entry point as a user runs it: a real process, real signals."""

from __future__ import annotations

import imaplib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from imapproxy.demo.dovecot import Dovecot
from tests.support.accounts import new_account
from tests.support.rawimap import RawIMAP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60  # a loaded 2-core CI machine starts Python slowly
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("proxy did not start listening")


@pytest.fixture
def started(dovecot: Dovecot, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = _free_port()
    config = tmp_path / "imapproxy.yaml"
    config.write_text("limits:\n  grace_period: 1.5\nlog:\n  format: json\n")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "imapproxy",
            "--config",
            str(config),
            "--upstream",
            "{}:{}".format(*dovecot.address),
            "--listen",
            f"127.0.0.1:{port}",
            "--metrics",
            "off",
        ],
        stderr=subprocess.PIPE,
    )
    try:
        _wait_listening(port, proc)
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def test_sigterm_stops_accepting_lets_sessions_finish_then_says_bye(
    dovecot: Dovecot, started: tuple[subprocess.Popen[bytes], int]
) -> None:
    proc, port = started
    account = new_account(dovecot)
    with RawIMAP(("127.0.0.1", port)) as c:
        assert c.command(
            b"a1", b"LOGIN %s %s" % (account.name.encode(), account.password.encode())
        )[-1].startswith(b"a1 OK")
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # the listener closes promptly
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                time.sleep(0.05)
            except OSError:
                break
        else:
            raise AssertionError("still accepting after SIGTERM")
        assert c.command(b"a2", b"NOOP")[-1].startswith(b"a2 OK")  # in-flight session goes on
        assert c.read_response() == b"* BYE [UNAVAILABLE] Proxy shutting down\r\n"
    assert proc.wait(10) == 0
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    assert '"event": "stopping"' in stderr and '"reason": "proxy shutting down"' in stderr


def test_sigterm_without_sessions_exits_promptly(
    started: tuple[subprocess.Popen[bytes], int],
) -> None:
    proc, _ = started
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert time.monotonic() - t0 < 1.5  # no sessions: no need to wait out the grace period


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


@pytest.mark.parametrize("second_after", [0.0, 0.05, 0.15, 0.3])
def test_a_second_interrupt_while_stopping_exits_without_a_traceback(second_after: float) -> None:
    """Ctrl-C twice, or ``timeout``/a supervisor forwarding the signal it got as well: the
    demo proxy stops, quietly, whichever moment of its shutdown the second one hits (at once;
    or later, when trio has returned and the demo stops its Dovecot)."""
    port = _free_port()
    proc = subprocess.Popen(
        # Under timeout(1), which forwards a SIGINT it gets to the proxy: signalling both, as
        # `pkill -INT -f` does, delivers the second one a moment into the shutdown.
        [
            "timeout",
            "120",
            sys.executable,
            "-m",
            "imapproxy",
            "demo",
            "--listen",
            f"127.0.0.1:{port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_listening(port, proc)
        imap = imaplib.IMAP4("127.0.0.1", port)
        imap.login("demo", "demo")
        imap.logout()
        [proxy_pid] = _children(proc.pid)
        os.kill(proxy_pid, signal.SIGINT)
        time.sleep(second_after)
        proc.send_signal(signal.SIGINT)  # timeout(1) passes it on
        code = proc.wait(20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out[-2000:]
    # timeout(1) exits with the proxy's status, or 128+n when a signal ended the proxy: 0 (both
    # handled), 130 (the second cut the stop short, or came after trio gave the default
    # handler back, which ends the process as a Ctrl-C does).
    assert code in (0, 130)


def test_check_command(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text('upstream:\n  address: "127.0.0.1:143"\n')
    bad = tmp_path / "bad.yaml"
    bad.write_text('upstream:\n  address: "127.0.0.1:143"\nlisten: "0.0.0.0:143"\nlisen: x\n')
    ok = subprocess.run(
        [sys.executable, "-m", "imapproxy", "check", "--config", str(good)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    fail = subprocess.run(
        [sys.executable, "-m", "imapproxy", "check", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert fail.returncode == 1
    assert fail.stderr.startswith(f"{bad}:4:1: unknown key 'lisen'")


def test_refuses_to_start_on_taken_port(dovecot: Dovecot) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "imapproxy",
                "--upstream",
                "{}:{}".format(*dovecot.address),
                "--listen",
                f"127.0.0.1:{port}",
                "--metrics",
                "off",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert result.returncode == 1
    assert "Address already in use" in result.stderr


def test_sighup_reloads_rules_for_open_session_and_keeps_them_on_a_bad_file(
    dovecot: Dovecot, started: tuple[subprocess.Popen[bytes], int], tmp_path: Path
) -> None:
    proc, port = started
    config = tmp_path / "imapproxy.yaml"  # the file the `started` process was given
    base = config.read_text()
    account = new_account(dovecot)

    def wait_for(event: str) -> None:
        assert proc.stderr is not None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            line = proc.stderr.readline().decode()
            if f'"event": "{event}"' in line:
                return
        raise AssertionError(f"no {event} line")

    with RawIMAP(("127.0.0.1", port)) as c:
        login = b"LOGIN %s %s" % (account.name.encode(), account.password.encode())
        assert c.command(b"a1", login)[-1].startswith(b"a1 OK")
        assert c.command(b"a2", b"CREATE Keep")[-1].startswith(b"a2 OK")
        rule = "rules:\n  - name: no-delete\n    action: block\n    when: {command: [DELETE]}\n"
        config.write_text(base + rule)
        proc.send_signal(signal.SIGHUP)
        wait_for("reloaded")
        assert c.command(b"a3", b"DELETE Keep")[-1].startswith(b"a3 NO [no-delete]")
        config.write_text(base + "rules:\n  - name: no-delete\n    action: blok\n")
        proc.send_signal(signal.SIGHUP)
        wait_for("reload_failed")
        assert c.command(b"a4", b"DELETE Keep")[-1].startswith(b"a4 NO [no-delete]")
    assert proc.poll() is None
