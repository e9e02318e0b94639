"""The shard directory of ``structgen batch --ray --shards`` (structgen/batch/shards.py),
without Ray: what the actors' commits and the driver's reading guarantee. The same on the
real Ray cluster: tests/batch/test_batch_ray.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from structgen.batch import shards
from structgen.batch.job import JobLine
from structgen.batch.shards import DRIVER_PART, ShardDir, commit_shard, shard_name
from structgen.errors import ConfigError, ExecutorError


@pytest.fixture(autouse=True)
def no_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shards, "FENCE_GRACE_S", 0.0)


def answer(line: int) -> dict[str, Any]:
    return {"id": f"batch_req_{line}", "custom_id": f"r{line}", "response": {
        "status_code": 200, "body": {"n": line}}, "error": None}


def commit(d: ShardDir, lines: list[int]) -> None:
    commit_shard(d.path, d.run, lines, [answer(n) for n in lines])


def all_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for p in sorted(path.glob("part-*.jsonl"))
            for x in p.read_text().splitlines()]


def test_committed_shards_are_read_back_as_done(tmp_path: Path) -> None:
    d = ShardDir(tmp_path / "out")
    commit(d, [1, 2, 3])
    commit(d, [4, 5])
    d.write({"id": "x", "custom_id": None, "response": None,
             "error": {"code": "invalid_request", "line": 6}})
    d.close()
    again = ShardDir(tmp_path / "out")
    try:
        assert again.done_ids == {"r1", "r2", "r3", "r4", "r5"}
        assert again.done(JobLine(6))  # the driver's error line, known by its line
        assert again.done(JobLine(1, "r1")) and not again.done(JobLine(7, "r7"))
    finally:
        again.close()
    assert sorted(p.name for p in (tmp_path / "out").glob("part-*")) == sorted(
        [shard_name([1, 2, 3]), shard_name([4, 5]), DRIVER_PART])


def test_a_retried_batch_replaces_its_shard(tmp_path: Path) -> None:
    """Ray retries a batch whose actor was lost after it committed: the second commit of
    the same lines replaces the first, so every custom_id stays once."""
    d = ShardDir(tmp_path)
    try:
        commit(d, [3, 1, 2])
        commit(d, [1, 2, 3])
        ids = [x["custom_id"] for x in all_lines(tmp_path)]
        assert sorted(ids) == ["r1", "r2", "r3"]
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    finally:
        d.close()


def test_a_stale_runs_batch_is_dropped(tmp_path: Path) -> None:
    """An actor of a killed run that finishes its batch after the run was started again
    must not add lines the new run answers too."""
    old = ShardDir(tmp_path)
    old_run = old.run
    old.close()  # the driver killed; its actors go on for a moment
    new = ShardDir(tmp_path)
    try:
        with pytest.raises(ExecutorError, match="stale batch"):
            commit_shard(tmp_path, old_run, [1], [answer(1)])
        commit(new, [1])
        assert [x["custom_id"] for x in all_lines(tmp_path)] == ["r1"]
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    finally:
        new.close()


def test_a_killed_runs_partial_shard_is_not_output(tmp_path: Path) -> None:
    """A shard being written when its actor died is a temporary file: never read, removed
    when the job runs again."""
    (tmp_path / ".tmp-deadbeef").write_text(json.dumps(answer(1)) + "\n" + '{"id": "b')
    d = ShardDir(tmp_path)
    try:
        assert not d.done_ids
        assert not (tmp_path / ".tmp-deadbeef").exists()
    finally:
        d.close()


def test_one_driver_per_directory(tmp_path: Path) -> None:
    d = ShardDir(tmp_path)
    try:
        with pytest.raises(ConfigError, match="another structgen batch"):
            ShardDir(tmp_path)
    finally:
        d.close()


def test_a_node_that_does_not_see_the_directory(tmp_path: Path) -> None:
    with pytest.raises(ExecutorError, match="every node of the cluster sees"):
        commit_shard(tmp_path / "elsewhere", "run", [1], [answer(1)])


def test_a_directory_of_something_else_is_refused(tmp_path: Path) -> None:
    (tmp_path / "part-notes.jsonl").write_text("not a result\n")
    with pytest.raises(ConfigError, match="not a batch result line"):
        ShardDir(tmp_path)
    (tmp_path / "part-notes.jsonl").unlink()
    ShardDir(tmp_path).close()  # the refused open let go of the directory's lock
