"""Every rules/*.yaml example loads through load_config (as a `rules_file`) and does what
its comments promise."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from pathlib import Path

import pytest

from imapproxy.config.loader import load_config
from imapproxy.policy import Policy, SessionFacts, Verdict

RULES_DIR = Path(__file__).resolve().parents[2] / "rules"
EXAMPLES = sorted(p.name for p in RULES_DIR.glob("*.yaml"))


def load_example(tmp_path: Path, name: str) -> Policy:
    config_file = tmp_path / "imapproxy.yaml"
    config_file.write_text(f"upstream: 'mail.example.com:143'\nrules_file: {RULES_DIR / name}\n")
    config = load_config(config_file)
    assert config.rules, f"{name} defines no rules"
    return Policy.compile(config.rules)


def facts(
    ip: str = "203.0.113.5", user: str | None = None, selected: str | None = None
) -> SessionFacts:
    return SessionFacts(ipaddress.ip_address(ip), user, selected)


def check_audit(policy: Policy) -> None:
    plain = policy.decide(facts(user="alice"), "NOOP", b"a NOOP\r\n", True)
    assert plain == Verdict(None, None, "command", (("audit-everything", "log"),))
    suspect = policy.decide(facts(user="Contractor-7"), "FETCH", b"a FETCH 1 FLAGS\r\n", True)
    assert suspect.log == "full" and suspect.block is None
    management = policy.decide(facts(ip="10.20.3.4"), "NOOP", b"a NOOP\r\n", True)
    assert management.log == "full"


def check_read_only_archive(policy: Policy) -> None:
    in_archive = facts(selected="Archive/2023")
    for command, raw, f in [
        ("UID STORE", b"a UID STORE 1 +FLAGS (\\Deleted)\r\n", in_archive),
        ("EXPUNGE", b"a EXPUNGE\r\n", in_archive),
        ("MOVE", b"a MOVE 1 INBOX\r\n", in_archive),
        ("APPEND", b"a APPEND Archive {10}\r\n", facts()),
        ("COPY", b"a COPY 1 Archive/2023\r\n", facts(selected="INBOX")),
        ("DELETE", b"a DELETE Archive\r\n", facts()),
        ("RENAME", b"a RENAME Drafts Archive/Drafts\r\n", facts()),
    ]:
        verdict = policy.decide(f, command, raw, command != "APPEND")
        assert verdict.block == ("archive-read-only", "The Archive folders are read-only"), raw
    # the server enforces it: SELECT goes upstream as EXAMINE (so no \\Seen, no expunge)
    for raw in (
        b"a SELECT Archive\r\n",
        b'a SELECT "Archive/2023"\r\n',
        b"a SELECT {7}\r\nArchive\r\n",
    ):
        selected = policy.decide(facts(), "SELECT", raw, True)
        assert selected.block is None and selected.rewritten == raw.replace(b"SELECT", b"EXAMINE")
    assert policy.decide(facts(), "SELECT", b"a SELECT Archives\r\n", True).rewritten is None
    # CLOSE is left to the server: on an EXAMINEd folder it expunges nothing
    assert policy.decide(in_archive, "CLOSE", b"a CLOSE\r\n", True).block is None
    for command, raw, f in [
        ("FETCH", b"a FETCH 1 BODY[]\r\n", in_archive),
        ("COPY", b"a COPY 1 INBOX\r\n", in_archive),  # copying out is reading
        ("STORE", b"a STORE 1 +FLAGS (\\Seen)\r\n", facts(selected="Archives")),
        ("DELETE", b"a DELETE Archives\r\n", facts()),
    ]:
        assert policy.decide(f, command, raw, True).block is None, raw


def check_block_deletes(policy: Policy) -> None:
    def blocked(command: str, raw: bytes, f: SessionFacts) -> str | None:
        verdict = policy.decide(f, command, raw, True)
        return verdict.block[0] if verdict.block else None

    assert blocked("DELETE", b"a DELETE Trash\r\n", facts()) == "no-folder-deletion"
    assert blocked("CLOSE", b"a CLOSE\r\n", facts(user="team-sales")) == (
        "no-expunge-on-team-accounts"
    )
    assert blocked("CLOSE", b"a CLOSE\r\n", facts(user="alice")) is None
    assert blocked("LOGIN", b"a LOGIN {5}\r\ntest9 {2}\r\npw\r\n", facts()) == "deny-test-accounts"
    assert blocked("LOGIN", b"a LOGIN alice pw\r\n", facts()) is None
    assert blocked("LOGIN", b"a LOGIN alice pw\r\n", facts(ip="192.0.2.44")) == (
        "deny-logins-from-blocked-networks"
    )
    assert blocked("AUTHENTICATE", b"", facts(ip="2001:db8::1", user="alice")) == (
        "deny-logins-from-blocked-networks"
    )


def check_rewrite_shared_prefix(policy: Policy) -> None:
    def upstream(raw: bytes) -> bytes | None:
        return policy.decide(facts(), "SELECT", raw, True).rewritten

    assert upstream(b"a SELECT Team/Plans\r\n") == b"a SELECT Shared/Team/Plans\r\n"
    assert upstream(b"a SELECT Archive\r\n") == b"a SELECT Old/Archive\r\n"
    assert upstream(b"a SELECT Teams\r\n") is None
    assert policy.rewrite_response(b'* LIST () "/" Shared/Team/Plans\r\n') == (
        b'* LIST () "/" Team/Plans\r\n'
    )
    assert policy.rewrite_response(b'* LIST () "/" Shared/Other\r\n') is None
    assert policy.decide(facts(), "SELECT", b"a SELECT Shared/Team\r\n", True).block is not None


CHECKS: dict[str, Callable[[Policy], None]] = {
    "audit.yaml": check_audit,
    "read-only-archive.yaml": check_read_only_archive,
    "block-deletes.yaml": check_block_deletes,
    "rewrite-shared-prefix.yaml": check_rewrite_shared_prefix,
}


def test_every_example_has_a_behaviour_check() -> None:
    assert sorted(CHECKS) == EXAMPLES


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_loads_and_behaves(tmp_path: Path, name: str) -> None:
    CHECKS[name](load_example(tmp_path, name))


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_is_commented(name: str) -> None:
    text = (RULES_DIR / name).read_text()
    assert text.startswith("#") and "rules_file" in text
