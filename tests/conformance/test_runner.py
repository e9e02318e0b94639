"""The process pool: per-schema deadline, results for every case, input readers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from structgen.errors import StructgenError
from structgen.tools.conformance import Instance, SchemaCase, iter_cases, run_checks, summarize


@pytest.mark.slow
def test_a_schema_past_its_deadline_is_killed_and_counted() -> None:
    cases = [SchemaCase("s", f"c{i}", {"type": "integer"}, [Instance(1, True)])
             for i in range(3)]
    results = run_checks(cases, jobs=2, timeout_s=1e-4)  # nothing finishes in 0.1 ms
    assert sorted(r.id for r in results) == ["c0", "c1", "c2"]
    assert summarize(results)["total"]["timeouts"] == 3
    # the pool recovers: the next run with a sane deadline passes
    assert summarize(run_checks(cases, jobs=2, timeout_s=60))["total"]["passing"] == 3


def test_readers_take_both_formats_and_reject_bad_paths(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text(json.dumps(
        {"id": "x", "schema": {"type": "string"}, "tests": [{"data": "s", "valid": True}]}))
    (tmp_path / "kw.json").write_text(json.dumps(
        [{"description": "d", "schema": {}, "tests": [{"description": "t", "data": 1,
                                                        "valid": True}]}]))
    (tmp_path / "ignored.txt").write_text("not read")
    cases = list(iter_cases(tmp_path))
    assert [(c.split, c.id) for c in cases] == [("a", "x"), ("kw", "kw#0: d")]
    with pytest.raises(StructgenError, match="no such file"):
        list(iter_cases(tmp_path / "nope"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(StructgenError, match="holds no"):
        list(iter_cases(empty))
