"""The structgen command line, through typer's CliRunner (in process, real compile)."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from schemas import debugger, intent, reflection
from structgen.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
SPECS = {
    "intent-module": ("schemas.intent:Intent", intent.EXAMPLES),
    "debugger-module": ("schemas.debugger:Diagnosis", debugger.EXAMPLES),
    # a file path, and a recursive model with postponed annotations: forward refs resolve
    "reflection-file": (str(ROOT / "schemas" / "reflection.py") + ":Reflection",
                        reflection.EXAMPLES),
}


@pytest.mark.parametrize(("spec", "examples"), SPECS.values(), ids=SPECS.keys())
def test_compile_to_all_four_targets(spec: str, examples: list[BaseModel]) -> None:
    import xgrammar as xgr

    from structgen.schema.grammar_check import grammar_accepts

    outs = {}
    for target in ("json-schema", "lark", "ebnf", "regex"):
        result = runner.invoke(app, ["compile", "--schema", spec, "--to", target])
        assert result.exit_code == 0, result.output
        outs[target] = result.stdout.rstrip("\n")
    schema = json.loads(outs["json-schema"])
    assert schema["type"] == "object" and schema["properties"]
    assert outs["lark"].startswith("start: %json")
    xgr.Grammar.from_ebnf(outs["ebnf"])  # parses
    pattern = re.compile(outs["regex"])
    for example in examples:
        compact = example.model_dump_json()
        assert pattern.fullmatch(compact)
        assert grammar_accepts(outs["lark"], compact)[0]


def test_compile_json_schema_file(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"type": "object", "properties": {"n": {"type": "integer"}}}))
    result = runner.invoke(app, ["compile", "-s", str(path), "--to", "regex"])
    assert result.exit_code == 0, result.output
    assert re.fullmatch(result.stdout.strip(), '{"n":42}')


@pytest.mark.parametrize(("args", "words"), [
    (["compile", "-s", "schemas.intent:Nope"], "has no attribute 'Nope'"),
    (["compile", "-s", "no_such_module_xyz:Model"], "cannot import no_such_module_xyz"),
    (["compile", "-s", "missing/file.py:Model"], "file not found"),
    (["compile", "-s", "missing.json"], "schema file not found"),
    (["compile", "-s", "just-a-name"], "bad schema spec"),
    (["compile", "-s", "{bad}.json"], "schema file not found"),
    (["compile", "-s", "schemas.intent:EXAMPLES"], "unsupported output spec"),
])
def test_bad_spec_exits_2_with_a_clear_message(args: list[str], words: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "error: SchemaError" in result.stderr
    assert words in result.stderr
    assert "Traceback" not in result.output


def test_bad_schema_file_exits_2_with_pointer(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"type": "object", "properties": {"a": {"$ref": "#/$defs/X"}}}))
    result = runner.invoke(app, ["compile", "-s", str(path)])
    assert result.exit_code == 2
    assert "unresolvable $ref" in result.stderr and "/properties/a/$ref" in result.stderr
    (tmp_path / "broken.json").write_text("{not json")
    result = runner.invoke(app, ["compile", "-s", str(tmp_path / "broken.json")])
    assert result.exit_code == 2 and "is not valid JSON" in result.stderr


def test_unknown_target_exits_2() -> None:
    result = runner.invoke(app, ["compile", "-s", "schemas.intent:Intent", "--to", "yaml"])
    assert result.exit_code == 2
    assert "--to must be json-schema, lark, ebnf or regex" in result.output


def test_generate_with_unreachable_backend_exits_2(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "config.toml"
    config.write_text(f'[llm_backend]\nprovider = "vllm"\nfallback = ["vllm"]\n'
                      f'[vllm]\nbase_url = "http://127.0.0.1:{port}"\nmodel = "m"\n'
                      f'retries = 0\n[cache]\nbackend = "none"\n')
    result = runner.invoke(app, ["generate", "-s", "schemas.intent:Intent", "-p", "hi",
                                 "-c", str(config)])
    assert result.exit_code == 2
    assert "error: BackendUnavailable" in result.stderr


def test_generate_with_bad_config_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[llm_backend]\nprovider = "openai"\n')
    result = runner.invoke(app, ["generate", "-s", "schemas.intent:Intent", "-p", "hi",
                                 "-c", str(config)])
    assert result.exit_code == 2
    assert "ConfigError" in result.stderr and "llm_backend.provider" in result.stderr


@pytest.mark.slow
def test_generate_prints_a_valid_object_from_the_tiny_model(tiny_model_dir: Path,
                                                           tmp_path: Path) -> None:
    """End to end through the embedded backend with a random tiny model: the grammar
    alone makes the output a valid Intent."""
    config = tmp_path / "config.toml"
    config.write_text('[llm_backend]\nprovider = "local"\nfallback = ["local"]\n'
                      '[cache]\nbackend = "none"\n')
    result = runner.invoke(app, ["generate", "-s", "schemas.intent:Intent", "-p",
                                 "add a flag to cli.py", "-b", "local", "-m",
                                 str(tiny_model_dir), "-c", str(config),
                                 "--max-tokens", "400"])
    assert result.exit_code == 0, result.output
    intent.Intent.model_validate_json(result.stdout)
    # the model load is no silent pause (issue 29 item 11)
    assert f"structgen: loading model {tiny_model_dir}" in result.stderr
    assert re.search(r"structgen: model .+ loaded in \d+\.\d s", result.stderr)


# `structgen cache` on bad files: typed errors (exit 2) or counted skips (exit 1) ---------
def _cache_config(tmp_path: Path) -> Path:
    config = tmp_path / "config.toml"
    config.write_text(f'[cache]\ndir = "{tmp_path / "cache"}"\n')
    return config


BAD_IMPORT_LINES = {
    "deep": "[" * 100_000,
    "int past 4300 digits": "1" * 5000,
    "created_at 1e400": json.dumps({"v": 3, "key": "a" * 64, "created_at": 0, "backend": "b",
                                    "model": "m", "text": "x", "ttl_s": 1}
                                   ).replace('"created_at": 0', '"created_at": 1e400'),
    "created_at 400 digits + float ttl": json.dumps(
        {"v": 3, "key": "a" * 64, "created_at": 0, "backend": "b", "model": "m", "text": "x",
         "ttl_s": 1.5}).replace('"created_at": 0', '"created_at": 1' + "0" * 400),
    "key not a digest": json.dumps({"v": 3, "key": "../k", "created_at": 0, "backend": "b",
                                    "model": "m", "text": "x"}),
}


@pytest.mark.parametrize("line", BAD_IMPORT_LINES.values(), ids=BAD_IMPORT_LINES.keys())
def test_cache_import_bad_lines_are_skipped_not_crashes(tmp_path: Path, line: str) -> None:
    src = tmp_path / "dump.jsonl"
    src.write_text(line + "\n")
    result = runner.invoke(app, ["cache", "import", str(src), "-c", str(_cache_config(tmp_path))])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "imported 0 entries, skipped 1 malformed" in result.stdout


@pytest.mark.parametrize("damage", ["not utf-8", "a directory", "missing"])
def test_cache_import_unreadable_file_is_a_typed_error(tmp_path: Path, damage: str) -> None:
    src = tmp_path / "dump.jsonl"
    if damage == "not utf-8":
        src.write_bytes(b"\xff\xfe{}\n")
    elif damage == "a directory":
        src.mkdir()
    result = runner.invoke(app, ["cache", "import", str(src), "-c", str(_cache_config(tmp_path))])
    assert result.exit_code == 2 and "cannot read" in result.output


def test_cache_commands_on_a_cache_with_foreign_keys(tmp_path: Path) -> None:
    """Keys structgen never writes (pickled, bytes, int: another program, or tampering)
    are skipped by stats/export/clear, never a crash or an unpickle."""
    import diskcache

    config = _cache_config(tmp_path)
    with diskcache.Cache(str(tmp_path / "cache")) as raw:
        raw.set(("a", "tuple"), "v")
        raw.set(b"bytes", "v")
        raw.set(5, "v")
    for args in (["stats", "--json"], ["export"], ["clear"]):
        result = runner.invoke(app, ["cache", *args, "-c", str(config)])
        assert result.exit_code == 0, (args, result.output, result.exception)
    assert runner.invoke(app, ["cache", "stats", "--json", "-c", str(config)]).stdout


@pytest.mark.parametrize("damage", ["garbage cache.db", "cache dir is a file",
                                    "cache.db is a directory", "foreign sqlite schema"])
def test_cache_stats_on_a_damaged_store_is_a_typed_error(tmp_path: Path, damage: str) -> None:
    import sqlite3

    config, where = _cache_config(tmp_path), tmp_path / "cache"
    if damage == "cache dir is a file":
        where.write_text("x")
    else:
        where.mkdir()
        if damage == "garbage cache.db":
            (where / "cache.db").write_bytes(b"\x00not sqlite\x01" * 500)
        elif damage == "cache.db is a directory":
            (where / "cache.db").mkdir()
        else:
            with sqlite3.connect(where / "cache.db") as db:
                db.execute("CREATE TABLE Cache (x)")
    result = runner.invoke(app, ["cache", "stats", "-c", str(config)])
    assert result.exit_code == 2, (result.output, result.exception)
    assert "CacheError" in result.output and str(where) in result.output


# The first hour (issue 29): what a new user meets on the command line ---------------------
@pytest.fixture(scope="module")
def sglang_server():  # type: ignore[no-untyped-def]
    """A local SGLang stand-in (tests/servers/wire.py): answers from the constraint."""
    from tests.servers.wire import SGLangWireServer

    with SGLangWireServer() as server:
        yield server


def _server_config(tmp_path: Path, base_url: str, *, dead_vllm: bool = False) -> Path:
    """sglang at ``base_url`` (behind a vLLM on a closed port with ``dead_vllm``), the cache
    and the metrics state under ``tmp_path``."""
    config = tmp_path / "config.toml"
    chain = '["vllm", "sglang"]' if dead_vllm else '["sglang"]'
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config.write_text(
        f'[llm_backend]\nprovider = "{"vllm" if dead_vllm else "sglang"}"\n'
        f'fallback = {chain}\n'
        f'[vllm]\nbase_url = "http://127.0.0.1:{port}"\nmodel = "m"\nretries = 0\n'
        f'[sglang]\nbase_url = "{base_url}"\nmodel = "m"\nretries = 0\n'
        f'[cache]\ndir = "{tmp_path / "cache"}"\n'
        f'[metrics]\nstate_file = "{tmp_path / "metrics.json"}"\n')
    return config


def test_fallback_is_warned_traced_with_v_and_counted(tmp_path: Path, sglang_server) -> None:
    """Item 1: vLLM down, answered by the next backend: a warning says so (backend, reason,
    where it fell back), -v prints every backend tried, `stats` counts the fallback."""
    config = _server_config(tmp_path, sglang_server.base_url, dead_vllm=True)
    result = runner.invoke(app, ["generate", "-s", "schemas.intent:Intent", "-p", "hi",
                                 "-c", str(config), "-v"])
    assert result.exit_code == 0, result.output
    assert re.search(r"backend 'vllm' did not answer \(BackendUnavailable: .+\); fell back "
                     r"to 'sglang'", result.stderr), result.stderr
    assert "tried vllm: failed: BackendUnavailable" in result.stderr
    assert re.search(r"tried sglang: ok \(\d+\.\d\ds\)", result.stderr)
    intent.Intent.model_validate_json(result.stdout)
    stats = runner.invoke(app, ["stats", "--state-file", str(tmp_path / "metrics.json")])
    assert "fallbacks          1 (passed over: vllm 1)" in stats.stdout, stats.stdout


@pytest.mark.parametrize(("args", "shape"), [
    (["--regex", r"\d{4}-\d{2}-\d{2}"], r"\d{4}-\d{2}-\d{2}"),
    (["-s", r"regex:\d{4}-\d{2}-\d{2}"], r"\d{4}-\d{2}-\d{2}"),
    (["--choice", "yes,no"], "yes|no"),
    (["-s", "choice:yes, no"], "yes|no"),
])
def test_regex_and_choice_from_the_cli_print_raw(tmp_path: Path, sglang_server,
                                                 args: list[str], shape: str) -> None:
    """Item 4: regex and choice outputs from the command line, printed as they are (not as
    JSON strings)."""
    config = _server_config(tmp_path, sglang_server.base_url)
    result = runner.invoke(app, ["generate", *args, "-p", "a date", "-c", str(config)])
    assert result.exit_code == 0, result.output
    assert re.fullmatch(shape, result.stdout.strip()), result.stdout


def test_generate_takes_exactly_one_output_and_documents_it(tmp_path: Path) -> None:
    none = runner.invoke(app, ["generate", "-p", "hi"])
    assert none.exit_code == 2
    assert "give exactly one of --schema, --regex, --choice, --grammar" in none.stderr
    both = runner.invoke(app, ["generate", "-p", "hi", "--choice", "a,b", "--regex", "x"])
    assert both.exit_code == 2 and "(got --regex, --choice)" in both.stderr
    bad = runner.invoke(app, ["generate", "-p", "hi", "--choice", "a,,b"])
    assert bad.exit_code == 2 and "bad choice spec" in bad.stderr
    helped = runner.invoke(app, ["generate", "--help"], terminal_width=200)
    for words in ("file.py:Class", "regex:PATTERN", "--choice", "--grammar", "printed as is"):
        assert words in helped.stdout, words
    assert "<bool>" not in helped.stdout  # item 12: flags show no value placeholder


def test_grammar_file_spec(tmp_path: Path) -> None:
    from structgen.schema.specs import load_spec
    from structgen.types import Grammar

    path = tmp_path / "yn.lark"
    path.write_text('start: "yes" | "no"\n')
    assert load_spec(f"grammar:{path}") == Grammar('start: "yes" | "no"\n')
    result = runner.invoke(app, ["compile", "-s", f"grammar:{tmp_path / 'missing.lark'}"])
    assert result.exit_code == 2 and "cannot read grammar file" in result.stderr


def test_a_cli_cache_hit_is_counted(tmp_path: Path, sglang_server) -> None:
    """Item 5: each `generate` is its own Engine, dropped when the command returns; its
    cache hit/miss counts and metrics reach their files all the same."""
    config = _server_config(tmp_path, sglang_server.base_url)
    for _ in range(2):
        result = runner.invoke(app, ["generate", "-s", "schemas.intent:Intent", "-p",
                                     "count me", "-c", str(config)])
        assert result.exit_code == 0, result.output
    cache = json.loads(runner.invoke(app, ["cache", "stats", "--json", "-c",
                                           str(config)]).stdout)
    assert (cache["hits"], cache["misses"]) == (1, 1)
    stats = json.loads(runner.invoke(app, ["stats", "--json", "--state-file",
                                           str(tmp_path / "metrics.json")]).stdout)
    assert stats["cache_hits"] == 1 and stats["requests"] == 1


def _console_script(tmp_path: Path) -> Path:
    """A script that runs the CLI as the installed `structgen` does: sys.path[0] is the
    script's folder, not the directory the user runs it in."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "structgen"
    script.write_text("import sys\nfrom structgen.cli import main\nsys.exit(main())\n")
    return script


def test_module_specs_are_looked_up_in_the_working_directory_first(tmp_path: Path) -> None:
    """Item 8: `-s specs:Date` finds ./specs.py, and a user's own ./schemas/ wins over the
    repository's top-level `schemas` package (which is on the path here, as installed)."""
    import os
    import subprocess
    import sys

    work = tmp_path / "work"
    (work / "schemas").mkdir(parents=True)
    (work / "specs.py").write_text("from structgen import Regex\nDATE = Regex(r'\\d{4}')\n")
    (work / "schemas" / "__init__.py").write_text("")
    (work / "schemas" / "mine.py").write_text(
        "from pydantic import BaseModel\nclass Mine(BaseModel):\n    n: int\n")
    script = _console_script(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for spec, to, shown in (("specs:DATE", "regex", "[0-9]{4}"),
                            ("schemas.mine:Mine", "json-schema", '"n"')):
        run = subprocess.run([sys.executable, str(script), "compile", "-s", spec, "--to", to],
                             cwd=work, env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        assert shown in run.stdout


def test_a_spec_shadowed_by_an_imported_module_says_so(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """`schemas` is already imported in this process (the repository's): a user's own
    ./schemas/ cannot win any more, and the command says which file it used."""
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "__init__.py").write_text("")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["compile", "-s", "schemas.intent:Intent"])
    assert result.exit_code == 0
    assert "schemas.intent:... resolved to" in result.stderr
    assert "not to ./schemas in the current directory" in result.stderr


def test_a_misspelt_class_name_gets_a_suggestion() -> None:
    result = runner.invoke(app, ["compile", "-s", "schemas.intent:Intnet"])
    assert result.exit_code == 2
    assert "has no attribute 'Intnet' (did you mean 'Intent'?)" in result.stderr


def _tree_state(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_bench_quick_is_a_smoke_run_that_leaves_committed_results_alone(tmp_path: Path) -> None:
    """Item 2: `bench --quick` runs only the steps that load no model, into the folder
    given (a scratch folder by default); benchmarks/results/ changes only with
    --write-results."""
    committed = ROOT / "benchmarks" / "results"
    before = _tree_state(committed)
    out = tmp_path / "bench"
    result = runner.invoke(app, ["bench", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert {"README.md", "compile_mask.json", "conformance.json", "test_suite.json"} <= {
        p.name for p in out.iterdir()}
    assert _tree_state(committed) == before
    both = runner.invoke(app, ["bench", "--out", str(out), "--write-results"])
    assert both.exit_code == 2 and "not both" in both.stderr
