"""systemd/imapproxy.service: `systemd-analyze verify` is clean, the hardening the issue asks for
is present, the example config fits the unit, and our runtime survives MemoryDenyWriteExecute."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "imapproxy.service"
EXAMPLE_CONFIG = ROOT / "systemd" / "imapproxy.yaml"
EXEC_START = "/usr/local/bin/imapproxy"

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None and not os.environ.get("CI"),
    reason="systemd-analyze not installed (apt-get install systemd); required when CI is set",
)


def directives(text: str) -> dict[str, list[str]]:
    """Unit-file assignments by key (a key may repeat), comments and sections dropped."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, val = line.partition("=")
        out.setdefault(key.strip(), []).append(val.strip())
    return out


def verify(unit_text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run `systemd-analyze verify` on a copy whose ExecStart points at a real executable,
    since /usr/local/bin/imapproxy need not exist where tests run."""
    exe = tmp_path / "imapproxy"
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    assert EXEC_START in unit_text
    unit = tmp_path / "imapproxy.service"
    unit.write_text(unit_text.replace(EXEC_START, str(exe)))
    return subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )


@needs_systemd_analyze
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    result = verify(UNIT.read_text(), tmp_path)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, output
    # verify reports unknown keys and bad values as messages with exit status 0.
    assert output == ""


@needs_systemd_analyze
def test_verify_would_catch_a_broken_unit(tmp_path: Path) -> None:
    """Guards the test above: a typo'd directive must produce output."""
    broken = UNIT.read_text().replace("Type=notify", "Type=notifyy")
    result = verify(broken, tmp_path)
    assert "notifyy" in result.stdout + result.stderr


def test_unit_has_required_settings() -> None:
    d = directives(UNIT.read_text())
    expected = {
        "Type": "notify",
        "ExecStart": f"{EXEC_START} --config /etc/imapproxy/config.yaml",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "Restart": "on-failure",
        "DynamicUser": "yes",
        "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallFilter": "@system-service",
        "SystemCallArchitectures": "native",
        "ConfigurationDirectory": "imapproxy",
        "RuntimeDirectory": "imapproxy",
        "LogsDirectory": "imapproxy",
        "LimitNOFILE": "65536",
        "WantedBy": "multi-user.target",
    }
    for key, value in expected.items():
        assert d.get(key) == [value], f"{key}: {d.get(key)}"
    # Longer than the proxy's 30 s drain, so SIGKILL never cuts a graceful stop short.
    (stop,) = d["TimeoutStopSec"]
    assert stop.endswith("s")
    assert int(stop.removesuffix("s")) > 30


def test_file_limit_holds_the_session_limit() -> None:
    """LimitNOFILE= covers two descriptors per session at the default and the example's
    limits.max_sessions, plus the process's own."""
    from imapproxy.config.loader import Limits
    from imapproxy.server.capacity import sessions_within

    (limit,) = directives(UNIT.read_text())["LimitNOFILE"]
    example = (yaml.safe_load(EXAMPLE_CONFIG.read_text()).get("limits") or {}).get("max_sessions")
    assert sessions_within(int(limit)) >= max(Limits().max_sessions, example or 0)


def test_example_config_fits_the_unit() -> None:
    cfg = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    assert set(cfg) <= {
        "listen", "listen_tls", "client_tls", "upstream", "metrics", "control", "log", "rules",
        "rules_file", "limits", "workers",
    }  # fmt: skip
    assert cfg["listen"] == "0.0.0.0:143"
    assert cfg["upstream"]["address"]
    assert cfg["upstream"]["tls"] in {"none", "starttls", "implicit"}
    assert cfg["metrics"]["address"].startswith("127.0.0.1:")
    # The only writable places the unit grants the dynamic user.
    assert cfg["control"]["socket"].startswith("/run/imapproxy/")
    assert cfg["log"]["format"] in {"json", "text"}
    assert [r["name"] for r in cfg["rules"]] == ["audit-everything", "no-mailbox-deletion"]
    # The drain fits in the unit's stop timeout.
    assert cfg["limits"]["grace_period"] < 45


@pytest.mark.skipif(
    importlib.util.find_spec("imapproxy.cli") is None, reason="imapproxy.cli not written yet"
)
def test_example_config_passes_imapproxy_check() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "imapproxy", "check", "--config", str(EXAMPLE_CONFIG)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# The kernel's own MemoryDenyWriteExecute (prctl PR_SET_MDWE, Linux >= 6.3), inherited across
# execve: the child runs the proxy's runtime stack with W^X enforced, as under the unit.
_MDWE_CHILD = textwrap.dedent(
    """
    import functools, mmap, ssl, urllib.request
    import trio, trustme, yaml
    from imapproxy.telemetry.metrics import Metrics

    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        raise SystemExit("W^X not enforced")
    except PermissionError:
        pass

    m = Metrics()
    m.serve("127.0.0.1", 0)
    body = urllib.request.urlopen(f"http://127.0.0.1:{m.bound_port}/metrics", timeout=5).read()
    assert b"imapproxy_build_info" in body

    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)

    async def main():
        async def serve(stream):
            await stream.send_all(b"* OK ready\\r\\n")
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(trio.serve_ssl_over_tcp, host="127.0.0.1"), serve, 0, server_ctx
            )
            port = listeners[0].transport_listener.socket.getsockname()[1]
            with trio.fail_after(10):
                stream = await trio.open_ssl_over_tcp_stream(
                    "127.0.0.1", port, ssl_context=client_ctx, https_compatible=True
                )
                assert await stream.receive_some() == b"* OK ready\\r\\n"
            nursery.cancel_scope.cancel()

    trio.run(main)
    print("ok")
    """
)

_MDWE_LAUNCHER = textwrap.dedent(
    """
    import ctypes, os, sys
    PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        sys.exit(77)  # kernel without MDWE
    os.execv(sys.executable, [sys.executable, "-c", sys.argv[1]])
    """
)


def test_runtime_works_with_memory_deny_write_execute() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _MDWE_LAUNCHER, _MDWE_CHILD],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if result.returncode == 77:
        pytest.skip("kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "ok"
