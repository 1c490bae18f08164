"""The compiled core (``imapproxy compile``, mypyc) passes the tests the Python one passes.

A copy of the tree (what git tracks, plus files not yet added) is compiled once for the
module; the core's own tests, the hub's and every end-to-end test against Dovecot then run
in a child pytest against that copy, which checks at start-up that its core really is the
compiled one (``IMAPPROXY_EXPECT_CORE``, tests/conftest.py). The guard against a build older
than its sources and ``--clean`` are tested on the same copy, last.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from imapproxy import compiled
from tests.conftest import _under_ci

ROOT = Path(__file__).resolve().parents[1]

# What runs against the compiled copy: the compiled layers' tests, the hub (which calls the
# core on every read) and the end-to-end tests (child proxies, rules, TLS, real Dovecot).
COMPILED_RUN = (
    "tests/wire",
    "tests/session",
    "tests/policy",
    "tests/server/test_hub.py",
    "tests/server/test_hub_sessions.py",
    "tests/server/test_hub_tls.py",
    "tests/e2e",
)
BUILD_TIMEOUT = 900.0
RUN_TIMEOUT = 1200.0


def _compiler_missing() -> str | None:
    if shutil.which(os.environ.get("CC", "cc")) is None:
        return "no C compiler (apt-get install gcc libc6-dev)"
    if not Path(sysconfig.get_paths()["include"], "Python.h").exists():
        return "no Python headers (apt-get install python3-dev)"
    return None


def _copy_tree(target: Path) -> None:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if source.is_file() and not source.name.endswith((".so", ".so.new")):
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def _python(tree: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python3 ARGS`` in ``tree``, importing imapproxy from it (and so do its children)."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree), **env},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def tree() -> Iterator[Path]:
    """A compiled copy of the tree, readable by every user like a checkout (one e2e test
    runs the CLI as ``nobody``; pytest's own temporary directories are private)."""
    missing = _compiler_missing()
    if missing is not None:
        if _under_ci():
            pytest.fail(f"{missing}; CI is set, so this is an error, not a skip")
        pytest.skip(missing)
    copy = Path(tempfile.mkdtemp(prefix="imapproxy-compiled-"))
    try:
        copy.chmod(0o755)
        yield from _compiled(copy)
    finally:
        shutil.rmtree(copy, ignore_errors=True)


def _compiled(copy: Path) -> Iterator[Path]:
    _copy_tree(copy)
    built = subprocess.run(
        [sys.executable, "-m", "imapproxy", "compile"],
        cwd=copy,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    assert built.stdout.startswith("compiled:"), built.stdout
    yield copy


def _loaded(tree: Path) -> tuple[str, list[str]]:
    """What a process started in ``tree`` runs, and where its core modules came from."""
    probe = (
        "import importlib, sys\n"
        "from imapproxy import compiled\n"
        "print(compiled.running())\n"
        "for path in compiled.core_sources():\n"
        "    name = 'imapproxy.' + '.'.join(path.relative_to(compiled.PACKAGE_DIR)"
        ".with_suffix('').parts)\n"
        "    print(importlib.import_module(name).__file__)\n"
    )
    done = _python(tree, "-c", probe)
    assert done.returncode == 0, done.stderr
    running, *files = done.stdout.split()
    return running, files


def _start_up_line(tree: Path) -> str:
    """What the proxy logs at start-up about its core (event and level)."""
    done = _python(
        tree,
        "-c",
        "import logging, sys\n"
        "logging.basicConfig(stream=sys.stdout, level=logging.INFO, "
        "format='%(message)s %(levelname)s')\n"
        "from imapproxy import compiled\n"
        "compiled.log_running()\n",
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_every_core_module_is_compiled(tree: Path) -> None:
    package = tree / "imapproxy"
    assert compiled.status(package) == "compiled"
    running, files = _loaded(tree)
    assert running == "compiled"
    assert len(files) == len(compiled.core_sources(package)) > 30
    assert all(f.startswith(str(package)) and f.endswith(".so") for f in files), files
    # The layers' __init__ and everything above the core stay Python.
    assert not list((package / "server").glob("*.so"))
    assert not list((package / "wire").glob("__init__*.so"))
    assert _start_up_line(tree) == "core INFO"


def test_the_core_hub_and_end_to_end_tests_pass_compiled(tree: Path) -> None:
    done = _python(
        tree,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        *COMPILED_RUN,
        IMAPPROXY_EXPECT_CORE="compiled",
    )
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    passed = re.search(r"(\d+) passed", summary)
    assert passed is not None and int(passed.group(1)) > 1000, summary
    assert "failed" not in summary and "error" not in summary, summary


def test_a_build_older_than_its_sources_is_not_used(tree: Path) -> None:
    source = tree / "imapproxy" / "wire" / "framing.py"
    before = source.stat()
    os.utime(source, (before.st_atime, time.time() + 60))  # edited after the build
    try:
        check = _python(tree, "-m", "imapproxy", "compile", "--check")
        assert (check.returncode, check.stdout.strip()) == (1, "stale")
        running, files = _loaded(tree)
        assert running == "stale"
        assert all(f.endswith(".py") for f in files), files  # the whole core from source
        assert _start_up_line(tree) == "core_not_compiled WARNING"
    finally:
        os.utime(source, (before.st_atime, before.st_mtime))
    assert _loaded(tree)[0] == "compiled"


def test_a_build_without_its_shared_library_is_not_used(tree: Path) -> None:
    [library] = (tree / "imapproxy").glob("_core__mypyc*.so")
    aside = library.with_name("aside")
    library.rename(aside)
    try:
        check = _python(tree, "-m", "imapproxy", "compile", "--check")
        assert (check.returncode, check.stdout.strip()) == (1, "partial")
        running, files = _loaded(tree)  # rather than an ImportError in every core module
        assert running == "partial"
        assert all(f.endswith(".py") for f in files), files
    finally:
        aside.rename(library)
    assert _loaded(tree)[0] == "compiled"


def test_clean_leaves_pure_python(tree: Path) -> None:
    done = _python(tree, "-m", "imapproxy", "compile", "--clean")
    modules = len(compiled.core_sources(tree / "imapproxy")) + 1  # and the shared library
    assert done.returncode == 0 and done.stdout.startswith(f"removed {modules} "), done.stdout
    assert not list((tree / "imapproxy").rglob("*.so"))
    running, files = _loaded(tree)
    assert running == "python"
    assert all(f.endswith(".py") for f in files)
    check = _python(tree, "-m", "imapproxy", "compile", "--check")
    assert (check.returncode, check.stdout.strip()) == (1, "python")


def test_a_run_expecting_another_core_refuses_to_start() -> None:
    """The check that keeps the compiled run honest (tests/conftest.py): a run told to expect
    the core this checkout does not run stops before any test."""
    actual = compiled.running()
    other = "python" if actual == "compiled" else "compiled"
    done = _python(ROOT, "-m", "pytest", "-q", "tests/test_layout.py", IMAPPROXY_EXPECT_CORE=other)
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout + done.stderr
    assert f"the core runs {actual}, expected {other}" in done.stderr
