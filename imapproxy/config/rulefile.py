"""Rules from YAML nodes: validation with located, one-line errors.

Shape (see rules/*.yaml)::

    - name: no-mailbox-deletion      # letters, digits, '-', '_', '.'; unique
      action: block                  # block | log | rewrite_mailbox | read_only | trace
      when: {command: [DELETE]}      # optional, keys AND-ed
      message: "Deleting folders is disabled by policy"

A rules file is either that list at top level or a mapping with the single key ``rules``
(so a ``rules:`` block can be moved out of a config file verbatim).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from typing import cast

from yaml.nodes import MappingNode, ScalarNode

from imapproxy.config.yamlsource import ConfigError, YNode, closest
from imapproxy.policy.engine import LIST_COMMANDS, MAILBOX_ARGS, SELECTED_COMMANDS
from imapproxy.policy.matchers import glob_error
from imapproxy.policy.model import ACTIONS, Action, Detail, Direction, Network, Rule, When
from imapproxy.wire.commands import KNOWN_COMMANDS, is_known_command, normalise_command_name

__all__ = ["network", "parse_rules", "parse_rules_document"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_COMMON_KEYS = ("name", "action", "when")
_ACTION_KEYS: dict[str, tuple[str, ...]] = {
    "log": ("detail",),
    "block": ("message",),
    "rewrite_mailbox": ("from", "to"),
    "read_only": (),
    "trace": ("bodies",),
}
_ALL_KEYS = _COMMON_KEYS + tuple(k for keys in _ACTION_KEYS.values() for k in keys)
_WHEN_KEYS = ("command", "user", "mailbox", "client", "direction")


def parse_rules_document(node: YNode | None) -> list[Rule]:
    """A whole rules file: a list of rules, or ``{rules: [...]}``; empty means no rules."""
    if node is None or node.is_null:
        return []
    if isinstance(node.node, MappingNode):
        mapping = node.as_mapping("rules file")
        mapping.check_keys(("rules",), ("rules",))
        value = mapping.get("rules")
        assert value is not None
        return parse_rules(value)
    return parse_rules(node)


def parse_rules(node: YNode) -> list[Rule]:
    rules = [_parse_rule(item, f"rules[{i}]") for i, item in enumerate(node.as_list("rules"))]
    _check_unique(rules, node)
    return rules


def _check_unique(rules: Sequence[Rule], node: YNode) -> None:
    names: dict[str, Rule] = {}
    sources: dict[str, Rule] = {}
    targets: dict[str, Rule] = {}
    for rule in rules:
        first = names.setdefault(rule.name, rule)
        if first is not rule:
            _fail_at(rule, f"duplicate rule name {rule.name!r} (first defined at {first.location})")
        if rule.action != "rewrite_mailbox":
            continue
        assert rule.from_ is not None and rule.to is not None
        for table, value, key in ((sources, rule.from_, "from"), (targets, rule.to, "to")):
            first = table.setdefault(value, rule)
            if first is not rule:
                _fail_at(
                    rule,
                    f"rewrite_mailbox rules {first.name!r} and {rule.name!r} have the same "
                    f"'{key}' {value!r}; a name can only map one way",
                )


def _fail_at(rule: Rule, reason: str) -> None:
    file, line, col = rule.location.rsplit(":", 2)
    raise ConfigError(file, int(line), int(col), reason)


def _parse_rule(node: YNode, what: str) -> Rule:
    mapping = node.as_mapping(what)
    # Typos first: "unknown key 'acton' (did you mean 'action')" beats "missing 'action'".
    mapping.check_keys(_ALL_KEYS, ("name", "action"))
    name_node = mapping.get("name")
    action_node = mapping.get("action")
    assert name_node is not None and action_node is not None
    name = name_node.as_str(f"{what}.name")
    if not _NAME.fullmatch(name):
        name_node.fail(
            f"invalid rule name {name!r} (use up to 64 letters, digits, '-', '_' and '.', "
            "starting with a letter or digit)"
        )
    action = cast(Action, action_node.as_choice("action", ACTIONS))
    for key in mapping:
        owner = next((a for a, keys in _ACTION_KEYS.items() if key in keys), None)
        if owner is not None and owner != action:
            mapping.key_node(key).fail(f"key {key!r} is only valid for action {owner!r}")

    when_node = mapping.get("when")
    if action == "rewrite_mailbox" and "when" in mapping:
        mapping.key_node("when").fail(
            "'when' is not supported on rewrite_mailbox rules: the mapping applies to every "
            "command and response so that names stay consistent"
        )
    when = _parse_when(when_node, f"{what}.when") if when_node is not None else When()

    rule = Rule(name=name, action=action, when=when, location=node.location)
    if action == "log":
        return _log_rule(rule, mapping.get("detail"), when_node, what)
    if action == "block":
        return _block_rule(rule, mapping.get("message"), when_node, what)
    if action == "read_only":
        return _read_only_rule(rule, when_node, node, what)
    if action == "trace":
        return _trace_rule(rule, mapping.get("bodies"), when_node, what)
    return _rewrite_rule(rule, mapping.get("from"), mapping.get("to"), node, what)


def _log_rule(rule: Rule, detail_node: YNode | None, when_node: YNode | None, what: str) -> Rule:
    if rule.when.direction is not None:
        # One log line records a command together with its tagged answer: there is no
        # client-only or server-only half to pick, and ignoring the key would mislead.
        assert when_node is not None
        when_node.as_mapping(f"{what}.when").key_node("direction").fail(
            "'when.direction' is not supported on log rules: each log line records a "
            "command with its tagged answer; 'detail: full' adds the server's untagged "
            "responses"
        )
    detail: Detail = "command"
    if detail_node is not None:
        detail = cast(Detail, detail_node.as_choice("detail", ("command", "full")))
    return Rule(rule.name, rule.action, rule.when, detail=detail, location=rule.location)


def _block_rule(rule: Rule, message_node: YNode | None, when_node: YNode | None, what: str) -> Rule:
    if rule.when.direction == "server":
        assert when_node is not None
        direction = when_node.as_mapping(f"{what}.when").get("direction")
        assert direction is not None
        direction.fail("a block rule acts on client commands; 'direction: server' never matches")
    message = None
    if message_node is not None:
        message = message_node.as_str(f"{what}.message")
        if len(message) > 200 or any(not "\x20" <= ch <= "\x7e" for ch in message):
            message_node.fail(
                f"{what}.message must be at most 200 printable ASCII characters "
                "(it is sent to the client as IMAP response text)"
            )
    return Rule(rule.name, rule.action, rule.when, message=message, location=rule.location)


def _read_only_rule(rule: Rule, when_node: YNode | None, node: YNode, what: str) -> Rule:
    """``read_only`` turns SELECT into EXAMINE: it needs mailboxes, and names no commands."""
    if when_node is None or not rule.when.mailbox:
        (when_node or node).fail(
            f"{what} (action read_only) needs 'when.mailbox': the mailboxes that SELECT "
            "opens read-only (as EXAMINE)"
        )
    when = when_node.as_mapping(f"{what}.when")
    for key, reason in (
        ("command", "it always applies to SELECT (sent as EXAMINE); use a block rule for others"),
        ("direction", "it acts on the client's SELECT"),
    ):
        if key in when:
            when.key_node(key).fail(f"'when.{key}' is not supported on read_only rules: {reason}")
    return rule


def _trace_rule(rule: Rule, bodies_node: YNode | None, when_node: YNode | None, what: str) -> Rule:
    if when_node is not None:
        for key in ("command", "mailbox", "direction"):
            if key in when_node.as_mapping(f"{what}.when"):
                when_node.as_mapping(f"{what}.when").key_node(key).fail(
                    f"a trace rule records whole sessions; {what}.when.{key} does not apply "
                    "(use user and client)"
                )
    bodies: int | None = 0
    if bodies_node is not None:
        if isinstance(bodies_node.node, ScalarNode) and bodies_node.node.value == "full":
            bodies = None
        else:
            bodies = bodies_node.as_int(f"{what}.bodies", minimum=0)
    return Rule(rule.name, rule.action, rule.when, bodies=bodies, location=rule.location)


def _rewrite_rule(
    rule: Rule, from_node: YNode | None, to_node: YNode | None, node: YNode, what: str
) -> Rule:
    values: list[str] = []
    for key, value_node in (("from", from_node), ("to", to_node)):
        if value_node is None:
            node.fail(f"missing required key {key!r} in {what} (action rewrite_mailbox)")
        values.append(_mailbox_name(value_node, f"{what}.{key}"))
    source, target = values
    if source == target:
        assert to_node is not None
        to_node.fail(f"'from' and 'to' are both {source!r}; the rule would change nothing")
    return Rule(rule.name, rule.action, from_=source, to=target, location=rule.location)


def _mailbox_name(node: YNode, what: str) -> str:
    name = node.as_str(what)
    if any(ch in name for ch in "\r\n\x00"):
        node.fail(f"{what} must not contain control characters")
    if any(ch in name for ch in "*%"):
        node.fail(f"{what} must be a mailbox name, not a pattern ('*' and '%' are LIST wildcards)")
    if name.startswith("/") or name.endswith("/"):
        node.fail(f"{what} must not start or end with the hierarchy delimiter '/'")
    try:
        name.encode("utf-16-be")
    except UnicodeEncodeError:
        node.fail(f"{what} contains an unpaired surrogate")
    return name


def _parse_when(node: YNode, what: str) -> When:
    mapping = node.as_mapping(what)
    mapping.check_keys(_WHEN_KEYS)
    commands: list[str] = []
    command_nodes: dict[str, YNode] = {}
    users: list[str] = []
    mailboxes: list[str] = []
    clients: list[Network] = []
    direction: Direction | None = None
    if (value := mapping.get("command")) is not None:
        for item, text in value.as_str_list(f"{what}.command"):
            if not is_known_command(text):
                name = normalise_command_name(text)
                uid = name.startswith("UID ")  # suggest UID forms for UID forms only
                hint = closest(name, [c for c in KNOWN_COMMANDS if c.startswith("UID ") == uid])
                suffix = f"; did you mean {hint!r}?" if hint else ""
                item.fail(f"unknown IMAP command {text!r} in {what}.command{suffix}")
            name = normalise_command_name(text)
            if name not in commands:
                commands.append(name)
                command_nodes[name] = item
    for key, globs in (("user", users), ("mailbox", mailboxes)):
        if (value := mapping.get(key)) is not None:
            for item, text in value.as_str_list(f"{what}.{key}"):
                reason = glob_error(text)
                if reason is not None:
                    item.fail(f"invalid glob {text!r} in {what}.{key}: {reason}")
                globs.append(text)
    if (value := mapping.get("client")) is not None:
        for item, text in value.as_str_list(f"{what}.client"):
            clients.append(network(item, text, f"{what}.client"))
    if (value := mapping.get("direction")) is not None:
        direction = cast(Direction, value.as_choice("direction", ("client", "server")))
    for key in mapping:
        if mapping.get(key) is None:
            mapping.key_node(key).fail(f"{what}.{key} is empty; remove it or give a value")
    if mailboxes:
        # A mailbox condition on a command that involves no mailbox could never match.
        for name in commands:
            if name not in MAILBOX_ARGS and name not in SELECTED_COMMANDS:
                kind = (
                    "names patterns, not mailboxes"
                    if name in LIST_COMMANDS
                    else ("involves no mailbox")
                )
                command_nodes[name].fail(f"{name} {kind}, so {what}.mailbox would never match it")
    return When(tuple(commands), tuple(users), tuple(mailboxes), tuple(clients), direction)


def network(node: YNode, text: str, what: str) -> Network:
    """A CIDR (host bits clear) from a config entry; a located error otherwise."""
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            node.fail(f"invalid CIDR {text!r} in {what}: {exc}")
        node.fail(f"invalid CIDR {text!r} in {what}: host bits set (did you mean '{loose}'?)")
