"""The traffic inspector against the real Dovecot: tail (JSON and terminal), filters,
redaction, slow readers, sessions, kick, the control socket's permissions, traces, show."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import errno
import json
import os
import pty
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from imapproxy.config.loader import Config, ControlConfig, load_config
from imapproxy.demo.dovecot import Dovecot
from imapproxy.telemetry.metrics import Metrics
from imapproxy.telemetry.recorder import Telemetry
from tests.support.accounts import Account, new_account
from tests.support.rawimap import RawIMAP

from .conftest import ProxyFactory, RunningProxy

SECRETS = ("pw-secret-123", "s3cr3t-quoted", "lit-secret-99", "ya29.TOKEN-xoauth2-SECRET")


def _cli(*args: str, **kw: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "imapproxy", *args],
        stdout=kw.pop("stdout", subprocess.PIPE),
        stderr=subprocess.PIPE,
        **kw,
    )


async def _run_cli(*args: str, **kw: Any) -> subprocess.CompletedProcess[bytes]:
    return await trio.to_thread.run_sync(
        lambda: subprocess.run(
            [sys.executable, "-m", "imapproxy", *args], capture_output=True, timeout=30, **kw
        )
    )


async def _start(
    proxy_factory: ProxyFactory, tmp_path: Path, config: Config | None = None, **kw: Any
) -> tuple[RunningProxy, Path]:
    sock = tmp_path / "control.sock"
    cfg = dataclasses.replace(config or Config(), control=ControlConfig(sock))
    return await proxy_factory(cfg, **kw), sock


async def _attached(running: RunningProxy, n: int = 1) -> None:
    with trio.fail_after(20):
        while len(running.proxy.inspector.hub.readers) < n:
            await trio.sleep(0.05)


def _login(c: RawIMAP, a: Account, tag: bytes = b"a1") -> None:
    assert c.command(tag, b"LOGIN " + a.name.encode() + b" " + a.password.encode())[-1].startswith(
        tag + b" OK"
    )


def _records(raw: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in raw.splitlines() if line.strip()]


async def _stop_tail(proc: subprocess.Popen[bytes]) -> bytes:
    await trio.sleep(0.3)  # let the last records reach the reader
    proc.terminate()
    out, _ = await trio.to_thread.run_sync(proc.communicate)
    return out


async def test_tail_json_shows_a_session_in_order_with_literal_sizes_and_durations(
    proxy_factory: ProxyFactory, dovecot: Dovecot, tmp_path: Path, seed_message: Any
) -> None:
    running, sock = await _start(proxy_factory, tmp_path)
    account = new_account(dovecot)
    message = seed_message(account, size=3000)
    tail = _cli("tail", "--control", str(sock), "--json")
    await _attached(running)

    def session() -> bytes:
        with RawIMAP(running.address) as c:
            _login(c, account)
            c.command(b"a2", b"SELECT INBOX")
            fetched = b"".join(c.command(b"a3", b"FETCH 1 BODY.PEEK[]"))
            c.command(b"a4", b"LOGOUT")
            return fetched

    fetched = await trio.to_thread.run_sync(session)
    assert b"{%d}\r\n" % len(message) + message + b")\r\n" in fetched  # relayed unchanged
    records = _records(await _stop_tail(tail))
    events = [(r["event"], r.get("command"), r.get("direction")) for r in records]
    assert events[0] == ("open", None, None)
    assert events[-1] == ("close", None, None)
    assert records[-1]["user"] == account.name
    assert all(r["session"] == records[0]["session"] for r in records)
    login = next(r for r in records if r.get("command") == "LOGIN" and r["event"] == "command")
    assert login["line"] == f"a1 LOGIN {account.name} ***"
    assert login["user"] == account.name
    order = [
        i
        for i, r in enumerate(records)
        if (r["event"], r.get("tag")) in {("command", "a2"), ("response", "a2"), ("command", "a3")}
    ]
    assert order == sorted(order) and len(order) == 3
    literal = next(r for r in records if r["event"] == "literal")
    assert literal["size"] == len(message) and literal["direction"] == "server"
    assert "payload" not in literal
    done = next(r for r in records if r["event"] == "response" and r.get("tag") == "a3")
    assert done["status"] == "OK" and done["command"] == "FETCH"
    assert 0 <= done["duration"] < 5
    for key in ("time", "session", "event"):
        assert all(key in r for r in records)
    assert all(r["direction"] in ("client", "server") for r in records if "line" in r)


async def test_tail_filters_narrow_by_user_command_session_and_client(
    proxy_factory: ProxyFactory, dovecot: Dovecot, tmp_path: Path
) -> None:
    running, sock = await _start(proxy_factory, tmp_path)
    alice, bob = new_account(dovecot), new_account(dovecot)
    tails = {
        "user": _cli("tail", "--control", str(sock), "--json", "--user", alice.name),
        "command": _cli("tail", "--control", str(sock), "--json", "--command", "select"),
        "client": _cli("tail", "--control", str(sock), "--json", "--client", "127.0.0.6/32"),
        "all": _cli("tail", "--control", str(sock), "--json"),
    }
    await _attached(running, len(tails))

    def sessions() -> None:
        for account, source in ((alice, "127.0.0.5"), (bob, "127.0.0.6")):
            c = RawIMAP.__new__(RawIMAP)
            c.sock = socket.create_connection(
                running.address, timeout=10, source_address=(source, 0)
            )
            c._buf = bytearray()
            c.greeting = c.read_response()
            with c:
                _login(c, account)
                c.command(b"a2", b"SELECT INBOX")
                c.command(b"a3", b"NOOP")
                c.command(b"a4", b"LOGOUT")

    await trio.to_thread.run_sync(sessions)
    out = {name: _records(await _stop_tail(proc)) for name, proc in tails.items()}
    everything = out["all"]
    sessions_seen = {r["session"] for r in everything}
    assert len(sessions_seen) == 2
    alice_session = next(r["session"] for r in everything if r.get("user") == alice.name)
    assert out["user"] and {r.get("user") for r in out["user"]} == {alice.name}
    assert {r["session"] for r in out["user"]} == {alice_session}
    assert out["command"] and {r.get("command") for r in out["command"]} == {"SELECT"}
    assert {r["session"] for r in out["command"]} == sessions_seen
    assert out["client"] and {r["session"] for r in out["client"]} == sessions_seen - {
        alice_session
    }
    one = _cli("tail", "--control", str(sock), "--json", "--session", str(alice_session))
    await _attached(running, 1)
    await trio.to_thread.run_sync(sessions)
    assert _records(await _stop_tail(one)) == []  # that session is over: nothing else matches


async def test_credentials_never_leave_the_proxy(
    proxy_factory: ProxyFactory,
    dovecot: Dovecot,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    traces = tmp_path / "traces"
    cfg = load_config(
        _write(
            tmp_path,
            f"""
trace: {{dir: {traces}}}
rules:
  - name: trace-all
    action: trace
    when: {{client: [127.0.0.0/8]}}
    bodies: full
""",
        )
    )
    running, sock = await _start(proxy_factory, tmp_path, cfg)
    accounts = [new_account(dovecot) for _ in range(6)]
    passwords = ["pw-atom-" + str(i) for i in range(len(accounts))]
    for a, pw in zip(accounts, passwords, strict=True):
        dovecot.add_user(a.name, pw)
    tail = _cli("tail", "--control", str(sock), "--json", "--bodies", "100000")
    await _attached(running)

    plain = base64.b64encode(f"\0{accounts[4].name}\0{passwords[4]}".encode())
    plain5 = base64.b64encode(f"\0{accounts[5].name}\0{passwords[5]}".encode())
    token = base64.b64encode(
        f"user={accounts[0].name}\x01auth=Bearer {SECRETS[3]}\x01\x01".encode()
    )

    def sessions() -> list[bytes]:
        answers = []
        with RawIMAP(running.address) as c:  # atom
            answers += c.command(b"a1", f"LOGIN {accounts[0].name} {passwords[0]}".encode())
        with RawIMAP(running.address) as c:  # quoted
            answers += c.command(b"a1", f'LOGIN "{accounts[1].name}" "{passwords[1]}"'.encode())
        with RawIMAP(running.address) as c:  # password as a synchronising literal
            c.send(f"a1 LOGIN {accounts[2].name} {{{len(passwords[2])}}}\r\n".encode())
            c.until_continuation()
            c.send(passwords[2].encode() + b"\r\n")
            answers += c.until_tagged(b"a1")[-1:]
        with RawIMAP(running.address) as c:  # both as non-synchronising literals
            u, p = accounts[3].name, passwords[3]
            c.send(f"a1 LOGIN {{{len(u)}+}}\r\n{u} {{{len(p)}+}}\r\n{p}\r\n".encode())
            answers += c.until_tagged(b"a1")
        with RawIMAP(running.address) as c:  # AUTHENTICATE PLAIN with SASL-IR
            answers += c.command(b"a1", b"AUTHENTICATE PLAIN " + plain)
        with RawIMAP(running.address) as c:  # AUTHENTICATE PLAIN, response after "+"
            c.send(b"a1 AUTHENTICATE PLAIN\r\n")
            c.until_continuation()
            c.send(plain5 + b"\r\n")
            answers += c.until_tagged(b"a1")[-1:]
        with RawIMAP(running.address) as c:  # XOAUTH2 (Dovecot refuses it; it still passes)
            c.send(b"a1 AUTHENTICATE XOAUTH2 " + token + b"\r\n")
            c.until_continuation()  # Dovecot's error challenge; the client answers empty
            c.send(b"\r\n")
            c.until_tagged(b"a1")
        return answers

    answers = await trio.to_thread.run_sync(sessions)
    assert sum(a.startswith(b"a1 OK") for a in answers) == 6, answers
    json_out = await _stop_tail(tail)
    records = _records(json_out)
    trace_files = list(traces.iterdir())
    assert len(trace_files) == 7
    shown = (await _run_cli("show", str(trace_files[0]))).stdout
    everything = [json_out, shown, caplog.text.encode()]
    everything += [p.read_bytes() for p in trace_files]
    secrets = [p.encode() for p in passwords] + [plain, plain5, token, SECRETS[3].encode()]
    secrets += [base64.b64encode(p.encode()) for p in passwords]
    for blob in everything:
        for secret in secrets:
            assert secret not in blob
    logins = [r for r in records if r.get("command") == "LOGIN" and r["event"] == "command"]
    assert f"LOGIN {accounts[0].name} ***" in logins[0]["line"]
    assert any(r["event"] == "literal" and r.get("redacted") for r in records)
    sasl = [r for r in records if r["event"] == "sasl"]
    assert sasl and all(r["line"] == "***" for r in sasl)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


async def test_a_tail_that_never_reads_does_not_stall_a_20mb_fetch_and_reports_drops(
    proxy_factory: ProxyFactory, dovecot: Dovecot, tmp_path: Path, seed_message: Any
) -> None:
    running, sock = await _start(proxy_factory, tmp_path)
    account = new_account(dovecot)
    message = seed_message(account, size=20 * 1024 * 1024)
    # A reader that stops reading: its socket buffer fills, then its queue, then it drops.
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(str(sock))
    stuck.sendall(b'{"v": 1, "op": "tail"}\n')
    await _attached(running)

    def session() -> float:
        with RawIMAP(running.address, timeout=30) as c:
            _login(c, account)
            c.command(b"a2", b"SELECT INBOX")
            c.send(b"".join(b"n%d NOOP\r\n" % i for i in range(3000)))
            c.until_tagged(b"n2999")
            t0 = time.monotonic()
            got = c.command(b"a3", b"FETCH 1 BODY.PEEK[]")
            assert got[-1].startswith(b"a3 OK")
            assert sum(len(x) for x in got) > len(message)
            return time.monotonic() - t0

    seconds = await trio.to_thread.run_sync(session)
    assert seconds < 10
    # Now let it read: it gets a "dropped" record with the count.
    reader_out = b""
    stuck.settimeout(20)
    while b'"dropped"' not in reader_out:
        chunk = await trio.to_thread.run_sync(stuck.recv, 1 << 20)
        assert chunk
        reader_out += chunk
    dropped = [json.loads(line) for line in reader_out.splitlines() if b'"dropped"' in line]
    assert dropped[0]["count"] > 0
    # What it did get is whole records, in order, ending with the session's close.
    while b'"close"' not in reader_out:
        reader_out += await trio.to_thread.run_sync(stuck.recv, 1 << 20)
    kinds = [json.loads(line)["event"] for line in reader_out.splitlines()[1:] if line]
    assert kinds[0] == "open" and "close" in kinds
    stuck.close()


async def test_sessions_lists_an_idle_session_and_kick_ends_only_that_user(
    proxy_factory: ProxyFactory, dovecot: Dovecot, tmp_path: Path
) -> None:
    metrics = Metrics(process_metrics=False)
    running, sock = await _start(proxy_factory, tmp_path, telemetry=Telemetry(metrics))
    idler, other = new_account(dovecot), new_account(dovecot)
    a = await trio.to_thread.run_sync(RawIMAP, running.address)
    b = await trio.to_thread.run_sync(RawIMAP, running.address)

    def setup() -> None:
        a.command(b"i0", b'ID ("name" "Thunderbird" "version" "128.3")')
        _login(a, idler)
        a.command(b"i2", b"SELECT INBOX")
        a.send(b"i3 IDLE\r\n")
        assert a.until_continuation()[-1].startswith(b"+")
        _login(b, other)

    await trio.to_thread.run_sync(setup)
    result = await _run_cli("sessions", "--control", str(sock), "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["user"]: row for row in json.loads(result.stdout)}
    row = rows[idler.name]
    assert (row["state"], row["mailbox"], row["software"]) == (
        "idling",
        "INBOX",
        "Thunderbird 128.3",
    )
    assert rows[other.name]["state"] == "authenticated"
    for key in (
        "id",
        "client",
        "started",
        "idle_seconds",
        "commands",
        "bytes_in",
        "bytes_out",
        "tls",
    ):
        assert key in row
    assert row["commands"] == 3 and row["bytes_in"] > 0 and row["bytes_out"] > 0
    table = await _run_cli("sessions", "--control", str(sock))
    assert idler.name in table.stdout.decode() and "Thunderbird 128.3" in table.stdout.decode()

    kicked = await _run_cli(
        "kick", "--control", str(sock), "--user", idler.name, "--reason", "maintenance"
    )
    assert kicked.stdout.decode().strip() == "1 session ended"

    def after() -> None:
        rest = b""
        a.sock.settimeout(10)
        while not rest.endswith(b"\r\n") or b"BYE" not in rest:
            chunk = a.sock.recv(4096)
            if not chunk:
                break
            rest += chunk
        assert b"* BYE [UNAVAILABLE] maintenance\r\n" in rest
        assert a.sock.recv(4096) == b""  # closed after the BYE
        assert b.command(b"b2", b"NOOP")[-1].startswith(b"b2 OK")  # the other one is alive
        b.close()

    await trio.to_thread.run_sync(after)
    assert metrics.registry.get_sample_value("imapproxy_sessions_kicked_total") == 1
    none = await _run_cli("kick", "--control", str(sock), "--user", "nobody-here*")
    assert none.stdout.decode().strip() == "0 sessions ended"


async def test_control_socket_is_0600_and_other_uids_are_refused(
    proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    # A directory anyone may traverse, so only the socket's own mode keeps nobody out.
    public = Path(tempfile.mkdtemp(prefix="imapproxy-ctl-", dir="/tmp"))
    public.chmod(0o755)
    running, sock = await _start(proxy_factory, public)
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    nobody = pwd.getpwnam("nobody")

    def as_nobody() -> str:
        """Connect and ask for the sessions as uid nobody (a forked child; the venv's
        interpreter is not executable for nobody)."""
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: socket calls only, then _exit
            try:
                os.setgid(nobody.pw_gid)
                os.setuid(nobody.pw_uid)
                c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    c.connect(str(sock))
                    # The proxy may refuse (answer and close) before this is sent.
                    with contextlib.suppress(BrokenPipeError):
                        c.sendall(b'{"v": 1, "op": "sessions"}\n')
                    c.settimeout(10)
                    answer = b""
                    while not answer.endswith(b"\n"):
                        chunk = c.recv(65536)
                        if not chunk:
                            break
                        answer += chunk
                except OSError as exc:
                    answer = f"error {exc.errno}".encode()
                os.write(w, answer)
            finally:
                os._exit(0)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            out = f.read()
        os.waitpid(pid, 0)
        return out.decode()

    assert await trio.to_thread.run_sync(as_nobody) == f"error {errno.EACCES}"
    os.chmod(sock, 0o666)  # even past the file mode, the proxy checks the peer's uid
    answer = await trio.to_thread.run_sync(as_nobody)
    assert answer.strip() == '{"v": 1, "ok": false, "error": "permission denied"}', answer
    assert len(running.proxy.inspector.rows()) == 0
    # The CLI itself as nobody: the venv's interpreter lives under /root, so run the system
    # Python 3.11 on this tree and the venv's packages.
    cli_as_nobody = await _nobody_cli("sessions", "--control", str(sock), nobody=nobody)
    if cli_as_nobody is not None:
        assert cli_as_nobody.returncode == 1
        assert cli_as_nobody.stderr.decode() == "imapproxy: the proxy refused: permission denied\n"
        os.chmod(sock, 0o600)
        denied = await _nobody_cli("sessions", "--control", str(sock), nobody=nobody)
        assert denied is not None and denied.returncode == 1
        assert denied.stderr.decode().endswith("Permission denied\n")
        assert denied.stderr.decode().count("\n") == 1
    shutil.rmtree(public, ignore_errors=True)
    missing = await _run_cli("sessions", "--control", str(public / "nope.sock"))
    assert missing.returncode == 1 and missing.stderr.decode().count("\n") == 1
    assert b"Traceback" not in missing.stderr


async def _nobody_cli(*args: str, nobody: Any) -> subprocess.CompletedProcess[bytes] | None:
    python = Path("/usr/bin/python3")
    if not python.exists():
        return None
    root = Path(__file__).resolve().parents[2]
    site = Path(trio.__file__).resolve().parents[1]
    env = {"PYTHONPATH": f"{root}:{site}", "PYTHONDONTWRITEBYTECODE": "1", "PATH": "/usr/bin"}

    def demote() -> None:
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)

    return await trio.to_thread.run_sync(
        lambda: subprocess.run(
            [str(python), "-m", "imapproxy", *args],
            capture_output=True,
            timeout=30,
            env=env,
            cwd="/",
            preexec_fn=demote,
        )
    )


async def test_terminal_format_through_a_pty(
    proxy_factory: ProxyFactory, dovecot: Dovecot, tmp_path: Path
) -> None:
    running, sock = await _start(proxy_factory, tmp_path)
    account = new_account(dovecot)
    master, slave = pty.openpty()
    tail = _cli("tail", "--control", str(sock), stdout=slave)
    os.close(slave)
    await _attached(running)

    def session() -> None:
        with RawIMAP(running.address) as c:
            _login(c, account)
            c.command(b"a2", b"NOOP")
            c.command(b"a3", b"LOGOUT")

    await trio.to_thread.run_sync(session)
    seen = b""
    with trio.fail_after(20):
        while b"== close" not in seen:
            seen += await trio.to_thread.run_sync(os.read, master, 65536)
    tail.terminate()
    await trio.to_thread.run_sync(tail.wait)
    os.close(master)
    text = seen.decode()
    assert "\x1b[36m" in text and "\x1b[32m" in text  # client and server colours
    lines = [line for line in text.splitlines() if "a1 LOGIN" in line]
    assert lines and f"C> a1 LOGIN {account.name} ***" in lines[0]
    assert account.password not in text
    noop = next(line for line in text.splitlines() if "a2 OK" in line)
    assert noop.rstrip().endswith("ms")


async def test_trace_rule_writes_one_private_file_per_matching_session_and_caps_hold(
    proxy_factory: ProxyFactory, dovecot: Dovecot, tmp_path: Path, seed_message: Any
) -> None:
    traces = tmp_path / "traces"
    alice, bob = new_account(dovecot), new_account(dovecot)
    seed_message(alice, size=200_000)
    cfg = load_config(
        _write(
            tmp_path,
            f"""
trace: {{dir: {traces}, max_file_bytes: 8192, max_dir_bytes: 20000}}
rules:
  - name: trace-alice
    action: trace
    when: {{user: ["{alice.name}"]}}
    bodies: 100
""",
        )
    )
    running, _sock = await _start(proxy_factory, tmp_path, cfg)

    def session(account: Account, fetches: int) -> None:
        with RawIMAP(running.address) as c:
            _login(c, account)
            c.command(b"a2", b"SELECT INBOX")
            for i in range(fetches):
                c.command(b"f%d" % i, b"FETCH 1 BODY.PEEK[]")
            c.command(b"a9", b"LOGOUT")

    await trio.to_thread.run_sync(session, alice, 1)
    await trio.to_thread.run_sync(session, bob, 1)
    files = sorted(traces.iterdir())
    assert len(files) == 1 and alice.name in files[0].name
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    records = _records(files[0].read_bytes())
    assert records[0]["event"] == "open" and records[-1]["event"] == "close"
    assert any(r.get("line", "").startswith(f"a1 LOGIN {alice.name} ***") for r in records)
    literal = next(r for r in records if r["event"] == "literal")
    assert literal["size"] >= 200_000 and 0 < len(literal["payload"]) <= 100
    shown = await _run_cli("show", str(files[0]))
    assert shown.returncode == 0 and "== open" in shown.stdout.decode()
    assert f"C> a1 LOGIN {alice.name} ***" in shown.stdout.decode()
    # Caps: a long session stops at max_file_bytes; the directory stays under max_dir_bytes.
    for _ in range(4):
        await trio.to_thread.run_sync(session, alice, 60)
    sizes = [p.stat().st_size for p in traces.iterdir()]
    assert all(s <= 8192 for s in sizes) and sum(sizes) <= 20000
    assert len(sizes) < 5  # the oldest went
    kept = [_records(p.read_bytes()) for p in traces.iterdir()]
    assert any(r and r[-1]["event"] == "truncated" for r in kept)  # a capped file says so


async def test_trace_rule_changes_no_relayed_byte(
    proxy_factory: ProxyFactory, dovecot: Dovecot, tmp_path: Path
) -> None:
    """Trace rules are not policy: {n+} literals stay as the client sent them."""
    cfg = load_config(
        _write(
            tmp_path,
            f"""
trace: {{dir: {tmp_path / "t"}}}
rules: [{{name: t, action: trace}}]
""",
        )
    )
    running, _ = await _start(proxy_factory, tmp_path, cfg)
    assert running.proxy.runtime.policy is None


async def test_sessions_watch_redraws_and_kick_by_session_or_client(
    proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    running, sock = await _start(proxy_factory, tmp_path)
    c = await trio.to_thread.run_sync(RawIMAP, running.address)
    master, slave = pty.openpty()
    watch = _cli("sessions", "--control", str(sock), "--watch", stdout=slave)
    os.close(slave)
    seen = b""
    with trio.fail_after(20):
        while seen.count(b"not authenticated") < 2:  # two redraws, a second apart
            seen += await trio.to_thread.run_sync(os.read, master, 65536)
    watch.terminate()
    await trio.to_thread.run_sync(watch.wait)
    os.close(master)
    assert b"\x1b[2J" in seen and b"1 session" in seen
    bad = await _run_cli("kick", "--control", str(sock), "--client", "not-a-cidr")
    assert bad.returncode == 1 and bad.stderr.decode().count("\n") == 1
    other = await _run_cli("kick", "--control", str(sock), "--client", "127.0.0.99/32")
    assert other.stdout.decode().strip() == "0 sessions ended"
    session_id = running.proxy.inspector.rows()[0]["id"]
    kicked = await _run_cli("kick", "--control", str(sock), "--session", str(session_id))
    assert kicked.stdout.decode().strip() == "1 session ended"
    rest = await trio.to_thread.run_sync(c.read_response)
    assert rest == b"* BYE [UNAVAILABLE] Session ended by an administrator\r\n"
    c.close()
