"""The schema is the one place a key is declared: the loader, the dataclasses and the
committed reference (docs/configuration.md) must all agree with it."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from imapproxy import cli
from imapproxy.config.reference import render
from imapproxy.config.schema import SECTIONS, TOP, Section

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"

# Dataclass fields the file does not set: filled in by the loader or the command line.
NOT_FROM_FILE = {("top level", "source"), ("control", "required")}


def test_committed_reference_is_up_to_date() -> None:
    assert DOC.read_text() == render(), (
        "docs/configuration.md is out of date with imapproxy/config/schema.py; regenerate it "
        "with: python3 -m imapproxy config-schema > docs/configuration.md"
    )


def test_config_schema_command_prints_the_reference(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["config-schema"]) == 0
    assert capsys.readouterr().out == render()


def test_config_schema_as_a_process() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "imapproxy", "config-schema"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert out == DOC.read_text()


@pytest.mark.parametrize("section", (TOP, *SECTIONS), ids=lambda s: s.name)
def test_every_key_is_a_field_and_every_field_a_key(section: Section) -> None:
    keys = {key.name for key in section.keys}
    names = {f.name for f in fields(section.model)}  # type: ignore[arg-type]
    from_file = {n for n in names if (section.name, n) not in NOT_FROM_FILE}
    assert keys - {"rules_file"} == from_file  # rules_file fills `rules`


def test_every_key_is_documented() -> None:
    text = render()
    for section in SECTIONS:
        assert f"## `{section.name}`" in text
        for key in section.keys:
            assert f"| `{key.name}` |" in text
            assert key.help


def test_nested_sections_are_listed() -> None:
    nested = {key.section.name for s in (TOP, *SECTIONS) for key in s.keys if key.section}
    assert nested == {s.name for s in SECTIONS}
