"""Config for the PROXY protocol and the client IP: listen mappings, upstream.client_ip,
limits.proxy_header_timeout, and --listen replacing only the address."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from imapproxy.cli import _overrides, _run_parser
from imapproxy.config.loader import Address, ConfigError, Listen, TLSListen, load_config


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cert.pem").write_text("cert")
    (tmp_path / "key.pem").write_text("key")
    return tmp_path


def test_listen_string_and_mapping_forms(cwd: Path) -> None:
    config = load_config(_write("listen: '127.0.0.1:1143'\n"))
    assert config.listen == Listen(Address("127.0.0.1", 1143))
    config = load_config(
        _write(
            "listen:\n  address: '0.0.0.0:143'\n  proxy_protocol: true\n"
            "  trusted_networks: ['10.0.0.0/8', '127.0.0.1/32', '::1/128']\n"
            "listen_tls: {address: '0.0.0.0:993', cert: cert.pem, key: key.pem,"
            " proxy_protocol: true, trusted_networks: 192.0.2.0/24}\n"
            "upstream: {address: 'mail.example.com:143', client_ip: proxy_v2}\n"
            "limits: {proxy_header_timeout: 2.5}\n"
        )
    )
    nets = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "127.0.0.1/32", "::1/128"))
    assert config.listen == Listen(Address("0.0.0.0", 143), True, nets)
    assert config.listen_tls == TLSListen(
        Address("0.0.0.0", 993),
        Path("cert.pem"),
        Path("key.pem"),
        True,
        (ipaddress.ip_network("192.0.2.0/24"),),
    )
    assert config.upstream is not None and config.upstream.client_ip == "proxy_v2"
    assert config.limits.proxy_header_timeout == 2.5
    # defaults
    plain = load_config(_write("listen: {proxy_protocol: false}\nupstream: 'm:1'\n"))
    assert plain.listen == Listen()
    assert plain.upstream is not None and plain.upstream.client_ip == "none"
    assert plain.limits.proxy_header_timeout == 5.0


ERRORS = {
    "proxy without trusted networks": (
        "listen: {address: '0.0.0.0:143', proxy_protocol: true}\n",
        "c.yaml:1:34: listen.proxy_protocol needs listen.trusted_networks (the load "
        "balancers' addresses, e.g. ['10.0.0.0/8']): a PROXY header from anyone else is "
        "refused",
    ),
    "trusted networks without proxy": (
        "listen: {trusted_networks: ['10.0.0.0/8']}\n",
        "c.yaml:1:10: listen.trusted_networks has no effect without listen.proxy_protocol: true",
    ),
    "bad CIDR": (
        "listen: {proxy_protocol: true, trusted_networks: ['10.0.0.1/8']}\n",
        "c.yaml:1:51: invalid CIDR '10.0.0.1/8' in listen.trusted_networks: host bits set "
        "(did you mean '10.0.0.0/8'?)",
    ),
    "not a CIDR": (
        "listen_tls: {cert: cert.pem, key: key.pem, proxy_protocol: true,"
        " trusted_networks: [haproxy]}\n",
        "c.yaml:1:85: invalid CIDR 'haproxy' in listen_tls.trusted_networks: 'haproxy' "
        "does not appear to be an IPv4 or IPv6 network",
    ),
    "proxy_protocol not a boolean": (
        "listen: {proxy_protocol: v2, trusted_networks: ['10.0.0.0/8']}\n",
        "c.yaml:1:26: listen.proxy_protocol must be true or false, got string 'v2'",
    ),
    "unknown listen key": (
        "listen: {adress: '0.0.0.0:143'}\n",
        "c.yaml:1:10: unknown key 'adress' in listen (expected one of: address, "
        "proxy_protocol, trusted_networks); did you mean 'address'?",
    ),
    "bad listen address": (
        "listen: {address: 'nowhere'}\n",
        "c.yaml:1:19: invalid address in listen.address: expected 'host:port', got "
        "'nowhere' (the port is required)",
    ),
    "unknown client_ip": (
        "upstream: {address: 'm:1', client_ip: xforwarded}\n",
        "c.yaml:1:39: unknown upstream.client_ip 'xforwarded' (expected one of: id, none, "
        "proxy_v2)",
    ),
    "proxy header timeout zero": (
        "limits: {proxy_header_timeout: 0}\n",
        "c.yaml:1:32: limits.proxy_header_timeout must be greater than 0, got 0",
    ),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_errors_are_located(cwd: Path, case: str) -> None:
    text, expected = ERRORS[case]
    with pytest.raises(ConfigError) as info:
        load_config(_write(text))
    assert str(info.value) == expected


def test_command_line_listen_replaces_only_the_address(cwd: Path) -> None:
    config = load_config(
        _write(
            "listen: {address: '0.0.0.0:143', proxy_protocol: true, trusted_networks: '::1/128'}\n"
        )
    )
    args = _run_parser().parse_args(["--listen", "127.0.0.1:1143"])
    applied = _overrides(args)(config)
    assert applied.listen == Listen(
        Address("127.0.0.1", 1143), True, (ipaddress.ip_network("::1/128"),)
    )


def _write(text: str) -> Path:
    path = Path("c.yaml")
    path.write_text(text)
    return path
