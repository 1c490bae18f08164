"""The compiled core: ``imapproxy compile`` builds the sans-I/O layers with mypyc.

The wire, session and policy layers (``CORE_LAYERS``, their ``__init__`` modules aside) are
plain Python that ``mypy --strict`` accepts, which is what mypyc compiles to C. Built in
place, each source gets an extension module beside it (``wire/framing.py`` →
``wire/framing.cpython-311-….so``) and the group shares one library,
``imapproxy/_core__mypyc….so``. Python's import system prefers an extension over a source
of the same name, so a built tree runs compiled and deleting the extensions (``--clean``)
makes it pure Python again: the sources stay the fallback, and stay what tests and mypy read.

Contract:

* Compiled or not, the core behaves the same; the test suite runs against both
  (``tests/test_compiled.py`` builds a copy of the tree and runs the core's and the
  end-to-end tests against it).
* Compiled code that is older than its source is never used: ``guard`` (run by
  ``imapproxy/__init__``) sees any core source newer than its extension and then loads the
  whole core from source, so an upgraded checkout cannot run last week's parser against this
  week's driver. ``status`` says ``stale`` and the proxy logs it at start-up.
* The core is compiled all or nothing: its modules call each other natively through the one
  shared library, so a partial build (``partial``) is treated like a stale one.

Building needs a C compiler and Python's headers (Debian: ``gcc libc6-dev python3-dev``)
and mypy with setuptools (``pip install 'imapproxy[compiled]'``).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Literal

__all__ = [
    "CORE_LAYERS",
    "build",
    "clean",
    "core_sources",
    "guard",
    "log_running",
    "main",
    "running",
    "status",
]

PACKAGE_DIR = Path(__file__).resolve().parent
CORE_LAYERS = ("wire", "session", "policy")
GROUP = "imapproxy._core"  # the shared library: imapproxy/_core__mypyc.<suffix>
_SUFFIXES = tuple(importlib.machinery.EXTENSION_SUFFIXES)

Status = Literal["compiled", "python", "stale", "partial"]


def core_sources(package_dir: Path = PACKAGE_DIR) -> list[Path]:
    """The core's sources, the ones mypyc compiles (``__init__`` modules stay Python: they
    only name their layer, and a compiled package ``__init__`` breaks its submodules'
    import)."""
    return sorted(
        path
        for layer in CORE_LAYERS
        for path in (package_dir / layer).glob("*.py")
        if path.name != "__init__.py"
    )


def _extensions(source: Path) -> list[Path]:
    candidates = (source.with_name(source.stem + suffix) for suffix in _SUFFIXES)
    return [path for path in candidates if path.exists()]


def _shared_libraries(package_dir: Path) -> list[Path]:
    return [p for p in package_dir.glob("_core__mypyc*") if p.name.endswith(_SUFFIXES)]


def _all_extensions(package_dir: Path) -> list[Path]:
    found = [ext for source in core_sources(package_dir) for ext in _extensions(source)]
    return found + _shared_libraries(package_dir)


def status(package_dir: Path = PACKAGE_DIR) -> Status:
    """What the tree at ``package_dir`` holds: ``compiled`` (every core source has an
    extension at least as new as itself), ``python`` (none has), ``stale`` (some extension is
    older than its source) or ``partial`` (some sources have none, or the shared library
    the compiled modules load is missing)."""
    sources = core_sources(package_dir)
    built = [(source, _extensions(source)) for source in sources]
    have = [(source, exts) for source, exts in built if exts]
    if not have:
        return "python"
    for source, exts in have:
        if min(ext.stat().st_mtime for ext in exts) < source.stat().st_mtime:
            return "stale"
    whole = len(have) == len(sources) and _shared_libraries(package_dir)
    return "compiled" if whole else "partial"


def running() -> Status:
    """What this process runs: ``compiled`` when the core was loaded from extensions (the
    session core stands for the group: it is all or nothing), else the tree's ``status``
    that made ``guard`` load it from source (``python``, ``stale`` or ``partial``)."""
    loaded = importlib.import_module("imapproxy.session.core").__file__ or ""
    if loaded.endswith(_SUFFIXES):
        return "compiled"
    tree = status()
    return "python" if tree == "compiled" else tree


def log_running() -> None:
    """The start-up line saying what the core runs (``core``), or a warning when a build is
    there but not used (``core_not_compiled``)."""
    from imapproxy.telemetry.logs import log_event  # not at import: guard() runs first

    core = running()
    log = logging.getLogger("imapproxy")
    if core in ("compiled", "python"):
        log_event(log, "core", running=core)
    else:  # a build older than the sources, or half of one: the sources run instead
        log_event(
            log,
            "core_not_compiled",
            tree=core,
            detail="the compiled core does not match its sources and is not used; "
            "run 'imapproxy compile' again (or --clean)",
            level=logging.WARNING,
        )


class _SourceFirst(importlib.abc.MetaPathFinder):
    """Loads the core's modules from their sources, whatever extension lies beside them."""

    def __init__(self, sources: dict[str, Path]) -> None:
        self._sources = sources

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        source = self._sources.get(fullname)
        if source is None:
            return None
        return importlib.util.spec_from_file_location(fullname, source)


def guard(package_dir: Path = PACKAGE_DIR) -> None:
    """Before any core module is imported: unless the tree is ``compiled`` or ``python``,
    load the core from source (module docstring). Costs a ``stat`` per core file."""
    if status(package_dir) in ("compiled", "python"):
        return
    sources = {
        "imapproxy." + ".".join(path.relative_to(package_dir).with_suffix("").parts): path
        for path in core_sources(package_dir)
    }
    sys.meta_path.insert(0, _SourceFirst(sources))


def clean(package_dir: Path = PACKAGE_DIR) -> int:
    """Delete the core's extensions (the tree is pure Python again); how many were."""
    found = _all_extensions(package_dir)
    for ext in found:
        ext.unlink()
    return len(found)


def build(package_dir: Path = PACKAGE_DIR) -> None:
    """Compile the core and put the extensions beside its sources, replacing an earlier
    build. Raises ``SystemExit`` with one line when mypy, setuptools or the C compiler is
    missing or fails."""
    try:
        from mypyc.build import mypycify
        from setuptools import setup  # type: ignore[import-untyped,unused-ignore]
    except ImportError as exc:
        raise SystemExit(
            f"imapproxy compile: {exc.name} is missing: pip install 'imapproxy[compiled]'"
        ) from None
    sources = [str(path) for path in core_sources(package_dir)]
    here = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="imapproxy-compile-") as work:
        # Built in a scratch directory (mypy's cache, the C files, setuptools' temp files),
        # away from any pyproject.toml setuptools would read; mypy names the modules from
        # the sources' package directories.
        os.chdir(work)
        try:
            extensions = mypycify(sources, opt_level="3", group_name=GROUP, target_dir="c")
            setup(
                name="imapproxy-core",
                ext_modules=extensions,
                script_args=["-q", "build_ext", "--build-lib", "lib", "--build-temp", "tmp"],
            )
        except SystemExit as exc:  # how setuptools reports a compiler failure
            raise SystemExit(f"imapproxy compile: the build failed ({exc})") from None
        finally:
            os.chdir(here)
        clean(package_dir)
        built = Path(work, "lib", package_dir.name)
        for ext in sorted(built.rglob("*")):
            if ext.name.endswith(_SUFFIXES):
                _install(ext, package_dir / ext.relative_to(built))


def _install(ext: Path, target: Path) -> None:
    # A running proxy has the old library mapped: replace the file, never write into it.
    partial = target.with_name(target.name + ".new")
    shutil.copyfile(ext, partial)
    os.replace(partial, target)


def main(argv: Sequence[str]) -> int:
    """``imapproxy compile [--clean | --check]``."""
    p = argparse.ArgumentParser(
        prog="imapproxy compile",
        description="Compile the parsers, session and policy with mypyc (in place), remove "
        "the compiled modules again (--clean), or say which the tree holds (--check).",
    )
    what = p.add_mutually_exclusive_group()
    what.add_argument("--clean", action="store_true", help="back to pure Python")
    what.add_argument(
        "--check",
        action="store_true",
        help="print compiled/python/stale/partial; exit 1 unless compiled",
    )
    args = p.parse_args(argv)
    if args.check:
        tree = status()
        print(tree)
        return 0 if tree == "compiled" else 1
    if args.clean:
        print(f"removed {clean()} compiled modules from {PACKAGE_DIR}")
        return 0
    build()
    tree = status()
    print(f"{tree}: {len(core_sources())} modules in {PACKAGE_DIR}")
    return 0 if tree == "compiled" else 1
