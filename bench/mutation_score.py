"""Mutation score per module from a finished ``mutmut run``, equivalents excluded.

Usage (from the repository root, after ``mutmut run``)::

    python bench/mutation_score.py            # per-module table and the total
    python bench/mutation_score.py --survivors  # also list what still needs a test

Reads mutmut's result files (``mutants/**/*.py.meta``) and the equivalent mutants listed in
``CONTRIBUTING.md`` (backquoted names under "Equivalent mutants"). Caught = killed, timed
out or caught by the type checker; "no tests" counts as not caught.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CAUGHT = {1, 3, 24, -24, 36, 37, 152, 255}
SURVIVED = {0}
NO_TESTS = {5, 33}
_NAME = re.compile(r"`(imapproxy\.[^`]+__mutmut_\d+)`")


def equivalents(contributing: Path) -> set[str]:
    """Mutant names listed under the "Equivalent mutants" heading of CONTRIBUTING.md."""
    text = contributing.read_text(encoding="utf-8")
    start = text.find("## Equivalent mutants")
    if start < 0:
        return set()
    end = text.find("\n## ", start + 1)
    return set(_NAME.findall(text[start : end if end > 0 else len(text)]))


def results(mutants: Path) -> dict[str, int | None]:
    codes: dict[str, int | None] = {}
    for meta in sorted(mutants.glob("imapproxy/**/*.py.meta")):
        codes.update(json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"])
    return codes


def module_of(name: str) -> str:
    return ".".join(name.split(".")[:2])  # imapproxy.wire, imapproxy.session, ...


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--survivors", action="store_true", help="list non-equivalent survivors")
    args = parser.parse_args()
    codes = results(ROOT / "mutants")
    excluded = equivalents(ROOT / "CONTRIBUTING.md")
    rows: dict[str, Counter[str]] = {}
    open_survivors: list[str] = []
    for name, code in sorted(codes.items()):
        row = rows.setdefault(module_of(name), Counter())
        row["total"] += 1
        if code is None:
            row["unchecked"] += 1
        elif name in excluded and code not in CAUGHT:
            row["equivalent"] += 1
        elif code in CAUGHT:
            row["caught"] += 1
        else:
            row["no tests" if code in NO_TESTS else "survived"] += 1
            open_survivors.append(name)
    total: Counter[str] = Counter()
    print(f"{'module':<20}{'total':>7}{'caught':>8}{'surv.':>7}{'equiv.':>8}{'unchk.':>8}  score")
    for module, row in sorted(rows.items()):
        total.update(row)
        print(_line(module, row))
    print(_line("all", total))
    if args.survivors:
        for name in open_survivors:
            print(name)


def _line(label: str, row: Counter[str]) -> str:
    judged = row["total"] - row["equivalent"] - row["unchecked"]
    score = f"{100 * row['caught'] / judged:.1f}%" if judged else "-"
    survived = row["survived"] + row["no tests"]
    return (
        f"{label:<20}{row['total']:>7}{row['caught']:>8}{survived:>7}"
        f"{row['equivalent']:>8}{row['unchecked']:>8}  {score}"
    )


if __name__ == "__main__":
    main()
