"""RENAME and DELETE act on whole trees: what else a command on one name touches.

``RENAME Mail Foo`` moves ``Mail/Archive`` too, so a rule protecting ``Mail/Archive/*``
must see it, and with a rewrite ``Archive`` -> ``Old/Archive`` the upstream ``Old`` holds
the client's ``Archive``: ``RENAME Old Foo`` would move it to ``Foo/Archive``, where the
mapping no longer covers it. This module answers two questions about such commands, on
decoded names (INBOX upper-cased) and with the server's hierarchy delimiter:

* ``tree_scope``: the extra mailboxes and subtree prefixes a block rule's ``mailbox`` glob
  is judged against (every argument's subtree, plus every mapped folder whose upstream
  path lies under an argument's upstream name);
* ``mapping_conflict``: the mapped folder a command would carry out of (or into) its
  mapping, so the engine refuses it and names stay consistent.

With a flat namespace (no delimiter) names have no children and neither question arises.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["TREE_COMMANDS", "MappedRoot", "mapping_conflict", "tree_scope"]

TREE_COMMANDS = frozenset({"RENAME", "DELETE"})

CONFLICT_MESSAGE = "This would move or remove a mailbox mapped by policy"


@dataclass(frozen=True, slots=True)
class MappedRoot:
    """One rewrite_mailbox rule as decoded names: ``client`` is shown for ``upstream``."""

    rule: str
    client: str
    upstream: str


def canonical(name: str, delimiter: str | None) -> str:
    """INBOX is case-insensitive, as its first component only."""
    if name[:5].upper() == "INBOX" and (
        len(name) == 5 or (delimiter is not None and name[5:].startswith(delimiter))
    ):
        return "INBOX" + name[5:]
    return name


def normalised(name: str, delimiter: str | None) -> str:
    """The name a lenient server may make of it: adjacent delimiters collapsed, a trailing
    one dropped (Dovecot refuses both forms; judging them as the plain name is safe)."""
    if not delimiter or delimiter not in name:
        return name
    doubled = delimiter + delimiter
    while doubled in name:
        name = name.replace(doubled, delimiter)
    return name[: -len(delimiter)] if name.endswith(delimiter) and name != delimiter else name


def _strictly_under(name: str, ancestor: str, delimiter: str | None) -> bool:
    return bool(delimiter) and bool(ancestor) and name.startswith(ancestor + str(delimiter))


def tree_scope(
    clients: Sequence[str],
    upstreams: Sequence[str],
    roots: Sequence[MappedRoot],
    delimiter: str | None,
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(extra mailboxes, subtree prefixes) a RENAME/DELETE of ``clients`` also affects.

    ``upstreams[i]`` is the upstream name of ``clients[i]``. The prefixes end with the
    delimiter (``"Mail/"``): a glob that could match any name starting with one of them
    matches the command.
    """
    if not delimiter:
        return (), ()
    plain = [normalised(name, delimiter) for name in clients]
    upstreams = [normalised(name, delimiter) for name in upstreams]
    names = [name for name, given in zip(plain, clients, strict=True) if name != given]
    prefixes = [name + delimiter for name in plain if name]
    for root in roots:
        upstream = canonical(root.upstream, delimiter)
        if any(_strictly_under(upstream, up, delimiter) for up in upstreams):
            client = canonical(root.client, delimiter)
            names.append(client)
            prefixes.append(client + delimiter)
    return tuple(names), tuple(prefixes)


def mapping_conflict(
    command: str,
    clients: Sequence[str],
    upstreams: Sequence[str],
    roots: Sequence[MappedRoot],
    delimiter: str | None,
) -> MappedRoot | None:
    """The mapped folder a RENAME/DELETE of these names would carry away, or None.

    Refused: a name whose subtree holds a mapped folder on either side (the upstream
    parent ``Old`` of ``Old/Archive``; a client parent ``Mail`` of a mapped ``Mail/Archive``),
    and for RENAME a source or target that *is* a mapped folder (moving it out of its
    mapping, or making another folder the mapped one). Renaming folders inside a mapped
    tree (``Archive/2024`` -> ``Archive/2025``) and DELETE of the mapped folder itself stay
    allowed: the client's view and the server's stay consistent.
    """
    clients = [normalised(name, delimiter) for name in clients]
    upstreams = [normalised(name, delimiter) for name in upstreams]
    for root in roots:
        root_client = canonical(root.client, delimiter)
        root_upstream = canonical(root.upstream, delimiter)
        for client, upstream in zip(clients, upstreams, strict=True):
            if _strictly_under(root_upstream, upstream, delimiter) or _strictly_under(
                root_client, client, delimiter
            ):
                return root
            if command == "RENAME" and client == root_client:
                return root
    return None
