"""`structgen bench`: its options, the script it runs and the benchmarks that script finds.
The benchmarks themselves take minutes to hours; `make bench` runs them."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import structgen.cli as cli

ROOT = Path(__file__).resolve().parents[1]
RUN_ALL = ROOT / "benchmarks" / "run_all.py"


def test_bench_help_names_quick() -> None:
    result = CliRunner().invoke(cli.app, ["bench", "--help"])
    assert result.exit_code == 0, result.output
    assert "--quick" in result.output


@pytest.mark.parametrize(("args", "forwarded"), [
    ([], []), (["--quick"], ["--quick"]),
    (["--write-results"], []), (["--quick", "--out", "OUT"], ["--quick", "--out", "OUT"])])
def test_bench_runs_run_all_with_its_options(monkeypatch: pytest.MonkeyPatch,
                                             args: list[str], forwarded: list[str]) -> None:
    """Results go to a scratch folder unless --out or --write-results says otherwise
    (committed results change only when asked: issue 29)."""
    calls: list[list[str]] = []

    def call(cmd: list[str], **kwargs: Any) -> int:
        calls.append(cmd)
        return 3

    monkeypatch.setattr(cli.subprocess, "call", call)
    result = CliRunner().invoke(cli.app, ["bench", *args])
    assert len(calls) == 1
    cmd = calls[0]
    assert cmd[:2] == [sys.executable, str(RUN_ALL)]
    if args in ([], ["--quick"]):  # a scratch folder of its own
        assert cmd[2:-2] == forwarded and cmd[-2] == "--out", cmd
        assert Path(cmd[-1]).name.startswith("structgen-bench-")
    else:
        assert cmd[2:] == forwarded, cmd
    assert result.exit_code == 3  # run_all's exit status is bench's


def test_bench_rejects_an_unknown_option() -> None:
    result = CliRunner().invoke(cli.app, ["bench", "--fast"])
    assert result.exit_code == 2


def test_every_benchmark_bench_runs_has_its_results() -> None:
    """The scripts run_all.py runs are the benchmarks in benchmarks/, and each one's
    results (``results/<name>.md`` and the ``.json`` the README table reads) are in the
    repository."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import run_all
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    names = {p.stem for p in run_all.scripts()}
    assert {"cache", "compile_mask", "embedded", "tools"} <= names, names
    assert "run_all" not in names and not any(n.startswith("_") for n in names)
    for name in sorted(names):
        for suffix in (".md", ".json"):
            assert (run_all.RESULTS / f"{name}{suffix}").is_file(), (name, suffix)
