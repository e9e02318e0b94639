"""The JSON layout the embedded backend emits: each layout on every engine (the tiny
random model, whose every separator comes from the grammar), what goes to servers, and
SmolLM2's default layout pinned (benchmarks/quality.py chose it: a change of the default
comes with a rerun of the benchmark)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field

from structgen.backends.local.models import smollm2_gguf_path
from structgen.schema.layout import json_layout
from structgen.validate import validate_text

from .test_llamacpp import ENGINES, gen, make
from .test_local import Color, LongNames


class Ticket(BaseModel):
    """Nested objects and arrays: every separator kind, forced and chosen."""

    model_config = {"extra": "forbid"}
    kind: Color
    tags: list[Color] = Field(max_length=3)
    owner: dict[str, int]
    urgent: bool
    score: int  # no bounds: Outlines leaves them to validation


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from structgen.tools.testing import build_tiny_gguf

    return build_tiny_gguf(tiny_model_dir, tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("layout", ["compact", "spaced"])
def test_every_engine_emits_exactly_the_layout(tiny: Path, engine: str, layout: str) -> None:
    eng, backend = make(tiny, engine=engine, whitespace=layout)
    request = eng.build_request("Classify it", Ticket)
    assert request.whitespace == layout
    for seed in range(4):
        r = gen(eng, backend, Ticket, temperature=1.0, seed=seed, max_tokens=200)
        assert r.finish_reason == "stop", r.text
        assert validate_text(r.text, request.output).ok, r.text
        json.loads(r.text)
        assert json_layout(r.text) == layout, r.text


@pytest.mark.parametrize("server_engine", ["guidance", "xgrammar"])
async def test_vllm_requests_carry_the_layout(server_engine: str) -> None:
    """What goes to vLLM per layout (test_vllm.py checks the real server's answers)."""
    from structgen.backends.vllm import VLLMBackend

    from .helpers import request, server_config

    b = VLLMBackend(server_config("vllm", "http://127.0.0.1:9", model="m",
                                  structured_backend=server_engine))
    bodies = {layout: (await b.build(request(Ticket, whitespace=layout)))[1]
              ["structured_outputs"] for layout in ("compact", "spaced", "any")}
    await b.aclose()
    assert bodies["compact"]["disable_any_whitespace"] is True
    assert bodies["spaced"]["disable_any_whitespace"] is True
    assert "disable_any_whitespace" not in bodies["any"]
    guidance = {layout: body["json"].get("x-guidance") for layout, body in bodies.items()}
    if server_engine == "guidance":
        assert guidance["spaced"] == {"whitespace_flexible": False, "item_separator": ", ",
                                      "key_separator": ": "}
        assert guidance["compact"]["item_separator"] == ","
    else:
        assert guidance == {"compact": None, "spaced": None, "any": None}
    assert guidance["any"] is None


@pytest.mark.parametrize("grammar_backend", ["llguidance", "xgrammar"])
def test_sglang_requests_carry_the_layout(grammar_backend: str) -> None:
    """SGLang's llguidance backend reads the layout from the schema's "x-guidance" too."""
    from structgen.backends.sglang import SGLangBackend

    from .helpers import request, server_config

    b = SGLangBackend(server_config("sglang", "http://127.0.0.1:9",
                                    grammar_backend=grammar_backend))
    schemas = {layout: json.loads(b._constraint(request(Ticket, whitespace=layout))[0]
                                  ["json_schema"]) for layout in ("compact", "spaced", "any")}
    sent = {layout: schema.get("x-guidance") for layout, schema in schemas.items()}
    if grammar_backend == "llguidance":
        assert sent["spaced"] is not None and sent["spaced"]["key_separator"] == ": "
        assert sent["compact"] is not None and sent["compact"]["key_separator"] == ":"
    else:
        assert sent["spaced"] is None and sent["compact"] is None
    assert sent["any"] is None


def test_fast_forward_holds_in_the_spaced_layout(tiny: Path) -> None:
    """The forced keys (and the separators' spaces) still come in one pass each: measured
    4 forward passes for 101 tokens, against one a token without fast-forward."""
    runs = {}
    for ff in (True, False):
        eng, backend = make(tiny, whitespace="spaced", fast_forward=ff, prefix_cache_entries=0)
        runs[ff] = gen(eng, backend, LongNames, max_tokens=200)
    assert runs[True].text == runs[False].text and json_layout(runs[True].text) == "spaced"
    assert runs[True].stats["forward_passes"] * 5 < runs[False].stats["forward_passes"]


# the requests schemas.intent.EXAMPLES[:2] answer (few-shot turns)
EXAMPLE_REQUESTS = ["Add a --verbose flag to the command in structgen/cli.py",
                    "Do the tests in tests/schema still pass?"]


def _intent_chat(examples: str | None, turns: bool = False) -> list[dict[str, str]]:
    """The intent prompt with the two worked examples written ``examples`` (compact,
    spaced, indented) in the system prompt's text, or as few-shot chat turns."""
    from schemas.intent import EXAMPLES, Intent

    system = ("You are the intent step of a coding agent. Answer with one JSON object that "
              "conforms to this JSON Schema, and nothing else:\n"
              + json.dumps(Intent.model_json_schema()))
    shown: list[str] = []
    if examples is not None:
        seps = (",", ":") if examples == "compact" else (", ", ": ")
        indent = 2 if examples == "indented" else None
        shown = [json.dumps(e.model_dump(mode="json", exclude_none=True), separators=seps,
                            indent=indent) for e in EXAMPLES[:2]]
    chat = []
    if turns:
        for request, answer in zip(EXAMPLE_REQUESTS, shown, strict=True):
            chat += [{"role": "user", "content": request},
                     {"role": "assistant", "content": answer}]
    elif shown:
        system += "\n\nExamples of valid answers:\n" + "\n".join(shown)
    return [{"role": "system", "content": system}, *chat,
            {"role": "user", "content": "Add a --dry-run flag to scripts/deploy.py"}]


@pytest.mark.parametrize(("examples", "turns", "layout"), [
    (None, False, "spaced"),
    # compact examples inside the system prompt do not switch the layout (measured: the
    # spaced grammar answered better than the compact one beside them); indented ones get
    # the free layout (measured: better than spaced beside them)
    ("spaced", False, "spaced"), ("compact", False, "spaced"), ("indented", False, "any"),
    # few-shot assistant turns do: the model goes on answering in the layout it answered in
    ("spaced", True, "spaced"), ("compact", True, "compact"), ("indented", True, "any")])
def test_smollm2_default_layout_follows_the_prompt(examples: str | None, turns: bool,
                                                   layout: str) -> None:
    """The default ("auto") for SmolLM2-135M: the layout of few-shot assistant turns, else
    json.dumps'. benchmarks/results/quality.md measured it (the compact grammar without
    examples left every intent's targets empty; beside compact examples in the system
    prompt it lost to spaced); a change here must come with a rerun of that benchmark."""
    from schemas.intent import Intent

    eng, backend = make(smollm2_gguf_path())  # the configured default: whitespace "auto"
    msgs = _intent_chat(examples, turns)
    assert eng.build_request(msgs, Intent).whitespace == layout
    r: Any = gen(eng, backend, Intent, msgs, max_tokens=160)
    # "any" (indented examples): the grammar leaves the layout to the model, which follows
    # the examples (measured: json.dumps(indent=2)'s lines, each ", " kept before a break)
    assert json_layout(r.text) == {"any": "indented"}.get(layout, layout), r.text
    answer = Intent.model_validate_json(r.text)
    # not the degenerate answer the compact grammar gave without examples (targets [])
    assert answer.targets and all(answer.targets) and answer.confidence > 0, r.text
