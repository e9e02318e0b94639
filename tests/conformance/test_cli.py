"""`structgen check` end to end on a small folder of real files."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from structgen.cli import app

ROWS = [
    {"id": "a", "schema": {"type": "object", "properties": {"n": {"type": "integer"}},
                           "required": ["n"]},
     "tests": [{"data": {"n": 1}, "valid": True}, {"data": {"n": "x"}, "valid": False}]},
    {"id": "b", "schema": {"type": "string", "format": "email"},
     "tests": [{"data": "a@b.io", "valid": True}, {"data": "nope", "valid": False}]},
    {"id": "c", "schema": {"type": "string"}, "tests": []},  # no tests: skipped
    {"id": "d", "schema": {"type": "object", "properties": {"a": {"type": "integer"}},
                           "dependentRequired": {"a": ["b"]}},
     "tests": [{"data": {"a": 1, "b": 2}, "valid": True}, {"data": {"a": 1}, "valid": False}]},
]
SUITE = [{"description": "minimum", "schema": {"minimum": 3},
          "tests": [{"description": "ok", "data": 3, "valid": True},
                    {"description": "low", "data": 2, "valid": False}]}]


@pytest.mark.slow
def test_check_writes_json_and_report(tmp_path: Path) -> None:
    with gzip.open(tmp_path / "mini.jsonl.gz", "wt") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in ROWS)
    (tmp_path / "minimum.json").write_text(json.dumps(SUITE))
    out_json, out_md = tmp_path / "out.json", tmp_path / "out.md"
    res = CliRunner().invoke(app, ["check", str(tmp_path), "--jobs", "2", "--timeout-s", "60",
                                   "--json", str(out_json), "--report", str(out_md)])
    assert res.exit_code == 0, res.output
    assert "4/4 schemas passing" in res.output and "as JSON 4/4" in res.output
    figures = json.loads(out_json.read_text())
    assert set(figures["splits"]) == {"mini", "minimum"}
    for fig in (*figures["splits"].values(), figures["total"]):
        assert {"schemas", "passing", "compile_errors", "timeouts", "too_strict",
                "false_accepts", "passing_as_json", "too_strict_as_json"} <= set(fig)
    assert figures["splits"]["mini"]["schemas"] == 3
    assert figures["total"]["false_accepts"] == 0
    assert "| mini |" in out_md.read_text()


@pytest.mark.slow
def test_check_reports_compile_errors_and_bad_paths(tmp_path: Path) -> None:
    rows = [{"id": "bad", "schema": {"$ref": "#/nowhere"},
             "tests": [{"data": 1, "valid": True}]}]
    (tmp_path / "bad.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    out_json = tmp_path / "o.json"
    res = CliRunner().invoke(app, ["check", str(tmp_path / "bad.jsonl"), "--json",
                                   str(out_json)])
    assert res.exit_code == 0, res.output
    assert json.loads(out_json.read_text())["total"]["compile_errors"] == 1
    res = CliRunner().invoke(app, ["check", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "no such file" in res.output


def test_check_skips_files_that_are_not_test_files(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A previous run's --json output in the checked folder is skipped with a note (it
    stopped the run before); --limit counts schemas that have tests; a first run says it
    is reading the tokenizer (issue 29)."""
    import structgen.tools.conformance as cf

    monkeypatch.setattr(cf, "TOKENIZER_CACHE", tmp_path / "tokenizers")
    cf.smollm_tokenizer.cache_clear()
    (tmp_path / "suite").mkdir()
    # the first group has no tests: --limit 1 must still check one schema
    groups = [{"description": "untested", "schema": {"type": "string"}, "tests": []}, *SUITE]
    (tmp_path / "suite" / "minimum.json").write_text(json.dumps(groups))
    (tmp_path / "suite" / "out.json").write_text(json.dumps({"total": {"schemas": 1}}))
    res = CliRunner().invoke(app, ["check", str(tmp_path / "suite"), "--limit", "1"])
    assert res.exit_code == 0, res.output
    assert "note: skipping" in res.stderr and "out.json: not a list of test groups" in res.stderr
    assert "reading SmolLM2's tokenizer out of its GGUF (first run only" in res.stderr
    assert "1/1 schemas passing" in res.stdout
