"""Test accounts: one type, one way to make them on the test Dovecot.

Every account is new (its mailbox empty) and has the same password, ``PASSWORD``, which
tests that check logs and traces for credentials look for.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from imapproxy.demo.dovecot import Dovecot

__all__ = ["PASSWORD", "Account", "new_account"]

PASSWORD = "pw-secret-123"  # every test account's password: must never be logged

_numbers = itertools.count(1)


@dataclass(frozen=True)
class Account:
    name: str
    password: str


def new_account(dovecot: Dovecot) -> Account:
    """A brand-new user on ``dovecot`` with an empty mailbox, valid for LOGIN right away.
    Names are ``e2e1``, ``e2e2``, ... (unique for the test run)."""
    account = Account(f"e2e{next(_numbers)}", PASSWORD)
    dovecot.add_user(account.name, account.password)
    return account
