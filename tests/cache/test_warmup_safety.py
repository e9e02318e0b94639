"""Warmup files are data, and a warmup that stored nothing does not say done (issue 11,
items 4 and 12). Requests go to the Ollama wire-format server on 127.0.0.1 (it answers
text made from the schema); the result cache is a real diskcache or redis-server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from structgen.cache import CacheError, ResultCache, open_result_cache
from structgen.config import Config
from structgen.engine import Engine
from structgen.errors import SchemaError
from structgen.warmup import WarmupLineError, read_items
from tests.servers.wire import OllamaWireServer

from .conftest import RedisServer

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = {"type": "object", "properties": {"kind": {"enum": ["a", "b"]}}, "required": ["kind"],
          "additionalProperties": False}
MODEL_SRC = ("import pathlib\npathlib.Path({marker!r}).write_text('imported')\n"
             "from pydantic import BaseModel\n\nclass Intent(BaseModel):\n    kind: str\n")


@pytest.fixture(scope="module")
def ollama() -> Iterator[OllamaWireServer]:
    with OllamaWireServer() as server:
        yield server  # type: ignore[misc]


@pytest.fixture
def code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A .py file and an importable package that leave a marker file when their code runs."""
    marker = tmp_path / "code-ran"
    (tmp_path / "evil.py").write_text(MODEL_SRC.format(marker=str(marker)))
    pkg = tmp_path / "site" / "warmpkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text(MODEL_SRC.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "warmpkg", raising=False)
    monkeypatch.delitem(sys.modules, "warmpkg.models", raising=False)
    return {"marker": marker, "site": tmp_path / "site"}


def _items(tmp_path: Path, lines: list[Any], **kw: Any) -> list[Any]:
    src = tmp_path / "req" / "requests.jsonl"
    src.parent.mkdir(exist_ok=True)
    src.write_text("".join(json.dumps(x) + "\n" for x in lines))
    engine = Engine(Config(cache={"dir": str(tmp_path / "cache")}))  # type: ignore[arg-type]
    try:
        return read_items(src, engine, **kw)
    finally:
        engine.close()


def test_warmup_line_cannot_run_code(tmp_path: Path, code: dict[str, Path]) -> None:
    (tmp_path / "outside.json").write_text(json.dumps(SCHEMA))
    specs = [str(tmp_path / "evil.py") + ":Intent", "../evil.py:Intent",
             "warmpkg.models:Intent", "warmpkg:models", "os:system", "../outside.json",
             str(tmp_path / "outside.json"), "a b:C", ":Intent"]
    items = _items(tmp_path, [{"prompt": "x", "schema": s} for s in specs])
    for spec, item in zip(specs, items, strict=True):
        assert isinstance(item.error, WarmupLineError), (spec, item.error)
        assert item.key is None
    assert "--allow-module warmpkg" in str(items[2].error)
    assert not code["marker"].exists()  # nothing was imported or executed


def test_allowed_modules_and_json_beside_the_file(tmp_path: Path, code: dict[str, Path]
                                                  ) -> None:
    (tmp_path / "req").mkdir()
    (tmp_path / "req" / "schema.json").write_text(json.dumps(SCHEMA))
    (tmp_path / "req" / "broken.json").write_text("[" * 5000)
    lines = [{"prompt": "x", "schema": "warmpkg.models:Intent"},
             {"prompt": "y", "schema": "schema.json"}, {"prompt": "z", "schema": SCHEMA},
             {"prompt": "w", "schema": "broken.json"}, {"prompt": "v", "schema": "gone.json"},
             {"prompt": "u", "schema": "warmpkgx.models:Intent"}]
    items = _items(tmp_path, lines, allow_modules=["warmpkg"])
    assert [i.error for i in items[:3]] == [None, None, None] and items[0].key
    assert items[0].schema_name == "Intent" and code["marker"].exists()
    assert isinstance(items[3].error, SchemaError) and isinstance(items[4].error, SchemaError)
    assert isinstance(items[5].error, WarmupLineError)  # a prefix is not a package


def _config(tmp_path: Path, server: OllamaWireServer, **cache: str) -> Path:
    cfg = tmp_path / "config.toml"
    table = "".join(f'{k} = "{v}"\n' for k, v in
                    ({"dir": str(tmp_path / "cache")} | cache).items())
    cfg.write_text(f'[llm_backend]\nprovider = "ollama"\nfallback = []\n\n'
                   f'[ollama]\nbase_url = "{server.base_url}"\nmodel = "smollm2:135m"\n\n'
                   f'[metrics]\nstate_file = "{tmp_path / "metrics.json"}"\n\n[cache]\n{table}')
    return cfg


def _warmup(cfg: Path, src: Path, report: Path, *extra: str,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "structgen.cli", "warmup", str(src), "--config", str(cfg),
         "--report", str(report), "--no-progress", *extra],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120)


def _report(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_cli_refuses_code_allows_modules_and_appends_report(
        tmp_path: Path, code: dict[str, Path], ollama: OllamaWireServer) -> None:
    cfg = _config(tmp_path, ollama)
    src, report = tmp_path / "requests.jsonl", tmp_path / "report.jsonl"
    src.write_text("".join(json.dumps(x) + "\n" for x in [
        {"id": "inline", "prompt": "p", "schema": SCHEMA},
        {"id": "file", "prompt": "p", "schema": str(tmp_path / "evil.py") + ":Intent"},
        {"id": "module", "prompt": "p", "schema": "warmpkg.models:Intent"}]))
    env = {"PYTHONPATH": os.pathsep.join([str(code["site"]), str(ROOT)])}
    first = _warmup(cfg, src, report, env=env)
    assert first.returncode == 1 and "Traceback" not in first.stderr, first.stderr
    first_lines = _report(report)
    lines = {r["id"]: r for r in first_lines}
    assert lines["inline"]["status"] == "done"
    assert (lines["file"]["status"], lines["file"]["error_type"]) == ("invalid", "WarmupLineError")
    assert lines["module"]["status"] == "invalid" and "--allow-module" in lines["module"]["error"]
    assert not code["marker"].exists()

    second = _warmup(cfg, src, report, "--allow-module", "warmpkg", env=env)
    assert second.returncode == 1, second.stderr  # the .py line is still refused
    assert code["marker"].exists()
    after = _report(report)
    assert len(after) == 6 and after[:3] == first_lines  # appended, not truncated
    latest = {r["id"]: r for r in after}
    assert latest["inline"]["status"] == "cached" and latest["module"]["status"] == "done"


@pytest.mark.redis
def test_failed_cache_writes_fail_the_warmup(tmp_path: Path, ollama: OllamaWireServer) -> None:
    """A Redis that refuses writes (maxmemory reached, noeviction): every answer is
    generated, none is stored, so the run reports failures and exits non-zero."""
    redis = RedisServer(tmp_path, "--maxmemory", "1", "--maxmemory-policy", "noeviction")
    redis.wait()
    try:
        cfg = _config(tmp_path, ollama, backend="redis",
                      url=f"redis://127.0.0.1:{redis.port}/0")
        src, report = tmp_path / "requests.jsonl", tmp_path / "report.jsonl"
        src.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"p{i}", "schema": SCHEMA})
                               + "\n" for i in range(3)))
        run = _warmup(cfg, src, report)
        assert run.returncode == 1, (run.stdout, run.stderr)
        assert "0 done" in run.stdout and "3 failed" in run.stdout
        for line in _report(report):
            assert (line["status"], line["error_type"]) == ("failed", "CacheError")
            assert "OOM" in line["error"] or "maxmemory" in line["error"]
        cache = open_result_cache(Config.load(cfg).cache)
        assert isinstance(cache, ResultCache)
        with pytest.raises(CacheError, match="write failed"):
            cache.put_raw("k", "{}")  # never swallowed (cache import relies on it)
        cache.close()
    finally:
        redis.stop()


def test_resume_after_a_cut_report_line_starts_a_new_line(tmp_path: Path,
                                                          ollama: OllamaWireServer) -> None:
    cfg = _config(tmp_path, ollama)
    src, report = tmp_path / "requests.jsonl", tmp_path / "report.jsonl"
    src.write_text(json.dumps({"id": "q", "prompt": "p", "schema": SCHEMA}) + "\n")
    report.write_text('{"id": "killed", "line": 1, "sta')  # a SIGKILL mid-write
    assert _warmup(cfg, src, report).returncode == 0
    cut, line = report.read_text().splitlines()
    assert cut == '{"id": "killed", "line": 1, "sta' and json.loads(line)["status"] == "done"


# The first hour (issue 29 item 9): the documented format runs, and the CLI says which
# lines were invalid -------------------------------------------------------------------
def _docs_example() -> str:
    text = (ROOT / "docs" / "warmup.md").read_text()
    found = re.search(r"^```jsonl\n(.*?)^```", text, re.S | re.M)
    assert found, "docs/warmup.md shows a requests.jsonl"
    return found.group(1)


def test_the_documented_example_is_a_valid_warmup_file(tmp_path: Path,
                                                       ollama: OllamaWireServer) -> None:
    from typer.testing import CliRunner

    from structgen.cli import app

    src = tmp_path / "requests.jsonl"
    src.write_text(_docs_example())
    run = CliRunner().invoke(app, ["warmup", str(src), "--allow-module", "schemas",
                                   "--dry-run", "-c", str(_config(tmp_path, ollama))])
    assert run.exit_code == 0, run.output
    assert "3 requests: 0 already cached, 3 to run, 0 duplicate, 0 invalid" in run.stdout
    # and it runs (the module docstring's old example, a .py path, is refused)
    run = CliRunner().invoke(app, ["warmup", str(src), "--allow-module", "schemas",
                                   "--no-progress", "-c", str(_config(tmp_path, ollama))])
    assert run.exit_code == 0, run.output
    assert "3 done" in run.stdout


def test_invalid_lines_are_listed_and_their_brackets_kept(tmp_path: Path,
                                                          ollama: OllamaWireServer) -> None:
    from typer.testing import CliRunner

    from structgen.cli import app

    src = tmp_path / "requests.jsonl"
    src.write_text("".join(json.dumps(x) + "\n" for x in [
        {"id": "fine", "prompt": "p", "schema": SCHEMA},
        {"id": "mod", "prompt": "p", "schema": "notallowed.models:Intent"}]))
    cfg = _config(tmp_path, ollama)
    plan = CliRunner().invoke(app, ["warmup", str(src), "--dry-run", "-c", str(cfg)])
    assert "(or set [warmup] allow_modules)" in plan.stdout, plan.stdout  # not markup
    run = CliRunner().invoke(app, ["warmup", str(src), "--no-progress", "-c", str(cfg)])
    assert run.exit_code == 1
    assert "1 done, 0 cached, 0 duplicate, 0 failed, 1 invalid" in run.stdout
    assert "invalid: line 2 (mod): WarmupLineError: module 'notallowed.models' is not " \
           "allowed" in run.stderr, run.stderr


def test_the_progress_bar_counts_invalid_lines_as_invalid() -> None:
    from collections import Counter

    from structgen.cli import _warmup_progress

    progress = _warmup_progress(3, True)
    update = progress.__enter__()
    update(Counter({"invalid": 1, "done": 1}))
    fields = progress.progress.tasks[0].fields
    progress.__exit__(None, None, None)
    assert (fields["failed"], fields["invalid"], fields["done"]) == (0, 1, 1)


def test_warmup_line_names_only_configured_models(tmp_path: Path) -> None:
    """A line's model is a path to load or a hub id to download (issue 24, B4): only the
    configured models, or the --model of the command line, are accepted."""
    src = tmp_path / "req" / "requests.jsonl"
    src.parent.mkdir()
    models = ["Qwen/Qwen2.5-72B-Instruct", str(tmp_path / "any.gguf"), "ollama:evil",
              "configured-vllm-model", "from-the-command-line", None]
    src.write_text("".join(json.dumps({"prompt": "x", "schema": SCHEMA, "model": m}) + "\n"
                           for m in models))
    engine = Engine(Config.from_dict({"cache": {"dir": str(tmp_path / "cache")},
                                      "vllm": {"model": "configured-vllm-model"}}))
    try:
        items = read_items(src, engine, model="from-the-command-line")
    finally:
        engine.close()
    assert [type(i.error).__name__ for i in items] == [
        "WarmupLineError", "WarmupLineError", "WarmupLineError", "NoneType", "NoneType",
        "NoneType"]
    assert "not a configured model" in str(items[0].error)
    assert items[5].model == "from-the-command-line"
