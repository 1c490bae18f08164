"""The configuration reference (``docs/configuration.md``), rendered from the schema.

``imapproxy config-schema`` prints it; a test fails when the committed file differs, so
the reference cannot drift from what the loader accepts.
"""

from __future__ import annotations

from dataclasses import MISSING, fields
from pathlib import Path

from imapproxy.config.model import Address
from imapproxy.config.schema import ABSENT, TOP, Section

_TITLE = """# Configuration reference

Generated from `imapproxy/config/schema.py` by `imapproxy config-schema`; do not edit.
`systemd/imapproxy.yaml` is a commented example; `imapproxy check --config FILE` validates one.

Every key is checked: unknown keys (with a "did you mean"), wrong types, values out of range
and keys that would have no effect are errors located as `FILE:LINE:COL: reason`, and the
proxy refuses to start on them. Relative paths resolve against the config file's directory.
A section set to null means its defaults.
"""


def render() -> str:
    """The whole reference as Markdown (ends with one newline)."""
    parts = [_TITLE]
    _section(TOP, "", parts)
    return "\n".join(parts).rstrip("\n") + "\n"


def _section(section: Section, dotted: str, parts: list[str]) -> None:
    title = dotted or "Top level"
    parts.append(f"## `{title}`\n" if dotted else f"## {title}\n")
    parts.append(section.help + "\n")
    defaults = _defaults(section)
    parts.append("| key | type | default | meaning |")
    parts.append("|---|---|---|---|")
    for key in section.keys:
        default = "required" if key.required else defaults.get(key.name, "")
        cells = (f"`{key.name}`", key.kind, default or "null", key.help)
        parts.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    parts.append("")
    for note in section.notes:
        parts.append(f"- {note}")
    if section.notes:
        parts.append("")
    for key in section.keys:
        if key.section is not None:
            _section(key.section, f"{dotted}.{key.name}" if dotted else key.name, parts)


def _defaults(section: Section) -> dict[str, str]:
    """Each key's default as it would be written in the file."""
    result: dict[str, str] = {}
    by_name = {f.name: f for f in fields(section.model)}  # type: ignore[arg-type]
    for key in section.keys:
        if key.section is not None:
            result[key.name] = "see below"
            continue
        if key.fallback is not ABSENT:
            result[key.name] = _show(key.fallback)
            continue
        f = by_name.get(key.name)
        if f is None:
            continue
        if f.default is not MISSING:
            result[key.name] = _show(f.default)
        elif f.default_factory is not MISSING:
            result[key.name] = _show(f.default_factory())
    return result


def _show(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, Address | Path):
        return f"`{value}`"
    if isinstance(value, tuple):
        return "`[]`" if not value else f"`{list(value)}`"
    return f"`{value}`"
