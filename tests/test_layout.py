"""The package's shape, measured: module and class sizes, and imports only downwards.

Both are read from the source with ``ast`` (nothing is imported), so a module too large or
an import from a layer above fails here whatever the test run covers. Run this file as a
script to print the largest modules and classes: ``python3 -m tests.test_layout``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "imapproxy"

MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 250

# The layers, lowest first: a module may import from its own layer and the ones before it,
# never from one after it (README, design notes, "Layout"). ``session`` sits below
# ``policy``: it declares the protocols the policy implements (session/settings.py), so the
# policy may name the session's types and the session never the policy's. ``telemetry``
# observes the session's notes; ``net`` logs through telemetry and reads config types;
# ``server`` runs it all; the entry points (``cli``, ``__main__``) sit on top.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("wire",),
    ("session",),
    ("policy",),
    ("config",),
    ("telemetry",),
    ("net",),
    ("inspect",),
    ("server",),
    ("demo",),
    ("cli", "__main__", "__init__", "compiled"),
)
_RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _modules(package: Path) -> list[Path]:
    return sorted(package.rglob("*.py"))


def _layer(package: Path, path: Path) -> str:
    """The layer a module belongs to: its top-level folder, or its own name at the top."""
    parts = path.relative_to(package).parts
    return parts[0] if len(parts) > 1 else Path(parts[0]).stem


@dataclass(frozen=True)
class Size:
    what: str  # module path, or module path:Class
    lines: int


def module_sizes(package: Path = PACKAGE) -> list[Size]:
    root = package.parent
    return [
        Size(str(p.relative_to(root)), len(p.read_text().splitlines())) for p in _modules(package)
    ]


def class_sizes(package: Path = PACKAGE) -> list[Size]:
    """Every class, nested ones too, from its first line (decorators included) to its last."""
    sizes = []
    for path in _modules(package):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                assert node.end_lineno is not None
                where = f"{path.relative_to(package.parent)}:{node.name}"
                sizes.append(Size(where, node.end_lineno - first + 1))
    return sizes


def imported_modules(package: Path, path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import of the package in ``path``, relative
    imports resolved, those under ``if TYPE_CHECKING:`` included (a type is a dependency
    too). ``from imapproxy.wire import grammar`` counts as an import of ``imapproxy.wire``."""
    # The package ``path`` is in (for an __init__.py, the package it initialises).
    parent = [package.name, *path.relative_to(package).parts[:-1]]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = parent[: len(parent) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module == package.name:  # from imapproxy import session, __version__
                found += [(node.lineno, _from_top(package, alias.name)) for alias in node.names]
            else:
                found.append((node.lineno, module))
    top = package.name
    return [(line, m) for line, m in found if m == top or m.startswith(top + ".")]


def _from_top(package: Path, name: str) -> str:
    """What ``from imapproxy import name`` imports: a layer, or a name of the package."""
    is_module = (package / name).is_dir() or (package / f"{name}.py").is_file()
    return f"{package.name}.{name}" if is_module else package.name


def upward_imports(package: Path = PACKAGE) -> list[str]:
    """Every import of a module in a higher layer than the importer's, as text."""
    bad = []
    for path in _modules(package):
        own = _layer(package, path)
        assert own in _RANK, f"{path}: layer {own!r} is not in LAYERS"
        for line, module in imported_modules(package, path):
            parts = module.split(".")
            if len(parts) < 2:
                continue  # the package itself: only the entry points import it
            target = parts[1]
            assert target in _RANK, f"{path}:{line}: layer {target!r} is not in LAYERS"
            if _RANK[target] > _RANK[own]:
                where = path.relative_to(package.parent)
                bad.append(f"{where}:{line}: {own} imports {module}")
    return bad


def test_no_module_is_over_the_line_limit() -> None:
    over = [s for s in module_sizes() if s.lines > MAX_MODULE_LINES]
    assert over == [], f"modules over {MAX_MODULE_LINES} lines: split them along a seam"


def test_no_class_is_over_the_line_limit() -> None:
    over = [s for s in class_sizes() if s.lines > MAX_CLASS_LINES]
    assert over == [], f"classes over {MAX_CLASS_LINES} lines: split them along a seam"


def test_imports_only_go_downwards() -> None:
    assert upward_imports() == []


def _tree(tmp_path: Path, where: str, source: str) -> Path:
    package = tmp_path / "imapproxy"
    for layer in ("wire", "session", "policy", "telemetry", "net", "server"):
        (package / layer).mkdir(parents=True)
        (package / layer / "__init__.py").write_text("")
    (package / where).write_text(source)
    return package


@pytest.mark.parametrize(
    ("where", "source", "upward"),
    [
        ("session/x.py", "from imapproxy.policy.mailboxes import decode_mailbox\n", True),
        ("session/x.py", "from ..policy import mailboxes\n", True),
        ("session/__init__.py", "from ..policy.engine import Policy\n", True),
        ("net/x.py", "if TYPE_CHECKING:\n    from imapproxy.server.driver import D\n", True),
        ("telemetry/x.py", "import imapproxy.server.runtime\n", True),
        ("wire/x.py", "from imapproxy import session\n", True),
        ("session/x.py", "from imapproxy.wire import grammar\n", False),
        ("session/x.py", "from .held import HeldCommand\n", False),
        ("session/__init__.py", "from .core import Session\n", False),
        ("telemetry/x.py", "from imapproxy.session.output import Note\n", False),
        ("cli.py", "from imapproxy.server.listener import Proxy\n", False),
    ],
)
def test_the_import_check_catches_upward_imports(
    tmp_path: Path, where: str, source: str, upward: bool
) -> None:
    # The check itself, on a throwaway tree: it must see the case that was there (session
    # importing policy.mailboxes) in each spelling, and let downward imports pass.
    assert bool(upward_imports(_tree(tmp_path, where, source))) is upward


def test_the_size_check_counts_a_class_from_its_decorator_to_its_end(tmp_path: Path) -> None:
    source = "@decorated\nclass A:\n    x = 1\n\n    class B:\n        pass\n"
    package = _tree(tmp_path, "wire/m.py", source)
    assert class_sizes(package) == [
        Size("imapproxy/wire/m.py:A", 6),
        Size("imapproxy/wire/m.py:B", 2),
    ]
    assert Size("imapproxy/wire/m.py", 6) in module_sizes(package)


def main() -> None:
    top = 8
    print(f"largest modules (limit {MAX_MODULE_LINES}):")
    for s in sorted(module_sizes(), key=lambda s: -s.lines)[:top]:
        print(f"  {s.lines:5}  {s.what}")
    print(f"largest classes (limit {MAX_CLASS_LINES}):")
    for s in sorted(class_sizes(), key=lambda s: -s.lines)[:top]:
        print(f"  {s.lines:5}  {s.what}")
    for line in upward_imports():
        print("upward import:", line)


if __name__ == "__main__":
    main()
