"""Rules: the model the config loader builds and the compiled engine the session consults.

Semantics are documented in ``imapproxy.policy.engine``.
"""

from imapproxy.policy.engine import Policy, SessionFacts, Verdict
from imapproxy.policy.mailboxes import decode_mailbox, decode_mutf7, encode_mutf7
from imapproxy.policy.model import ACTIONS, Rule, When

__all__ = [
    "ACTIONS",
    "Policy",
    "Rule",
    "SessionFacts",
    "Verdict",
    "When",
    "decode_mailbox",
    "decode_mutf7",
    "encode_mutf7",
]
