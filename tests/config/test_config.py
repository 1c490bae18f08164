"""Config loading: valid files become the documented dataclasses; every broken file gives
one exact, located, one-line error."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from imapproxy.config.loader import (
    Address,
    ClientTLS,
    Config,
    ConfigError,
    ControlConfig,
    Limits,
    Listen,
    LogConfig,
    LoginFailures,
    MetricsConfig,
    TLSListen,
    Upstream,
    check_config,
    load_config,
)
from imapproxy.policy import Rule, When


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Work in tmp_path so messages carry short relative file names."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cert.pem").write_text("cert")
    (tmp_path / "key.pem").write_text("key")
    return tmp_path


def write(name: str, text: str) -> Path:
    path = Path(name)
    path.write_text(text)
    return path


# --- valid files -------------------------------------------------------------------------

INTERFACE_EXAMPLE = """\
listen: "0.0.0.0:143"
client_tls:                 # optional: offer STARTTLS to clients
  cert: cert.pem
  key: key.pem
  require: false
upstream:
  address: "mail.example.com:143"
  tls: starttls
  verify: true
  ca_file: null
metrics:
  address: "127.0.0.1:9143"
control:
  socket: /run/imapproxy/control.sock
log:
  level: info
  format: json
rules:
  - name: audit-everything
    action: log
  - name: no-mailbox-deletion
    when: {command: [DELETE]}
    action: block
    message: "Deleting folders is disabled by policy"
  - name: hide-archive-path
    action: rewrite_mailbox
    from: "Archive"
    to: "Old/Archive"
"""


def test_interface_example_loads(cwd: Path) -> None:
    config = load_config(write("c.yaml", INTERFACE_EXAMPLE))
    assert config == Config(
        listen=Listen(Address("0.0.0.0", 143)),
        client_tls=ClientTLS(Path("cert.pem"), Path("key.pem")),
        upstream=Upstream(Address("mail.example.com", 143), tls="starttls"),
        metrics=MetricsConfig(Address("127.0.0.1", 9143)),
        control=ControlConfig(Path("/run/imapproxy/control.sock")),
        log=LogConfig("info", "json"),
        rules=(
            Rule("audit-everything", "log", location="c.yaml:19:5"),
            Rule(
                "no-mailbox-deletion",
                "block",
                When(command=("DELETE",)),
                message="Deleting folders is disabled by policy",
                location="c.yaml:21:5",
            ),
            Rule(
                "hide-archive-path",
                "rewrite_mailbox",
                from_="Archive",
                to="Old/Archive",
                location="c.yaml:25:5",
            ),
        ),
        source=Path("c.yaml"),
    )


def test_relative_paths_resolve_against_config_dir(cwd: Path) -> None:
    conf = cwd / "etc"
    (conf / "tls").mkdir(parents=True)
    (conf / "tls" / "c.pem").write_text("c")
    (conf / "tls" / "k.pem").write_text("k")
    (conf / "rules").mkdir()
    (conf / "rules" / "r.yaml").write_text("- {name: a, action: log}\n")
    (conf / "imapproxy.yaml").write_text(
        "listen_tls: {cert: tls/c.pem, key: tls/k.pem}\n"
        "log: {file: logs/proxy.log}\n"
        "control: {socket: run/ctl.sock}\n"
        "rules_file: rules/r.yaml\n"
    )
    config = load_config(Path("etc/imapproxy.yaml"))
    assert config.listen_tls == TLSListen(
        Address("0.0.0.0", 993), Path("etc/tls/c.pem"), Path("etc/tls/k.pem")
    )
    assert config.log.file == Path("etc/logs/proxy.log")
    assert config.control.socket == Path("etc/run/ctl.sock")
    assert [r.name for r in config.rules] == ["a"]
    assert config.rules[0].location == "etc/rules/r.yaml:1:3"


def test_empty_file_is_all_defaults(cwd: Path) -> None:
    config = load_config(write("c.yaml", "# nothing configured yet\n"))
    assert config == Config(source=Path("c.yaml"))
    assert config.listen == Listen(Address("0.0.0.0", 143))
    assert config.upstream is None
    assert config.metrics.address == Address("127.0.0.1", 9143)
    assert config.limits == Limits(65536, 1860.0, 30.0, 10000)


def test_null_sections_mean_defaults_and_metrics_can_be_disabled(cwd: Path) -> None:
    config = load_config(write("c.yaml", "metrics:\nlog:\nlimits:\nupstream:\n"))
    assert config == Config(source=Path("c.yaml"))
    disabled = load_config(write("d.yaml", "metrics: {address: null}\n"))
    assert disabled.metrics == MetricsConfig(None)


def test_every_section_value(cwd: Path) -> None:
    config = load_config(
        write(
            "c.yaml",
            "listen: '[::1]:1143'\n"
            "listen_tls: {address: '127.0.0.1:1993', cert: cert.pem, key: key.pem}\n"
            "client_tls: {cert: cert.pem, key: key.pem, require: true, min_version: TLSv1.3,"
            " ciphers: 'ECDHE+AESGCM'}\n"
            "upstream: {address: 'imap.example.com:993', tls: implicit, verify: false,"
            " ca_file: cert.pem, server_name: imap.example.com, connect_timeout: 2.5}\n"
            "log: {level: DEBUG, format: text}\n"
            "limits: {max_line: 8192, idle_timeout: 1800, grace_period: 0, max_sessions: 5}\n",
        )
    )
    assert config.listen == Listen(Address("::1", 1143))
    assert str(config.listen.address) == "[::1]:1143"
    assert config.listen_tls == TLSListen(
        Address("127.0.0.1", 1993), Path("cert.pem"), Path("key.pem")
    )
    assert config.client_tls == ClientTLS(
        Path("cert.pem"), Path("key.pem"), True, "TLSv1.3", "ECDHE+AESGCM"
    )
    assert config.upstream == Upstream(
        Address("imap.example.com", 993),
        "implicit",
        False,
        Path("cert.pem"),
        "imap.example.com",
        2.5,
    )
    assert config.log == LogConfig("debug", "text", None)
    assert config.limits == Limits(8192, 1800.0, 0.0, 5)


def test_upstream_shorthand(cwd: Path) -> None:
    config = load_config(write("c.yaml", "upstream: 'mail:143'\n"))
    assert config.upstream == Upstream(Address("mail", 143))


def test_rules_file_forms(cwd: Path) -> None:
    write("list.yaml", "- {name: a, action: log}\n")
    write("map.yaml", "rules:\n  - {name: b, action: log}\n")
    write("empty.yaml", "# no rules yet\n")
    for name, expected in (("list", ["a"]), ("map", ["b"]), ("empty", [])):
        config = load_config(write(f"c-{name}.yaml", f"rules_file: {name}.yaml\n"))
        assert [r.name for r in config.rules] == expected


def test_when_values_are_normalised(cwd: Path) -> None:
    config = load_config(
        write(
            "c.yaml",
            "rules:\n"
            "  - name: x\n"
            "    action: block\n"
            "    when:\n"
            "      command: [uid  fetch, Fetch, FETCH]\n"
            "      user: '*@example.com'\n"
            "      mailbox: [Archive, 'Archive/*']\n"
            "      client: [10.0.0.0/8, '2001:db8::/32', 192.0.2.7]\n"
            "      direction: client\n",
        )
    )
    assert config.rules[0].when == When(
        command=("UID FETCH", "FETCH"),
        user=("*@example.com",),
        mailbox=("Archive", "Archive/*"),
        client=(
            ipaddress.ip_network("10.0.0.0/8"),
            ipaddress.ip_network("2001:db8::/32"),
            ipaddress.ip_network("192.0.2.7/32"),
        ),
        direction="client",
    )


def test_anchors_and_merge_keys(cwd: Path) -> None:
    config = load_config(
        write(
            "c.yaml",
            "rules:\n"
            "  - &base {name: a, action: block, when: {command: [DELETE]}}\n"
            "  - <<: *base\n"
            "    name: b\n",
        )
    )
    assert [(r.name, r.when.command) for r in config.rules] == [
        ("a", ("DELETE",)),
        ("b", ("DELETE",)),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a:1", Address("a", 1)),
        ("0.0.0.0:143", Address("0.0.0.0", 143)),
        ("[::]:65535", Address("::", 65535)),
        ("mail-1.example.com:993", Address("mail-1.example.com", 993)),
    ],
)
def test_address_parse(text: str, expected: Address) -> None:
    assert Address.parse(text) == expected
    assert str(expected) == text


def test_check_config_is_none_when_valid(cwd: Path) -> None:
    assert check_config(write("c.yaml", INTERFACE_EXAMPLE)) is None


# --- errors ------------------------------------------------------------------------------

ERRORS: dict[str, tuple[str, str]] = {
    "unknown top-level key": (
        "lisen: '0.0.0.0:143'\n",
        "c.yaml:1:1: unknown key 'lisen' in top level (expected one of: client_tls, control, "
        "limits, listen, listen_tls, log, metrics, rules, rules_file, trace, upstream, "
        "workers); did you mean 'listen'?",
    ),
    "unknown key without suggestion": (
        "frobnicate: 1\n",
        "c.yaml:1:1: unknown key 'frobnicate' in top level (expected one of: client_tls, "
        "control, limits, listen, listen_tls, log, metrics, rules, rules_file, trace, upstream, "
        "workers)",
    ),
    "negative per-ip limit": (
        "limits: {max_sessions_per_ip: -1}\n",
        "c.yaml:1:31: limits.max_sessions_per_ip must be at least 0, got -1",
    ),
    "login failures window": (
        "limits:\n  login_failures: {per_ip: 3, window: 0}\n",
        "c.yaml:2:39: limits.login_failures.window must be greater than 0, got 0",
    ),
    "login failures unknown key": (
        "limits:\n  login_failures: {per_ipp: 3}\n",
        "c.yaml:2:20: unknown key 'per_ipp' in limits.login_failures (expected one of: "
        "per_ip, per_user, window); did you mean 'per_ip'?",
    ),
    "workers zero": ("workers: 0\n", "c.yaml:1:10: workers must be at least 1, got 0"),
    "workers word": (
        "workers: many\n",
        "c.yaml:1:10: workers must be an integer, got string 'many'",
    ),
    "unknown action": (
        "rules:\n  - name: x\n    action: blok\n",
        "c.yaml:3:13: unknown action 'blok' (expected one of: block, log, read_only, "
        "rewrite_mailbox, trace)",
    ),
    "listen not a string": (
        "listen: 143\n",
        "c.yaml:1:9: listen must be a string, got integer 143 (put it in quotes)",
    ),
    "address without port": (
        "listen: '0.0.0.0'\n",
        "c.yaml:1:9: invalid address in listen: expected 'host:port', got '0.0.0.0' "
        "(the port is required)",
    ),
    "port out of range": (
        "listen: 'localhost:70000'\n",
        "c.yaml:1:9: invalid address in listen: port 70000 is out of range (1-65535)",
    ),
    "port zero": (
        "upstream: 'mail:0'\n",
        "c.yaml:1:11: invalid address in upstream: port 0 is out of range (1-65535)",
    ),
    "port not a number": (
        "listen: 'localhost:imap'\n",
        "c.yaml:1:9: invalid address in listen: port 'imap' is not a number",
    ),
    "IPv6 without brackets": (
        "listen: '::1:143'\n",
        "c.yaml:1:9: invalid address in listen: put IPv6 addresses in brackets, e.g. '[::1]:143'",
    ),
    "bad IPv6 in brackets": (
        "listen: '[::g]:143'\n",
        "c.yaml:1:9: invalid address in listen: invalid IPv6 address '::g'",
    ),
    "bad host name": (
        "upstream: {address: 'mail host:143'}\n",
        "c.yaml:1:21: invalid address in upstream.address: invalid host name 'mail host'",
    ),
    "bad IPv4": (
        "listen: '10.0.0.300:143'\n",
        "c.yaml:1:9: invalid address in listen: invalid IPv4 address '10.0.0.300'",
    ),
    "missing host": (
        "metrics: {address: ':9143'}\n",
        "c.yaml:1:20: invalid address in metrics.address: missing host in ':9143' "
        "(use '0.0.0.0:9143' for all)",
    ),
    "bad glob": (
        "rules:\n  - name: x\n    action: block\n    when: {mailbox: 'Arch[ive'}\n",
        "c.yaml:4:21: invalid glob 'Arch[ive' in rules[0].when.mailbox: "
        "unterminated '[' at position 5",
    ),
    "CIDR with host bits": (
        "rules:\n  - name: x\n    action: block\n    when:\n      client: [10.0.0.1/8]\n",
        "c.yaml:5:16: invalid CIDR '10.0.0.1/8' in rules[0].when.client: host bits set "
        "(did you mean '10.0.0.0/8'?)",
    ),
    "invalid CIDR": (
        "rules:\n  - name: x\n    action: block\n    when:\n      client: [10.0.0.300/8]\n",
        "c.yaml:5:16: invalid CIDR '10.0.0.300/8' in rules[0].when.client: "
        "'10.0.0.300/8' does not appear to be an IPv4 or IPv6 network",
    ),
    "unknown command": (
        "rules:\n  - name: x\n    action: block\n"
        "    when: {command: [DELETE, 'uid fetch', DELET]}\n",
        "c.yaml:4:43: unknown IMAP command 'DELET' in rules[0].when.command; "
        "did you mean 'DELETE'?",
    ),
    "unknown UID command": (
        "rules:\n  - name: x\n    action: log\n    when: {command: uid fech}\n",
        "c.yaml:4:21: unknown IMAP command 'uid fech' in rules[0].when.command; "
        "did you mean 'UID FETCH'?",
    ),
    "unknown command without suggestion": (
        "rules:\n  - name: x\n    action: log\n    when: {command: XYZZY}\n",
        "c.yaml:4:21: unknown IMAP command 'XYZZY' in rules[0].when.command",
    ),
    "missing action": (
        "rules:\n  - name: x\n    when: {command: [DELETE]}\n",
        "c.yaml:2:5: missing required key 'action' in rules[0]",
    ),
    "missing upstream address": (
        "upstream:\n  tls: starttls\n",
        "c.yaml:2:3: missing required key 'address' in upstream",
    ),
    "rules_file not found": (
        "rules_file: rules/nope.yaml\n",
        "c.yaml:1:13: rules file not found: rules/nope.yaml",
    ),
    "rules and rules_file": (
        "rules: []\nrules_file: r.yaml\n",
        "c.yaml:2:1: 'rules' and 'rules_file' cannot both be given; drop 'rules_file'",
    ),
    "YAML syntax: flow sequence": (
        "listen: [::1]:143\n",
        "c.yaml:1:10: YAML syntax error: expected the node content, but found ':' "
        "(while parsing a flow node)",
    ),
    "YAML syntax: mapping value": (
        "listen: a: b\n",
        "c.yaml:1:10: YAML syntax error: mapping values are not allowed here",
    ),
    "YAML syntax: tab": (
        "upstream:\n\taddress: 'x:1'\n",
        "c.yaml:2:1: YAML syntax error: found character '\\t' that cannot start any token "
        "(while scanning for the next token)",
    ),
    "duplicate key": (
        "listen: 'a:1'\nlog: {}\nlisten: 'b:2'\n",
        "c.yaml:3:1: duplicate key 'listen' in top level (first defined at line 1)",
    ),
    "duplicate rule name": (
        "rules:\n  - {name: x, action: log}\n  - {name: y, action: log}\n"
        "  - {name: x, action: block}\n",
        "c.yaml:4:5: duplicate rule name 'x' (first defined at c.yaml:2:5)",
    ),
    "duplicate rewrite source": (
        "rules:\n  - {name: a, action: rewrite_mailbox, from: A, to: X}\n"
        "  - {name: b, action: rewrite_mailbox, from: A, to: Y}\n",
        "c.yaml:3:5: rewrite_mailbox rules 'a' and 'b' have the same 'from' 'A'; "
        "a name can only map one way",
    ),
    "duplicate rewrite target": (
        "rules:\n  - {name: a, action: rewrite_mailbox, from: A, to: X}\n"
        "  - {name: b, action: rewrite_mailbox, from: B, to: X}\n",
        "c.yaml:3:5: rewrite_mailbox rules 'a' and 'b' have the same 'to' 'X'; "
        "a name can only map one way",
    ),
    "missing key file": (
        "client_tls:\n  cert: cert.pem\n  key: missing-key.pem\n",
        "c.yaml:3:8: client_tls.key: file not found: missing-key.pem",
    ),
    "missing ca_file": (
        "upstream: {address: 'm:993', tls: implicit, ca_file: /nonexistent/ca.pem}\n",
        "c.yaml:1:54: upstream.ca_file: file not found: /nonexistent/ca.pem",
    ),
    "ca_file without TLS": (
        "upstream:\n  address: 'mail:143'\n  ca_file: cert.pem\n",
        "c.yaml:3:3: upstream.ca_file has no effect without TLS to the upstream "
        "(set upstream.tls to starttls or implicit)",
    ),
    "verify not a boolean": (
        "upstream:\n  address: 'mail:993'\n  tls: implicit\n  verify: 'maybe'\n",
        "c.yaml:4:11: upstream.verify must be true or false, got string 'maybe'",
    ),
    "unknown tls mode": (
        "upstream:\n  address: 'mail:993'\n  tls: ssl\n",
        "c.yaml:3:8: unknown upstream.tls 'ssl' (expected one of: implicit, none, starttls)",
    ),
    "detail on a block rule": (
        "rules:\n  - name: x\n    action: block\n    detail: full\n",
        "c.yaml:4:5: key 'detail' is only valid for action 'log'",
    ),
    "message on a log rule": (
        "rules:\n  - name: x\n    action: log\n    message: hi\n",
        "c.yaml:4:5: key 'message' is only valid for action 'block'",
    ),
    "when on a rewrite rule": (
        "rules:\n  - name: x\n    action: rewrite_mailbox\n    from: A\n    to: B\n"
        "    when: {user: [a]}\n",
        "c.yaml:6:5: 'when' is not supported on rewrite_mailbox rules: the mapping applies "
        "to every command and response so that names stay consistent",
    ),
    "server direction on a block rule": (
        "rules:\n  - name: x\n    action: block\n    when: {direction: server}\n",
        "c.yaml:4:23: a block rule acts on client commands; 'direction: server' never matches",
    ),
    "direction on a log rule": (
        "rules:\n  - name: x\n    action: log\n    detail: full\n    when: {direction: client}\n",
        "c.yaml:5:12: 'when.direction' is not supported on log rules: each log line records "
        "a command with its tagged answer; 'detail: full' adds the server's untagged responses",
    ),
    "server direction on a log rule": (
        "rules:\n  - name: x\n    action: log\n    when:\n      direction: server\n",
        "c.yaml:5:7: 'when.direction' is not supported on log rules: each log line records "
        "a command with its tagged answer; 'detail: full' adds the server's untagged responses",
    ),
    "non-ASCII block message": (
        "rules:\n  - name: x\n    action: block\n    message: 'Löschen verboten'\n",
        "c.yaml:4:14: rules[0].message must be at most 200 printable ASCII characters "
        "(it is sent to the client as IMAP response text)",
    ),
    "invalid rule name": (
        "rules:\n  - name: 'my rule'\n    action: log\n",
        "c.yaml:2:11: invalid rule name 'my rule' (use up to 64 letters, digits, '-', '_' "
        "and '.', starting with a letter or digit)",
    ),
    "rewrite to itself": (
        "rules:\n  - {name: x, action: rewrite_mailbox, from: A, to: A}\n",
        "c.yaml:2:53: 'from' and 'to' are both 'A'; the rule would change nothing",
    ),
    "rewrite pattern": (
        "rules:\n  - {name: x, action: rewrite_mailbox, from: 'A*', to: B}\n",
        "c.yaml:2:46: rules[0].from must be a mailbox name, not a pattern "
        "('*' and '%' are LIST wildcards)",
    ),
    "rewrite trailing delimiter": (
        "rules:\n  - {name: x, action: rewrite_mailbox, from: A, to: 'B/'}\n",
        "c.yaml:2:53: rules[0].to must not start or end with the hierarchy delimiter '/'",
    ),
    "rewrite without to": (
        "rules:\n  - {name: x, action: rewrite_mailbox, from: A}\n",
        "c.yaml:2:5: missing required key 'to' in rules[0] (action rewrite_mailbox)",
    ),
    "empty command list": (
        "rules:\n  - name: x\n    action: block\n    when: {command: []}\n",
        "c.yaml:4:21: rules[0].when.command must not be an empty list (it would never match)",
    ),
    "null when value": (
        "rules:\n  - name: x\n    action: block\n    when: {command: }\n",
        "c.yaml:4:12: rules[0].when.command is empty; remove it or give a value",
    ),
    "mailbox condition on a command without mailbox": (
        "rules:\n  - name: x\n    action: block\n"
        "    when: {command: [DELETE, NOOP], mailbox: [Archive]}\n",
        "c.yaml:4:30: NOOP involves no mailbox, so rules[0].when.mailbox would never match it",
    ),
    "mailbox condition on LIST": (
        "rules:\n  - name: x\n    action: log\n    when: {command: [lsub], mailbox: [A]}\n",
        "c.yaml:4:22: LSUB names patterns, not mailboxes, so rules[0].when.mailbox would "
        "never match it",
    ),
    "unknown when key": (
        "rules:\n  - name: x\n    action: block\n    when: {comand: [DELETE]}\n",
        "c.yaml:4:12: unknown key 'comand' in rules[0].when (expected one of: client, "
        "command, direction, mailbox, user); did you mean 'command'?",
    ),
    "unknown direction": (
        "rules:\n  - name: x\n    action: log\n    when: {direction: both}\n",
        "c.yaml:4:23: unknown direction 'both' (expected one of: client, server)",
    ),
    "unknown log level": (
        "log:\n  level: verbose\n",
        "c.yaml:2:10: unknown log.level 'verbose' (expected one of: critical, debug, error, "
        "info, warning)",
    ),
    "unknown log format": (
        "log: {format: xml}\n",
        "c.yaml:1:15: unknown log.format 'xml' (expected one of: json, text)",
    ),
    "max_line too small": (
        "limits: {max_line: 100}\n",
        "c.yaml:1:20: limits.max_line must be at least 1024, got 100",
    ),
    "negative timeout": (
        "limits: {idle_timeout: -5}\n",
        "c.yaml:1:24: limits.idle_timeout must be greater than 0, got -5",
    ),
    "boolean where an integer belongs": (
        "limits: {max_sessions: yes}\n",
        "c.yaml:1:24: limits.max_sessions must be an integer, got boolean yes",
    ),
    "timeout with unit": (
        "upstream: {address: 'm:1', connect_timeout: 10s}\n",
        "c.yaml:1:45: upstream.connect_timeout must be a number, got string '10s'",
    ),
    "top level is a list": (
        "- listen\n",
        "c.yaml:1:1: top level must be a mapping (key: value), got a list",
    ),
    "two documents": (
        "listen: 'a:1'\n---\nlisten: 'b:1'\n",
        "c.yaml:2:1: YAML syntax error: but found another document "
        "(expected a single document in the stream)",
    ),
    "rules not a list": (
        "rules: {name: x}\n",
        "c.yaml:1:8: rules must be a list, got a mapping",
    ),
    "rule not a mapping": (
        "rules:\n  - audit\n",
        "c.yaml:2:5: rules[0] must be a mapping (key: value), got string 'audit'",
    ),
    "unknown metrics key": (
        "metrics: {adress: '1.2.3.4:1'}\n",
        "c.yaml:1:11: unknown key 'adress' in metrics (expected one of: address); "
        "did you mean 'address'?",
    ),
    "unknown TLS version": (
        "client_tls: {cert: cert.pem, key: key.pem, min_version: TLSv1.4}\n",
        "c.yaml:1:57: unknown client_tls.min_version 'TLSv1.4' (expected one of: TLSv1, "
        "TLSv1.1, TLSv1.2, TLSv1.3)",
    ),
    "cipher string selects nothing": (
        "client_tls: {cert: cert.pem, key: key.pem, ciphers: 'NOPE-NOTHING'}\n",
        "c.yaml:1:53: client_tls.ciphers 'NOPE-NOTHING' selects no cipher OpenSSL knows",
    ),
    "listen_tls without key": (
        "listen_tls: {cert: cert.pem}\n",
        "c.yaml:1:13: missing required key 'key' in listen_tls",
    ),
    "non-string key": (
        "rules:\n  - name: x\n    action: log\n    1: 2\n",
        "c.yaml:4:5: keys in rules[0] must be strings, got integer 1",
    ),
    "non-string glob": (
        "rules:\n  - name: x\n    action: log\n    when: {user: [42]}\n",
        "c.yaml:4:19: each entry of rules[0].when.user must be a string, got integer 42 "
        "(put it in quotes)",
    ),
    "python tag refused": (
        "listen: !!python/object:os.system 'x'\n",
        "c.yaml:1:9: listen must be a string, got a value with the unsupported tag "
        "'!!python/object:os.system'",
    ),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_error_message(cwd: Path, case: str) -> None:
    text, expected = ERRORS[case]
    path = write("c.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == expected
    assert "\n" not in str(info.value)
    assert check_config(path) == expected


def test_errors_in_rules_file_name_the_rules_file(cwd: Path) -> None:
    Path("rules").mkdir()
    write("rules/example.yaml", "- name: audit\n  action: log\n- name: x\n  action: blok\n")
    message = check_config(write("c.yaml", "rules_file: rules/example.yaml\n"))
    assert message == (
        "rules/example.yaml:4:11: unknown action 'blok' (expected one of: block, log, "
        "read_only, rewrite_mailbox, trace)"
    )


def test_rules_file_holding_a_config_is_refused(cwd: Path) -> None:
    write("r.yaml", "listen: 'a:1'\nrules: []\n")
    assert check_config(write("c.yaml", "rules_file: r.yaml\n")) == (
        "r.yaml:1:1: unknown key 'listen' in rules file (expected one of: rules)"
    )


def test_unreadable_and_invalid_utf8_files(cwd: Path) -> None:
    assert check_config(Path("missing.yaml")) == (
        "missing.yaml: cannot read file: No such file or directory"
    )
    Path("bad.yaml").write_bytes(b"listen: 'a:1'\nlog: {level: '\xff'}\n")
    assert check_config(Path("bad.yaml")) == "bad.yaml:2:15: file is not valid UTF-8"


def test_error_attributes(cwd: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write("c.yaml", "log:\n  level: loud\n"))
    error = info.value
    assert (error.file, error.line, error.col) == ("c.yaml", 2, 10)
    assert error.reason.startswith("unknown log.level 'loud'")


def test_abuse_limits_and_workers(cwd: Path) -> None:
    config = load_config(
        write(
            "c.yaml",
            "workers: 3\n"
            "limits:\n  max_sessions_per_ip: 7\n  max_sessions_per_user: 0\n"
            "  login_failures: {per_ip: 4, per_user: 2, window: 9.5}\n"
            "  auth_timeout: 12\n  max_pipelined: 64\n",
        )
    )
    assert config.workers == 3
    limits = config.limits
    assert (limits.max_sessions_per_ip, limits.max_sessions_per_user) == (7, 0)
    assert limits.login_failures == LoginFailures(4, 2, 9.5)
    assert (limits.auth_timeout, limits.max_pipelined) == (12.0, 64)
    assert load_config(write("d.yaml", "workers: auto\n")).workers >= 1
    assert Config().limits.login_failures == LoginFailures(10, 5, 300.0)
