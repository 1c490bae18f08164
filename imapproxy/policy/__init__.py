"""Rules: the model the config loader builds and the compiled engine the session consults."""

from imapproxy.policy.model import ACTIONS, Rule, When

__all__ = ["ACTIONS", "Rule", "When"]
