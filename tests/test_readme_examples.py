"""Every fenced Python block in README.md and docs/*.md runs, on the embedded default, and
prints what its ``# -> ...`` comments show (issue 15).

A block runs as a new user would run it: a fresh interpreter in the project root, no config
file, the result cache off (a cached answer would hide what the model does today) and a long
deadline (a shared 2-core machine is slow; that is not what is being tested). Each
``print(...)  # -> shown`` line must print exactly what is shown: the default model decodes
greedily, so the README shows what it really prints (issue 29). A line that differs is
first checked for its shape, token by token, which says what kind of difference it is:

- a date (``2024-05-01``) must be an ASCII date, ``^[0-9]{4}-[0-9]{2}-[0-9]{2}$``;
- a list (``['test_api.py']``) must be a list, non-empty where the one shown is, whose
  every item occurs in the block's own text (an intent's targets come from the request);
- a word (``debug``, ``yes``) must be a word the block itself offers (a kind the prompt
  lists, one of the ``Choice`` options).
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
SHOWN = re.compile(r"^print\(.*\)\s*# -> (.+)$", re.M)
DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", re.ASCII)


def blocks() -> list[tuple[str, str]]:
    out = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for n, m in enumerate(FENCE.finditer(path.read_text())):
            out.append((f"{path.relative_to(ROOT)}#{n}", m.group(1)))
    return out


def shape_errors(source: str, shown: str, printed: str) -> list[str]:
    """Where ``printed`` does not have the shape of ``shown`` (see the module docstring)."""
    try:
        shown_tokens = _tokens(shown)
        printed_tokens = _tokens(printed)
    except (ValueError, SyntaxError) as exc:
        return [f"cannot read {printed!r}: {exc}"]
    if len(shown_tokens) != len(printed_tokens):
        return [f"{printed!r} does not have the shape of {shown!r}"]
    errors = []
    for want, got in zip(shown_tokens, printed_tokens, strict=True):
        if isinstance(want, list):
            if not isinstance(got, list) or (want and not got) or not all(
                    isinstance(item, str) and item and item in source for item in got):
                errors.append(f"{got!r}: not a list of strings taken from the example")
        elif DATE.fullmatch(want):
            if not (isinstance(got, str) and DATE.fullmatch(got)):
                errors.append(f"{got!a} is not a date like {want}")
        elif not (isinstance(got, str) and re.search(rf"\b{re.escape(got)}\b", source)):
            errors.append(f"{got!r} is not one of the words the example offers")
    return errors


def _tokens(line: str) -> list[object]:
    """Words, and list literals as lists."""
    out: list[object] = []
    for m in re.finditer(r"\[[^\]]*\]|\S+", line.strip()):
        text = m.group()
        out.append(ast.literal_eval(text) if text.startswith("[") else text)
    return out


def test_readme_has_python_examples() -> None:
    names = [name for name, _ in blocks()]
    assert any(name.startswith("README.md") for name in names), names
    assert all(SHOWN.search(code) for _, code in blocks()), "every block shows its output"


@pytest.mark.parametrize(("name", "code"), blocks(), ids=[n for n, _ in blocks()])
def test_example_prints_what_it_shows(name: str, code: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STRUCTGEN_CACHE_BACKEND": "none",
           "STRUCTGEN_TIMEOUT_S": "900", "STRUCTGEN_METRICS_STATE_FILE": str(tmp_path / "m")}
    env.pop("STRUCTGEN_CONFIG", None)
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    shown = SHOWN.findall(code)
    printed = run.stdout.strip().splitlines()
    assert len(printed) == len(shown), (printed, shown)
    errors = [e for want, got in zip(shown, printed, strict=True)
              for e in shape_errors(code, want, got)]
    assert not errors, (name, printed, errors)
    assert printed == [want.strip() for want in shown], (name, printed, shown)


@pytest.mark.parametrize(("shown", "printed", "ok"), [
    ("2024-05-01", "1999-12-31", True),
    ("2024-05-01", "\U0001fbf8" * 4 + "-" + "\U0001fbf8" * 2 + "-" + "\U0001fbf8" * 2, False),
    ("debug ['test_api.py']", "debug ['tests/test_api.py']", True),
    ("debug ['test_api.py']", "debug ['app/other.py']", False),
    ("debug ['test_api.py']", "frobnicate []", False),
    ("debug ['test_api.py']", "debug []", False),
    ("debug []", "debug []", True),
    ("yes", "maybe", False),
])
def test_shape_check_can_fail(shown: str, printed: str, ok: bool) -> None:
    source = 'Choice(["yes", "no"]) "debug" "fix tests/test_api.py"'
    assert (not shape_errors(source, shown, printed)) is ok
