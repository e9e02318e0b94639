"""Cache-key stability (what must collide) and sensitivity (what must not)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import structgen.cache as cache_mod
from structgen.cache import ResultCache, open_result_cache
from structgen.config import Config
from structgen.engine import Engine
from structgen.types import Choice, Grammar, Regex

ROOT = Path(__file__).resolve().parents[2]

OBJ = {"type": "object",
       "properties": {"name": {"type": "string", "maxLength": 20},
                      "age": {"type": "integer", "minimum": 0}},
       "required": ["name", "age"], "additionalProperties": False}
# the same schema, keywords in another order (and "required" listed before "properties")
OBJ_REORDERED = {"additionalProperties": False, "required": ["name", "age"],
                 "properties": {"name": {"maxLength": 20, "type": "string"},
                                "age": {"minimum": 0, "type": "integer"}},
                 "type": "object"}
DEFS_A = {"$defs": {"A": {"type": "string"}, "B": {"type": "integer"}},
          "type": "object", "properties": {"a": {"$ref": "#/$defs/A"},
                                           "b": {"$ref": "#/$defs/B"}}}
DEFS_B = {"type": "object", "properties": {"a": {"$ref": "#/$defs/A"},
                                           "b": {"$ref": "#/$defs/B"}},
          "$defs": {"B": {"type": "integer"}, "A": {"type": "string"}}}
U = [{"role": "user", "content": "hi"}]


def cfg(tmp: Path, **sections: Any) -> Config:
    data: dict[str, Any] = {"cache": {"dir": str(tmp / "c")}, **sections}
    return Config.from_dict(data)


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    e = Engine(cfg(tmp_path))
    yield e
    e.close()


def key(engine: Engine, prompt: Any, output: Any, *, backend: str | None = None,
        model: str | None = None, reasoning: bool = False, **s: Any) -> str:
    req = engine.build_request(prompt, output, model=model, reasoning=reasoning, **s)
    return str(engine.cache_key(req, backend))


# (description, request A, request B): each request is (args, kwargs) for key()
SAME: list[tuple[str, tuple[Any, ...], tuple[Any, ...]]] = [
    ("schema keyword order", (("hi", OBJ), {}), (("hi", OBJ_REORDERED), {})),
    ("schema as JSON text, pretty vs compact",
     (("hi", json.dumps(OBJ, indent=4)), {}), (("hi", json.dumps(OBJ)), {})),
    ("$defs member order", (("hi", DEFS_A), {}), (("hi", DEFS_B), {})),
    ("prompt str vs one user message", (("hi", OBJ), {}), ((U, OBJ), {})),
    ("message key order", (([{"content": "hi", "role": "user"}], OBJ), {}), ((U, OBJ), {})),
    ("temperature int vs float", (("hi", OBJ), {"temperature": 0}),
     (("hi", OBJ), {"temperature": 0.0})),
    ("default sampling spelled out", (("hi", OBJ), {}),
     (("hi", OBJ), {"temperature": 0.0, "top_p": 1.0, "max_tokens": 512, "stop": []})),
    ("top_p int vs float", (("hi", OBJ), {"top_p": 1}), (("hi", OBJ), {"top_p": 1.0})),
    ("explicit model: backend does not matter",
     (("hi", OBJ), {"model": "m", "backend": "local"}),
     (("hi", OBJ), {"model": "m", "backend": "vllm"})),
    ("routed to local only vs backend=local", (("hi", OBJ), {}),
     (("hi", OBJ), {"backend": "local"})),
    ("equal Choice objects", (("hi", Choice(["a", "b"])), {}),
     (("hi", Choice(("a", "b"))), {})),
    ("equal Regex objects", (("hi", Regex("[0-9]+")), {}), (("hi", Regex("[0-9]+")), {})),
    ("key order inside a default value", (("hi", {
        "type": "object", "default": {"x": 1, "y": 2}}), {}),
     (("hi", {"default": {"y": 2, "x": 1}, "type": "object"}), {})),
]

DIFFERENT: list[tuple[str, tuple[Any, ...], tuple[Any, ...]]] = [
    ("prompt text", (("hi", OBJ), {}), (("hello", OBJ), {})),
    ("trailing whitespace in prompt", (("hi", OBJ), {}), (("hi ", OBJ), {})),
    ("system message added", ((U, OBJ), {}),
     (([{"role": "system", "content": "be brief"}, *U], OBJ), {})),
    ("role", ((U, OBJ), {}), (([{"role": "system", "content": "hi"}], OBJ), {})),
    ("message order", (([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
                        OBJ), {}),
     (([{"role": "user", "content": "b"}, {"role": "user", "content": "a"}], OBJ), {})),
    ("assistant turn content", (([*U, {"role": "assistant", "content": "x"}, *U], OBJ), {}),
     (([*U, {"role": "assistant", "content": "y"}, *U], OBJ), {})),
    ("extra property", (("hi", OBJ), {}),
     (("hi", {**OBJ, "properties": {**OBJ["properties"], "z": {"type": "null"}}}), {})),
    ("a constraint", (("hi", OBJ), {}),
     (("hi", {**OBJ, "properties": {**OBJ["properties"],
                                    "name": {"type": "string", "maxLength": 21}}}), {})),
    # a decoder writes fields in `properties` order, so that order changes the answer
    ("properties member order", (("hi", OBJ), {}),
     (("hi", {**OBJ, "properties": dict(reversed(OBJ["properties"].items()))}), {})),
    ("model", (("hi", OBJ), {"model": "m1"}), (("hi", OBJ), {"model": "m2"})),
    ("configured model vs explicit", (("hi", OBJ), {}), (("hi", OBJ), {"model": "m1"})),
    ("temperature", (("hi", OBJ), {"temperature": 0, "seed": 1}),
     (("hi", OBJ), {"temperature": 0.5, "seed": 1})),
    ("top_p", (("hi", OBJ), {"top_p": 1.0}), (("hi", OBJ), {"top_p": 0.9})),
    ("seed", (("hi", OBJ), {"seed": 1}), (("hi", OBJ), {"seed": 2})),
    ("seed None vs 0", (("hi", OBJ), {}), (("hi", OBJ), {"seed": 0})),
    ("max_tokens", (("hi", OBJ), {"max_tokens": 100}), (("hi", OBJ), {"max_tokens": 101})),
    ("stop", (("hi", OBJ), {"stop": ["\n"]}), (("hi", OBJ), {"stop": ["}"]})),
    ("reasoning flag", (("hi", OBJ), {}), (("hi", OBJ), {"reasoning": True})),
    ("output kind: regex vs choice", (("hi", Regex("a|b")), {}),
     (("hi", Choice(["a", "b"])), {})),
    ("choice options", (("hi", Choice(["a", "b"])), {}), (("hi", Choice(["a", "c"])), {})),
    ("grammar text", (("hi", Grammar('start: "a"', "lark")), {}),
     (("hi", Grammar('start: "b"', "lark")), {})),
    ("backend with different configured models", (("hi", OBJ), {"backend": "local"}),
     (("hi", OBJ), {"backend": "vllm"})),
]


def _call(engine: Engine, spec: tuple[Any, ...]) -> str:
    args, kwargs = spec
    return key(engine, *args, **kwargs)


@pytest.mark.parametrize(("why", "a", "b"), SAME, ids=[s[0] for s in SAME])
def test_must_collide(engine: Engine, why: str, a: Any, b: Any) -> None:
    assert _call(engine, a) == _call(engine, b), why


@pytest.mark.parametrize(("why", "a", "b"), DIFFERENT, ids=[d[0] for d in DIFFERENT])
def test_must_not_collide(engine: Engine, why: str, a: Any, b: Any) -> None:
    assert _call(engine, a) != _call(engine, b), why


def test_at_least_twenty_pairs() -> None:
    assert len(SAME) >= 10 and len(DIFFERENT) >= 20 and len(SAME) + len(DIFFERENT) >= 30


def test_configured_local_model_changes_key(tmp_path: Path) -> None:
    a = Engine(cfg(tmp_path, local={"model": "/models/a"}))
    b = Engine(cfg(tmp_path, local={"model": "/models/b"}))
    assert key(a, "hi", OBJ, backend="local") != key(b, "hi", OBJ, backend="local")
    a.close()
    b.close()


def test_whitespace_setting_changes_key(tmp_path: Path) -> None:
    a = Engine(cfg(tmp_path, local={"whitespace": "compact"}))
    b = Engine(cfg(tmp_path, local={"whitespace": "any"}))
    assert key(a, "hi", OBJ) != key(b, "hi", OBJ)
    a.close()
    b.close()


def test_format_version_changes_key(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    before = key(engine, "hi", OBJ)
    monkeypatch.setattr(cache_mod, "CACHE_FORMAT_VERSION", cache_mod.CACHE_FORMAT_VERSION + 1)
    assert key(engine, "hi", OBJ) != before


def test_key_is_stable_across_processes(engine: Engine, tmp_path: Path) -> None:
    """Another interpreter (another hash seed) computes the same key: no id()/hash() in it."""
    code = (
        "import json,sys\n"
        "from structgen.config import Config\n"
        "from structgen.engine import Engine\n"
        "from schemas.intent import Intent\n"
        f"e = Engine(Config.from_dict({{'cache': {{'dir': {str(tmp_path / 'c')!r}}}}}))\n"
        "r = e.build_request([{'role':'user','content':'fix app.py'}], Intent, seed=3)\n"
        "print(e.cache_key(r))\n")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True).stdout.strip()
    sys.path.insert(0, str(ROOT))
    from schemas.intent import Intent

    assert out == key(engine, "fix app.py", Intent, seed=3)
    assert re.fullmatch(r"[0-9a-f]{64}", out), out  # a SHA-256 hex digest


def test_pydantic_model_and_its_schema_share_a_key(engine: Engine) -> None:
    sys.path.insert(0, str(ROOT))
    from schemas.intent import Intent

    schema = engine.build_request("hi", Intent).output.json_schema  # type: ignore[union-attr]
    assert key(engine, "hi", Intent) == key(engine, "hi", schema)


def test_null_cache_never_caches(tmp_path: Path) -> None:
    e = Engine(Config.from_dict({"cache": {"backend": "none"}}))
    assert not e.cache.cacheable(e.build_request("hi", OBJ))
    assert not isinstance(open_result_cache(e.config.cache), ResultCache)
