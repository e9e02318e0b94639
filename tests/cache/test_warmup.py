"""`structgen warmup` on the embedded backend with the tiny model: resumable after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = {"type": "object", "properties": {"kind": {"enum": ["a", "b", "c"]},
                                           "note": {"type": "string", "maxLength": 24}},
          "required": ["kind", "note"], "additionalProperties": False}
N = 16


@pytest.fixture
def setup(tmp_path: Path, tiny_model_dir: Path) -> dict[str, Path]:
    config = tmp_path / "config.toml"
    config.write_text(f'[llm_backend]\nprovider = "local"\n\n[local]\nmodel = "{tiny_model_dir}"\n'
                      f'max_batch = 4\n\n[cache]\ndir = "{tmp_path / "cache"}"\n'
                      f'grammar_dir = "{tmp_path / "grammars"}"\n')
    lines = [{"id": f"q{i}", "prompt": f"request number {i}", "schema": SCHEMA,
              "max_tokens": 48} for i in range(N)]
    lines[3] = {"id": "q3", "messages": [{"role": "system", "content": "terse"},
                                         {"role": "user", "content": "three"}],
                "schema": "schema.json", "max_tokens": 48}  # a spec relative to the file
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA, indent=2))
    src = tmp_path / "requests.jsonl"
    src.write_text("".join(json.dumps(x) + "\n" for x in lines))
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([
        json.dumps({"id": "ok", "prompt": "fine", "schema": SCHEMA, "max_tokens": 32}),
        "{not json",
        json.dumps({"id": "noschema", "prompt": "x"}),
        json.dumps({"id": "both", "prompt": "x", "messages": [], "schema": SCHEMA}),
        json.dumps({"id": "badspec", "prompt": "x", "schema": "nowhere.py:Nope"}),
        json.dumps({"id": "badschema", "prompt": "x", "schema": {"type": "object",
                                                                 "properties": 3}}),
        json.dumps({"id": "sampled", "prompt": "x", "schema": SCHEMA, "temperature": 0.8}),
        json.dumps({"id": "unknown", "prompt": "x", "schema": SCHEMA, "tempreature": 0}),
        json.dumps({"id": "dup", "prompt": "fine", "schema": SCHEMA, "max_tokens": 32}),
        json.dumps([1, 2]),
    ]) + "\n")
    return {"config": config, "src": src, "bad": bad, "report": tmp_path / "report.jsonl"}


def warmup_cmd(s: dict[str, Path], src: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "structgen.cli", "warmup", str(src), "--config",
            str(s["config"]), "--report", str(s["report"]), "--no-progress", *extra]


def read_report(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    # A SIGKILL can cut the last line short: only whole lines count (the next run, which
    # appends, starts on a line of its own, leaving the cut one unparseable).
    lines = []
    for x in path.read_text().split("\n")[:-1]:
        try:
            lines.append(json.loads(x))
        except json.JSONDecodeError:
            continue
    return lines


ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


@pytest.mark.slow
def test_sigkill_halfway_then_resume_exactly_once(setup: dict[str, Path]) -> None:
    s = setup
    proc = subprocess.Popen(warmup_cmd(s, s["src"], "--concurrency", "2"), cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while len(read_report(s["report"])) < 4:
        assert proc.poll() is None, proc.stderr.read().decode()  # type: ignore[union-attr]
        assert time.monotonic() < deadline
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    first = read_report(s["report"])
    assert proc.returncode == -signal.SIGKILL and 4 <= len(first) < N
    done_first = {r["id"] for r in first if r["status"] == "done"}

    dry = subprocess.run(warmup_cmd(s, s["src"], "--dry-run"), cwd=ROOT, env=ENV,
                         capture_output=True, text=True, check=True).stdout
    assert f"{N} requests: {len(done_first)} already cached, {N - len(done_first)} to run" in dry

    subprocess.run(warmup_cmd(s, s["src"], "--concurrency", "4"), cwd=ROOT, env=ENV,
                   check=True, capture_output=True)
    appended = read_report(s["report"])
    assert appended[:len(first)] == first  # the report is appended to, never truncated
    second = appended[len(first):]
    ids = [r["id"] for r in second]
    assert sorted(ids) == sorted(f"q{i}" for i in range(N))  # every entry exactly once
    by_id = {r["id"]: r for r in second}
    assert {i for i, r in by_id.items() if r["status"] == "cached"} == done_first
    assert {i for i, r in by_id.items() if r["status"] == "done"} == {
        f"q{i}" for i in range(N)} - done_first
    assert all(r["key"] and len(r["key"]) == 64 for r in second)
    assert len({r["key"] for r in second}) == N
    for r in second:
        if r["status"] == "done":
            assert r["backend"] == "local" and r["latency_s"] > 0 and r["error"] is None

    stats = json.loads(subprocess.run(
        [sys.executable, "-m", "structgen.cli", "cache", "stats", "--json", "--config",
         str(s["config"])], cwd=ROOT, env=ENV, capture_output=True, text=True,
        check=True).stdout)
    assert stats["entries"] == N

    third = subprocess.run(warmup_cmd(s, s["src"]), cwd=ROOT, env=ENV, capture_output=True,
                           text=True, check=True)
    assert all(r["status"] == "cached" for r in read_report(s["report"])[len(appended):])
    assert f"0 done, {N} cached" in third.stdout


@pytest.mark.slow
def test_bad_lines_become_typed_report_lines(setup: dict[str, Path]) -> None:
    s = setup
    run = subprocess.run(warmup_cmd(s, s["bad"]), cwd=ROOT, env=ENV, capture_output=True,
                         text=True)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    report = {r["id"]: r for r in read_report(s["report"])}
    assert report["ok"]["status"] == "done"
    assert report["dup"]["status"] == "duplicate" and report["dup"]["key"] == report["ok"]["key"]
    expected = {"line-2": "WarmupLineError", "noschema": "WarmupLineError",
                "both": "WarmupLineError", "badspec": "WarmupLineError",
                "badschema": "SchemaError", "sampled": "WarmupLineError",
                "unknown": "WarmupLineError", "line-10": "WarmupLineError"}
    for rid, error_type in expected.items():
        assert report[rid]["status"] == "invalid", rid
        assert report[rid]["error_type"] == error_type, (rid, report[rid])
        assert report[rid]["error"]
    assert "tempreature" in report["unknown"]["error"]


@pytest.mark.slow
def test_progress_bar_counts_every_line(setup: dict[str, Path]) -> None:
    """The default run shows the progress bar on stderr (every other test passes
    --no-progress): all lines counted, lines that cannot become requests as invalid (not
    failed, as the summary says). They need no model, so nothing is generated."""
    s = setup
    src = s["src"].with_name("invalid.jsonl")
    src.write_text("".join(json.dumps({"id": f"bad{i}", "prompt": "x", "schema": "nowhere.py:X"})
                           + "\n" for i in range(3)))
    cmd = [c for c in warmup_cmd(s, src) if c != "--no-progress"]
    run = subprocess.run(cmd, cwd=ROOT, env={**ENV, "COLUMNS": "160"}, capture_output=True,
                         text=True)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    bar = [line for line in run.stderr.splitlines() if line.startswith("warmup")]
    assert bar, run.stderr
    assert "3/3" in bar[-1] and "0 done" in bar[-1] and "0 failed" in bar[-1] \
        and "3 invalid" in bar[-1], bar[-1]
    quiet = subprocess.run(warmup_cmd(s, src), cwd=ROOT, env={**ENV, "COLUMNS": "160"},
                           capture_output=True, text=True)
    assert not [line for line in quiet.stderr.splitlines() if line.startswith("warmup")]


def test_cache_export_import_cli(tmp_path: Path) -> None:
    """export → clear → import through the CLI round-trips entries (disk store)."""
    from structgen.config import Config
    from structgen.engine import Engine
    from structgen.types import StructuredResult

    config = tmp_path / "config.toml"
    config.write_text(f'[cache]\ndir = "{tmp_path / "cache"}"\n')
    engine = Engine(Config.load(config))
    for i in range(3):
        req = engine.build_request(f"q{i}", SCHEMA)
        engine.cache.put(engine.cache_key(req), req, StructuredResult(
            value={"kind": "a", "note": str(i)}, raw_text=json.dumps({"kind": "a", "note": str(i)}),
            backend="local"))
    engine.close()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "structgen.cli", "cache", *args,
                               "--config", str(config)], cwd=ROOT, env=ENV,
                              capture_output=True, text=True)

    dump = tmp_path / "dump.jsonl"
    assert cli("export", str(dump)).returncode == 0
    assert len(dump.read_text().splitlines()) == 3
    assert "cleared 3 entries" in cli("clear").stdout
    assert json.loads(cli("stats", "--json").stdout)["entries"] == 0
    dump.write_text(dump.read_text() + "garbage\n")
    imported = cli("import", str(dump))
    assert imported.returncode == 1 and "imported 3 entries, skipped 1" in imported.stdout
    stats = json.loads(cli("stats", "--json").stdout)
    assert stats["entries"] == 3
    engine = Engine(Config.load(config))
    req = engine.build_request("q1", SCHEMA)
    hit = engine.cache.get(engine.cache_key(req), req.output)
    assert hit is not None and hit.value == {"kind": "a", "note": "1"}
    engine.close()
