"""Fuzzing warmup files and config files (issue 11): whatever the input, the answer is a
parsed request / a Config, or a typed StructgenError. Never another exception, never code
run from a line.

Derandomized (a fixed seed) with a bounded example count, so ``make test`` is repeatable;
``HYPOTHESIS_PROFILE=fuzz`` (``make fuzz``) draws fresh seeds and 20x the examples. Every
fuzzer counts the inputs it tried and asserts it reached its budget.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from structgen.config import BACKEND_NAMES, Config
from structgen.engine import Engine
from structgen.errors import ConfigError, StructgenError
from structgen.warmup import LINE_KEYS, WarmupLineError, plan, read_items

FUZZ = os.environ.get("HYPOTHESIS_PROFILE") == "fuzz"
SCALE = 20 if FUZZ else 1


def fuzz_settings(n: int) -> settings:
    return settings(max_examples=n * SCALE, derandomize=not FUZZ, deadline=None,
                    database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


TRIED: Counter[str] = Counter()

# Values ------------------------------------------------------------------------------
scalars = (st.none() | st.booleans() | st.integers() | st.floats()
           | st.text(max_size=12) | st.sampled_from(["", "0", "-1", "1e400", "NaN", "x" * 300]))
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12)

KEYWORDS = ["type", "properties", "items", "enum", "const", "pattern", "minimum", "maximum",
            "required", "$ref", "$defs", "anyOf", "oneOf", "allOf", "additionalProperties",
            "minLength", "maxLength", "format", "prefixItems", "minItems", "$dynamicRef"]
TYPES = st.sampled_from(["object", "array", "string", "integer", "number", "boolean", "null",
                         "nonsense"]) | st.lists(st.sampled_from(["string", "null", 3]),
                                                  max_size=3)
schemas = st.recursive(
    st.fixed_dictionaries({}, optional={"type": TYPES}) | st.booleans(),
    lambda inner: st.fixed_dictionaries({}, optional={
        "type": TYPES,
        "properties": st.dictionaries(st.text(max_size=5), inner, max_size=3) | json_values,
        "items": inner, "anyOf": st.lists(inner, max_size=3), "enum": st.lists(scalars, max_size=4),
        "pattern": st.text(max_size=10) | st.sampled_from(["(a+)+b", "[", "\\d{2,1}", "^.*$"]),
        "minimum": st.integers() | st.floats(), "maxLength": st.integers(-2, 50) | scalars,
        "required": st.lists(st.text(max_size=5), max_size=3) | scalars,
        "$ref": st.sampled_from(["#", "#/properties/a", "#/$defs/x", "x.json", "#/nope/"]),
        "$defs": st.dictionaries(st.sampled_from(["x", "y"]), inner, max_size=2),
        "additionalProperties": st.booleans() | inner,
        "format": st.sampled_from(["date-time", "email", "uuid", "bogus"]),
        "minItems": st.integers(-1, 5), "const": scalars,
    }) | st.dictionaries(st.sampled_from(KEYWORDS), json_values, max_size=4),
    max_leaves=10)
SPECS = st.sampled_from([
    "evil.py:X", "/etc/passwd:x", "os:system", "subprocess:Popen", "json:loads",
    "structgen.engine:Engine", "schemas.intent:Intent", "../schema.json", "/etc/hosts.json",
    "schema.json", "missing.json", "broken.json", ":", "a:", ":b", "a b:c", "..:x", ".os:x",
    "x" * 500 + ".json", "\x00.json", "nul\x00:x"]) | st.text(max_size=20)
messages = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "tool", "robot"]) | scalars,
     "content": st.text(max_size=20) | scalars}), max_size=3) | json_values
LINE_FIELDS: dict[str, Any] = {
    "id": st.text(max_size=8) | scalars, "prompt": st.text(max_size=30) | json_values,
    "messages": messages, "schema": schemas | SPECS | json_values,
    "model": st.text(max_size=10) | scalars, "reasoning": scalars,
    "backend": st.sampled_from([*BACKEND_NAMES, "nope"]) | scalars,
    "temperature": st.floats() | scalars, "top_p": st.floats() | scalars,
    "max_tokens": st.integers() | scalars, "seed": st.integers() | scalars,
    "stop": st.lists(st.text(max_size=4), max_size=3) | scalars,
    "tempreature": scalars,
}
assert set(LINE_FIELDS) >= LINE_KEYS, "a line field the fuzzer does not try"
line_objects = st.fixed_dictionaries(
    {"schema": schemas | SPECS}, optional={k: v for k, v in LINE_FIELDS.items() if k != "schema"})


def _dumps(obj: Any) -> str:
    try:
        return json.dumps(obj)
    except (ValueError, RecursionError):
        return "{}"


lines = st.one_of(
    line_objects.map(_dumps),  # mostly well-shaped lines with odd values
    st.fixed_dictionaries({k: v for k, v in LINE_FIELDS.items() if k != "tempreature"}
                          ).map(_dumps),
    json_values.map(_dumps), st.text(max_size=60),
    st.sampled_from(["[" * 5000, "1" * 5000, '{"prompt": "x", "schema": ' + "[" * 3000,
                     '{"prompt":"x","schema":{"type":"integer","maximum":1' + "0" * 5000 + "}}",
                     "\ufeff{}", "{}" * 3, "null"]))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Engine]]:
    root = tmp_path_factory.mktemp("fuzz-warmup")
    marker = root / "code-ran"
    (root / "evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    (root / "schema.json").write_text('{"type": "object"}')
    (root / "broken.json").write_text("[" * 5000)
    engine = Engine(Config(cache={"dir": str(root / "cache")},  # type: ignore[arg-type]
                           metrics={"enabled": False}))  # type: ignore[arg-type]
    yield root, engine
    engine.close()
    assert not marker.exists(), "a warmup line ran code"


WARMUP_EXAMPLES = 400
CONFIG_EXAMPLES = 600


def test_fuzz_warmup_lines_give_requests_or_typed_line_errors(
        workdir: tuple[Path, Engine]) -> None:
    before = TRIED["warmup lines"]
    _fuzz_warmup_lines(workdir)
    # every example reads 1-6 lines: fewer than one line per example means the fuzzer stopped
    # short of its budget (hypothesis gave up, or the settings shrank)
    assert TRIED["warmup lines"] - before >= WARMUP_EXAMPLES * SCALE


@fuzz_settings(WARMUP_EXAMPLES)
@given(batch=st.lists(lines, min_size=1, max_size=6))
def _fuzz_warmup_lines(workdir: tuple[Path, Engine], batch: list[str]) -> None:
    root, engine = workdir
    src = root / "requests.jsonl"
    src.write_text("\n".join(batch) + "\n", encoding="utf-8", errors="surrogatepass")
    before = set(sys.modules)
    items = read_items(src, engine)  # must not raise
    for item in items:
        TRIED["warmup lines"] += 1
        if item.error is None:
            assert item.key is not None and item.request is not None
        else:
            assert isinstance(item.error, StructgenError), repr(item.error)
            assert item.key is None
            assert str(item.error)
    # nothing is allowed here, so no spec may be imported (nor the loader that would)
    imported = set(sys.modules) - before
    assert not imported & {"structgen.cli", "_structgen_spec_evil", "schemas",
                           "schemas.intent"}, imported
    p = plan(engine, items)
    assert p["total"] == len(items) and p["invalid"] == sum(i.key is None for i in items)


# Config files ------------------------------------------------------------------------
SECTION_KEYS: dict[str, list[str]] = {
    name: list(field.annotation.model_fields) for name, field in Config.model_fields.items()
    if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)}
toml_scalars = (st.booleans() | st.integers(-(10**20), 10**20) | st.floats()
                | st.text(max_size=12) | st.sampled_from(["~/x", "http://127.0.0.1:1", "auto",
                                                          "redis://:pw@127.0.0.1:1/0", ""]))
toml_values = st.recursive(toml_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                           max_leaves=6)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) \
            else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string (JSON escapes TOML may refuse: fine)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"


@st.composite
def config_texts(draw: st.DrawFn) -> str:
    out = []
    names = draw(st.lists(st.sampled_from([*SECTION_KEYS, "nosuch"]) | st.text(max_size=6),
                          max_size=4, unique=True))
    for name in names:
        if draw(st.integers(0, 9)) == 0:  # a section that is not a table
            out.append(f"{json.dumps(name)} = {_toml_value(draw(toml_scalars))}")
            continue
        out.append(f"[{json.dumps(name)}]")
        keys = [*SECTION_KEYS.get(name, []), "typo_key"]
        for key in draw(st.lists(st.sampled_from(keys) | st.text(max_size=5), max_size=4,
                                 unique=True)):
            out.append(f"{json.dumps(key)} = {_toml_value(draw(toml_values))}")
    return "\n".join(out) + "\n"


config_files = st.one_of(
    config_texts(), config_texts().map(lambda t: t[: len(t) // 2]), st.text(max_size=80),
    st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
    st.sampled_from(["x = " + "1" * 5000, "x = " + "[" * 3000 + "]" * 3000,
                     "[cache]\nttl_s = inf", "[router]\nhealth_interval_s = nan",
                     "[metrics]\nport = 99999999999999999999999", "[[cache]]\n",
                     '[warmup]\nallow_modules = "os"', "[cache]\ndir = 3"]))
ENV_KEYS = [f"STRUCTGEN_{s.upper()}_{k.upper()}" for s, keys in SECTION_KEYS.items()
            for k in keys] + ["STRUCTGEN_PROVIDER", "STRUCTGEN_FALLBACK", "STRUCTGEN_TIMEOUT_S",
                              "STRUCTGEN_NOT_A_KEY"]
env_values = st.text(max_size=20) | st.sampled_from(
    ["[", "{", "[1,2]", '{"a": 1}', "true", "null", "[" * 3000, "[" + "1" * 5000 + "]",
     "1e400", "nan", "vllm,local", ",,,", "-1"])


def test_fuzz_config_files_load_or_raise_config_error(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    before = TRIED["config files"]
    _fuzz_config_files(tmp_path_factory)
    assert TRIED["config files"] - before >= 2 * CONFIG_EXAMPLES * SCALE  # each: 2 loads


@fuzz_settings(CONFIG_EXAMPLES)
@given(text=config_files, env=st.dictionaries(st.sampled_from(ENV_KEYS), env_values,
                                              max_size=3))
def _fuzz_config_files(tmp_path_factory: pytest.TempPathFactory,
                       text: str, env: dict[str, str]) -> None:
    path = tmp_path_factory.getbasetemp() / "fuzz-config.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    for environ in ({}, env):
        TRIED["config files"] += 1
        try:
            cfg = Config.load(path, env=environ)
        except ConfigError as exc:
            assert str(exc)
            continue
        # a loaded config is usable: every float finite, its repr shows no password
        assert "pw@" not in repr(cfg)
        for section in cfg.model_dump().values():
            for value in section.values():
                assert not (isinstance(value, float) and not math.isfinite(value))


def test_regression_warmup_line_errors_stay_typed(workdir: tuple[Path, Engine]) -> None:
    """Lines the fuzzers found or that guard a fix: typed line errors, no import."""
    root, engine = workdir
    src = root / "regress.jsonl"
    src.write_text("\n".join([
        "[" * 5000, "1" * 5000,
        json.dumps({"prompt": "x", "schema": "evil.py:X"}),
        json.dumps({"prompt": "x", "schema": "os:system"}),
        json.dumps({"prompt": "x", "schema": "broken.json"}),
        json.dumps({"prompt": "x", "schema": "/etc/hosts.json"}),
    ]) + "\n")
    items = read_items(src, engine)
    assert [type(i.error).__name__ for i in items] == [
        "WarmupLineError", "WarmupLineError", "WarmupLineError", "WarmupLineError",
        "SchemaError", "WarmupLineError"]
    assert all(isinstance(i.error, WarmupLineError | StructgenError) for i in items)
