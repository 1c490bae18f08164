"""YAML loading that keeps the file, line and column of every node.

``yaml.safe_load`` throws positions away, so config errors could only say *what* is wrong.
Here a document is *composed* with PyYAML's SafeLoader (the same safe tag set) into nodes,
and the typed accessors below turn nodes into Python values while every error carries the
node's location: ``FILE:LINE:COL: reason`` (1-based), always on one line.

Stricter than ``safe_load`` on purpose: duplicate mapping keys, non-string keys and
multi-document files are errors instead of being silently resolved.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = [
    "ConfigError",
    "Mapping",
    "YNode",
    "closest",
    "describe",
    "load_yaml",
]

_TAG = "tag:yaml.org,2002:"
# Scalars YAML turned into non-strings (143, yes, 1.5, null, 2024-01-01): quoting fixes them.
_PLAIN_TAGS = frozenset(_TAG + t for t in ("int", "float", "bool", "null", "timestamp"))


class ConfigError(ValueError):
    """A config or rules problem; ``str()`` is one line: ``FILE:LINE:COL: reason``."""

    def __init__(self, file: str, line: int | None, col: int | None, reason: str) -> None:
        self.file = file
        self.line = line
        self.col = col
        # Reasons may quote user text (YAML problems, values): keep the message one line.
        self.reason = " ".join(reason.split())
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.line is None:
            return f"{self.file}: {self.reason}"
        return f"{self.file}:{self.line}:{self.col}: {self.reason}"


def closest(word: str, choices: Collection[str]) -> str | None:
    """The choice ``word`` was probably meant to be, for "did you mean" hints."""
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return found[0] if found else None


def _quote(value: object) -> str:
    return _quote_plain(repr(value))


def _quote_plain(value: object) -> str:
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True, slots=True)
class YNode:
    """A composed node plus the name of the file it came from."""

    node: Node
    file: str

    @property
    def line(self) -> int:
        return int(self.node.start_mark.line) + 1

    @property
    def col(self) -> int:
        return int(self.node.start_mark.column) + 1

    @property
    def location(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"

    def error(self, reason: str) -> ConfigError:
        return ConfigError(self.file, self.line, self.col, reason)

    def fail(self, reason: str) -> NoReturn:
        raise self.error(reason)

    # -- scalars --------------------------------------------------------------------------

    @property
    def is_null(self) -> bool:
        return isinstance(self.node, ScalarNode) and self.node.tag == _TAG + "null"

    def scalar(self) -> object:
        """The Python value of a scalar node (only safe tags)."""
        if not isinstance(self.node, ScalarNode):
            self.fail(f"expected a single value, got {describe(self)}")
        try:
            return SafeConstructor().construct_object(self.node, deep=True)
        except ConstructorError as exc:
            raise self.error(f"invalid value: {exc.problem}") from None

    def as_str(self, what: str, *, allow_empty: bool = False) -> str:
        if not (isinstance(self.node, ScalarNode) and self.node.tag == _TAG + "str"):
            plain = isinstance(self.node, ScalarNode) and self.node.tag in _PLAIN_TAGS
            hint = " (put it in quotes)" if plain else ""
            self.fail(f"{what} must be a string, got {describe(self)}{hint}")
        value = str(self.node.value)
        if not value and not allow_empty:
            self.fail(f"{what} must not be empty")
        return value

    def as_bool(self, what: str) -> bool:
        if not (isinstance(self.node, ScalarNode) and self.node.tag == _TAG + "bool"):
            self.fail(f"{what} must be true or false, got {describe(self)}")
        return bool(self.scalar())

    def as_int(self, what: str, *, minimum: int | None = None) -> int:
        if not (isinstance(self.node, ScalarNode) and self.node.tag == _TAG + "int"):
            self.fail(f"{what} must be an integer, got {describe(self)}")
        value = self.scalar()
        assert isinstance(value, int)
        if minimum is not None and value < minimum:
            self.fail(f"{what} must be at least {minimum}, got {value}")
        return value

    def as_number(self, what: str, *, positive: bool = True) -> float:
        if not (
            isinstance(self.node, ScalarNode) and self.node.tag in (_TAG + "int", _TAG + "float")
        ):
            self.fail(f"{what} must be a number, got {describe(self)}")
        value = self.scalar()
        assert isinstance(value, int | float)
        number = float(value)
        if number != number or number in (float("inf"), float("-inf")):
            self.fail(f"{what} must be a finite number, got {value}")
        if positive and number <= 0:
            self.fail(f"{what} must be greater than 0, got {value}")
        if number < 0:
            self.fail(f"{what} must not be negative, got {value}")
        return number

    def as_choice(self, what: str, choices: Collection[str]) -> str:
        value = self.as_str(what)
        if value not in choices:
            self.fail(f"unknown {what} {value!r} (expected one of: {', '.join(sorted(choices))})")
        return value

    # -- collections ------------------------------------------------------------------------

    def as_list(self, what: str) -> list[YNode]:
        if not isinstance(self.node, SequenceNode):
            self.fail(f"{what} must be a list, got {describe(self)}")
        return [YNode(item, self.file) for item in self.node.value]

    def as_str_list(self, what: str) -> list[tuple[YNode, str]]:
        """A string or a non-empty list of strings (``command: DELETE`` reads naturally too)."""
        if isinstance(self.node, SequenceNode):
            items = self.as_list(what)
            if not items:
                self.fail(f"{what} must not be an empty list (it would never match)")
            return [(item, item.as_str(f"each entry of {what}")) for item in items]
        return [(self, self.as_str(what))]

    def as_mapping(self, what: str) -> Mapping:
        if not isinstance(self.node, MappingNode):
            self.fail(f"{what} must be a mapping (key: value), got {describe(self)}")
        # Merge keys (<<: *anchor) expand the way safe_load expands them: explicit keys win
        # over merged ones; only explicit keys may not repeat. Flatten a copy, so an
        # anchored mapping reached again through an alias still knows its own keys.
        own = {id(key) for key, _ in self.node.value if key.tag != _TAG + "merge"}
        flat = MappingNode(self.node.tag, list(self.node.value), self.node.start_mark)
        try:
            SafeConstructor().flatten_mapping(flat)
        except ConstructorError as exc:
            raise self.error(f"invalid merge key: {exc.problem}") from None
        entries: dict[str, tuple[YNode, YNode]] = {}
        explicit: set[str] = set()
        for key_node, value_node in flat.value:
            key = YNode(key_node, self.file)
            if not (isinstance(key_node, ScalarNode) and key_node.tag == _TAG + "str"):
                key.fail(f"keys in {what} must be strings, got {describe(key)}")
            name = str(key_node.value)
            if id(key_node) in own:
                if name in explicit:
                    first = entries[name][0]
                    key.fail(
                        f"duplicate key {name!r} in {what} (first defined at line {first.line})"
                    )
                explicit.add(name)
            elif name in explicit:
                continue
            entries[name] = (key, YNode(value_node, self.file))
        return Mapping(self, what, entries)


class Mapping:
    """A YAML mapping with its keys' nodes, for located key and value errors."""

    def __init__(self, node: YNode, what: str, entries: dict[str, tuple[YNode, YNode]]) -> None:
        self.node = node
        self.what = what
        self._entries = entries

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def key_node(self, key: str) -> YNode:
        return self._entries[key][0]

    def get(self, key: str) -> YNode | None:
        """The value node, or None when the key is absent *or* null."""
        entry = self._entries.get(key)
        if entry is None or entry[1].is_null:
            return None
        return entry[1]

    def check_keys(self, allowed: Collection[str], required: Collection[str] = ()) -> None:
        for key in self._entries:
            if key not in allowed:
                hint = closest(key, allowed)
                suffix = f"; did you mean {hint!r}?" if hint else ""
                self.key_node(key).fail(
                    f"unknown key {key!r} in {self.what} "
                    f"(expected one of: {', '.join(sorted(allowed))}){suffix}"
                )
        for key in required:
            if self.get(key) is None:
                self.node.fail(f"missing required key {key!r} in {self.what}")


def describe(node: YNode) -> str:
    """A short phrase for error messages: 'integer 143', 'a list', 'null'."""
    raw = node.node
    if isinstance(raw, MappingNode):
        return "a mapping"
    if isinstance(raw, SequenceNode):
        return "a list"
    tag = str(raw.tag)
    kind = {
        "null": "null",
        "bool": "boolean",
        "int": "integer",
        "float": "number",
        "str": "string",
        "timestamp": "date",
    }.get(tag.removeprefix(_TAG))
    if kind is None:
        return f"a value with the unsupported tag {tag.replace(_TAG, '!!')!r}"
    if kind == "null":
        return kind
    return f"{kind} {_quote(raw.value) if kind == 'string' else _quote_plain(raw.value)}"


def load_yaml(path: Path, file: str) -> YNode | None:
    """Compose a one-document YAML file; None when the file holds no document."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(file, None, None, f"cannot read file: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        line = before.count(b"\n") + 1
        col = exc.start - (before.rfind(b"\n") + 1) + 1
        raise ConfigError(file, line, col, "file is not valid UTF-8") from None
    try:
        # compose() keeps positions; SafeLoader resolves the same tags safe_load would.
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        reason = f"YAML syntax error: {exc.problem or exc.context}"
        if exc.context and exc.problem:
            reason += f" ({exc.context})"
        if mark is None:
            raise ConfigError(file, None, None, reason) from None
        raise ConfigError(file, mark.line + 1, mark.column + 1, reason) from None
    except yaml.YAMLError as exc:
        raise ConfigError(file, None, None, f"YAML error: {exc}") from None
    return None if node is None else YNode(node, file)
