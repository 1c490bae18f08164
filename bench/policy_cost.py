"""Per-call cost of the policy engine with 50 mixed rules vs no rules (issue 3 benchmark).

    python bench/policy_cost.py [--calls N]

Prints µs/call of ``Policy.decide`` for typical commands with 50 rules (20 log, 20 block,
10 rewrite_mailbox; conditions on command, user, mailbox and client) and with
``Policy.EMPTY``, plus ``rewrite_response`` on a LIST reply. Best of 5 runs. A session with
no rules never calls decide(); the EMPTY row is the floor of a call. Process CPU time is
measured, so other load on the machine does not inflate the figures.
"""

from __future__ import annotations

import argparse
import functools
import ipaddress
import time
import timeit

import yaml

from imapproxy.config.rulefile import parse_rules
from imapproxy.config.yamlsource import YNode
from imapproxy.policy import Policy, SessionFacts

COMMANDS = ["DELETE", "EXPUNGE", "STORE", "APPEND", "RENAME", "CREATE", "SETACL", "MOVE"]


def fifty_rules() -> str:
    lines: list[str] = []
    for i in range(20):  # log: a mix of unconditional, per user, per mailbox, per network
        when = [
            "",
            f"  when: {{user: ['audit{i}-*', '*@dept{i}.example.com']}}\n",
            f"  when: {{mailbox: ['Project{i}', 'Project{i}/*'], command: [FETCH, UID FETCH]}}\n",
            f"  when: {{client: ['10.{i}.0.0/16', 'fd00:{i}::/32']}}\n",
        ][i % 4]
        detail = "  detail: full\n" if i % 5 == 0 else ""
        lines.append(f"- name: log-{i}\n  action: log\n{detail}{when}")
    for i in range(20):  # block: command filters, users, mailboxes, networks
        when = [
            f"  when: {{command: [{COMMANDS[i % len(COMMANDS)]}], user: ['guest{i}*']}}\n",
            f"  when: {{command: [LOGIN, AUTHENTICATE], client: ['192.0.{i}.0/24']}}\n",
            f"  when: {{mailbox: ['Locked{i}', 'Locked{i}/*']}}\n",
            f"  when: {{user: ['banned{i}@*']}}\n",
        ][i % 4]
        lines.append(f"- name: block-{i}\n  action: block\n{when}")
    for i in range(10):
        lines.append(
            f"- name: rewrite-{i}\n  action: rewrite_mailbox\n"
            f"  from: 'Shared{i}'\n  to: 'Public/Team{i}/Shared'\n"
        )
    return "".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50_000)
    args = parser.parse_args()
    node = yaml.compose(fifty_rules(), Loader=yaml.SafeLoader)
    assert node is not None
    rules = parse_rules(YNode(node, "bench"))
    assert len(rules) == 50
    policy = Policy.compile(rules)
    facts = SessionFacts(ipaddress.ip_address("203.0.113.7"), "alice@example.com", "INBOX")
    commands = [
        ("NOOP", b"a1 NOOP\r\n"),
        ("UID FETCH", b"a2 UID FETCH 1:* (FLAGS)\r\n"),
        ("SELECT", b"a3 SELECT INBOX\r\n"),
        ("SELECT", b"a4 SELECT Shared3/Plans\r\n"),  # rewritten
        ("STATUS", b'a5 STATUS "Lists/python-dev" (MESSAGES UNSEEN)\r\n'),
        ("LOGIN", b"a6 LOGIN alice pw\r\n"),
    ]
    for name, variant in (("50 rules", policy), ("no rules", Policy.EMPTY)):
        for command, raw in commands:
            best = min(
                timeit.repeat(
                    functools.partial(variant.decide, facts, command, raw, True),
                    number=args.calls,
                    repeat=5,
                    timer=time.process_time,
                )
            )
            label = f"decide {command} {raw.split(b' ', 2)[-1].strip().decode()[:28]}"
            print(f"{name:9s} {label:46s} {best / args.calls * 1e6:7.2f} µs/call")
    reply = b'* LIST (\\HasNoChildren) "/" "Public/Team3/Shared/Plans"\r\n'
    best = min(timeit.repeat(lambda: policy.rewrite_response(reply), number=args.calls, repeat=5))
    print(f"{'50 rules':9s} {'rewrite_response LIST':46s} {best / args.calls * 1e6:7.2f} µs/call")


if __name__ == "__main__":
    main()
