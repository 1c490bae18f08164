"""Config for the inspector: control socket, trace section, the trace rule action, and the
default socket path the CLI picks."""

from __future__ import annotations

from pathlib import Path

import pytest

from imapproxy.cli import _overrides, _run_parser, default_control_socket
from imapproxy.config.loader import Config, ConfigError, load_config


def _load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return load_config(path)


def test_trace_section_and_rule(tmp_path: Path) -> None:
    cfg = _load(
        tmp_path,
        "control: {socket: run/ctl.sock}\n"
        "trace: {dir: traces, max_file_bytes: 65536, max_dir_bytes: 1048576}\n"
        "rules:\n"
        "  - {name: a, action: trace, when: {user: ['alice@*'], client: [10.0.0.0/8]}}\n"
        "  - {name: b, action: trace, bodies: full}\n"
        "  - {name: c, action: trace, bodies: 512}\n",
    )
    assert cfg.control.socket == tmp_path / "run/ctl.sock"
    assert (cfg.trace.dir, cfg.trace.max_file_bytes) == (tmp_path / "traces", 65536)
    assert [r.bodies for r in cfg.rules] == [0, None, 512]
    assert cfg.rules[0].when.user == ("alice@*",)


def test_trace_defaults() -> None:
    assert Config().trace.dir == Path("/var/lib/imapproxy/traces")
    assert (Config().trace.max_file_bytes, Config().trace.max_dir_bytes) == (10485760, 1073741824)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (
            "rules: [{name: t, action: trace, when: {command: [FETCH]}}]\n",
            "a trace rule records whole sessions; rules[0].when.command does not apply",
        ),
        ("rules: [{name: t, action: trace, bodies: -1}]\n", "must be at least 0"),
        ("rules: [{name: t, action: trace, bodies: all}]\n", "must be an integer"),
        ("rules: [{name: t, action: log, bodies: 3}]\n", "only valid for action 'trace'"),
        ("trace: {max_file_bytes: 100}\n", "trace.max_file_bytes must be at least 4096"),
        ("trace: {max_file_bytes: 90000, max_dir_bytes: 8192}\n", "is larger than"),
        ("trace: {size: 1}\n", "unknown key 'size'"),
    ],
)
def test_trace_errors_are_located(tmp_path: Path, text: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    assert reason in str(info.value) and str(info.value).startswith(str(tmp_path / "c.yaml"))


def test_default_control_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/run/imapproxy:/run/other")
    assert default_control_socket() == Path("/run/imapproxy/control.sock")
    monkeypatch.delenv("RUNTIME_DIRECTORY")
    monkeypatch.setattr("os.geteuid", lambda: 0)
    assert default_control_socket() == Path("/run/imapproxy/control.sock")
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    assert default_control_socket() is None


def test_control_flag_and_default_are_applied(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/run/x")
    default = _overrides(_run_parser().parse_args([]))(Config())
    assert default.control.socket == Path("/run/x/control.sock")
    assert not default.control.required  # held by another proxy: a warning, not a failure
    given = _overrides(_run_parser().parse_args(["--control", "/tmp/c.sock"]))(Config())
    assert given.control.socket == Path("/tmp/c.sock") and given.control.required
    off = _overrides(_run_parser().parse_args(["--control", "off"]))(Config())
    assert off.control.socket is None
