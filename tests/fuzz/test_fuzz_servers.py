"""Fuzzing the server backends with random answers from the local stand-in servers.

Whatever a server sends (any status, any body, JSON of the right or wrong shape, SSE or
NDJSON framing cut anywhere, bodies split into random chunks or hung up on), a backend
either returns a GenerationResult with text or raises a BackendError subclass: never
another exception, never a hang (every call runs under a deadline).

Derandomized with a bounded example count so CI is reproducible; EXAMPLES per test (x2
tests, and half as many answers to a tool turn) inputs per run. ``STRUCTGEN_FUZZ_EXAMPLES``
raises it for a longer local run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from structgen.backends.base import GenerationRequest, GenerationResult, run_sync
from structgen.backends.ollama import OllamaBackend
from structgen.backends.sglang import SGLangBackend
from structgen.backends.vllm import VLLMBackend
from structgen.errors import BackendError
from structgen.types import RawToolCall
from tests.backends.helpers import request, server_config, tool_request
from tests.servers.wire import (
    Canned,
    OllamaWireServer,
    SGLangWireServer,
    VLLMWireServer,
    WireServer,
)

from .conftest import TRIED

EXAMPLES = int(os.environ.get("STRUCTGEN_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
FLAVORS = ("vllm", "sglang", "sglang-openai", "ollama")
CALL_DEADLINE_S = 3.0
REQUEST = request(SCHEMA)  # compiled once: the fuzzed part is the answer

# Any JSON value, small and occasionally deep.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20)


def field(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A field's value: usually the right type, sometimes anything."""
    return st.one_of(good, good, json_values)


def maybe(d: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """A dict with each key present or missing."""
    return st.fixed_dictionaries({}, optional=d)


text = st.text(max_size=30)
count = st.integers(min_value=-5, max_value=10**30)
openai_choice = maybe({"message": field(maybe({"role": st.just("assistant"),
                                               "content": field(text)})),
                       "delta": field(maybe({"content": field(text)})),
                       "text": field(text),
                       "finish_reason": field(st.sampled_from(["stop", "length"]))})
openai_answer = maybe({"model": field(text), "choices": field(st.lists(openai_choice,
                                                                      max_size=2)),
                       "usage": field(maybe({"prompt_tokens": field(count),
                                             "completion_tokens": field(count)})),
                       "metrics": field(maybe({"queue_time_ms": field(st.floats()),
                                               "time_to_first_token_ms": field(count)})),
                       "error": json_values})
sglang_answer = maybe({"text": field(text),
                       "meta_info": field(maybe({
                           "finish_reason": field(maybe({"type": field(text)})),
                           "prompt_tokens": field(count), "e2e_latency": field(st.floats()),
                       })),
                       "error": json_values})
ollama_answer = maybe({"model": field(text), "response": field(text),
                       "message": field(maybe({"content": field(text),
                                               "thinking": field(text)})),
                       "done": field(st.booleans()), "done_reason": field(text),
                       "total_duration": field(count), "eval_count": field(count),
                       "error": json_values})
ANSWERS = {"vllm": openai_answer, "sglang": sglang_answer, "sglang-openai": openai_answer,
           "ollama": ollama_answer}

# Answers to a tool turn: calls of (mostly) the documented shapes, streamed as fragments
# with any index order; Ollama's arguments are an object, the OpenAI format's a string.
openai_tool_call = maybe({"index": field(st.integers(-2, 4)), "id": field(text),
                          "type": st.just("function"),
                          "function": field(maybe({"name": field(st.sampled_from(
                              ["RunTests", "ReadFile", "", "x\u0000"]) | text),
                              "arguments": field(st.sampled_from(
                                  ['{"path":"a"', '}', '{"', "null", ""]) | text)}))})
openai_tool_message = maybe({"content": field(text),
                             "tool_calls": field(st.lists(openai_tool_call, max_size=3))})
# answers of the right outline (one choice carrying calls) more often than chance gives them
good_tool_call = st.fixed_dictionaries(
    {"function": st.fixed_dictionaries({"name": st.sampled_from(["ReadFile", "RunTests"])},
                                       optional={"arguments": text})},
    optional={"index": st.integers(0, 3), "id": text})
openai_tool_calls = st.one_of(st.lists(good_tool_call, min_size=1, max_size=3),
                              st.lists(openai_tool_call, min_size=1, max_size=3))
openai_tool_answer = st.one_of(
    st.fixed_dictionaries({"choices": st.lists(st.fixed_dictionaries(
        {"message": st.fixed_dictionaries({"tool_calls": openai_tool_calls}),
         "delta": st.fixed_dictionaries({"tool_calls": openai_tool_calls})},
        optional={"finish_reason": st.sampled_from(["stop", "length", "tool_calls"])}),
        min_size=1, max_size=1)}),
    maybe({"model": field(text), "choices": field(st.lists(maybe({
        "message": field(openai_tool_message), "delta": field(openai_tool_message),
        "finish_reason": field(st.sampled_from(["stop", "length", "tool_calls"]))}),
        max_size=2)), "error": json_values}))
ollama_tool_answer = maybe({"model": field(text), "done": field(st.booleans()),
                            "done_reason": field(text), "message": field(maybe({
                                "content": field(text), "tool_calls": field(st.lists(
                                    maybe({"function": field(maybe({
                                        "name": field(text),
                                        "arguments": field(st.dictionaries(
                                            st.text(max_size=5), json_values, max_size=3))}))}),
                                    max_size=3))})),
                            "error": json_values})
TOOL_ANSWERS = {"vllm": openai_tool_answer, "sglang-openai": openai_tool_answer,
                "ollama": ollama_tool_answer}
# the choice each backend answers natively (its tool_calling_rows): what the fuzzed answer reaches
TOOL_REQUESTS = {"vllm": tool_request("ReadFile"), "sglang-openai": tool_request("required"),
                 "ollama": tool_request("auto")}


@st.composite
def bodies(draw: st.DrawFn, flavor: str, streamed: bool,
           table: dict[str, st.SearchStrategy[Any]] = ANSWERS) -> bytes:
    """A whole answer body: framed events of (mostly) the right shape, or anything."""
    answer = table[flavor]
    if not streamed:
        value = draw(st.one_of(answer, answer, json_values))
        raw = json.dumps(value).encode()
        return draw(st.one_of(st.just(raw), st.binary(max_size=60),
                              st.just(raw[: draw(st.integers(0, len(raw)))])))
    events = draw(st.lists(st.one_of(answer, json_values), max_size=5))
    if flavor == "ollama":
        lines = [json.dumps(e) + "\n" for e in events]
    else:
        lines = [f"data: {json.dumps(e)}\n\n" for e in events]
        if draw(st.booleans()):
            lines.append("data: [DONE]\n\n")
    lines.extend(draw(st.lists(st.sampled_from(
        ["\n", "data:\n", ": comment\n", "event: x\n", "data: [DONE]\n\n", "data: {\n",
         "data: 42\n\n", "\r\n", "\x00\xff", "data: " + "[" * 3000 + "\n\n"]), max_size=2)))
    order = draw(st.permutations(lines)) if draw(st.booleans()) else lines
    return "".join(order).encode("utf-8", "surrogatepass")


@st.composite
def answers(draw: st.DrawFn, flavor: str, streamed: bool,
            table: dict[str, st.SearchStrategy[Any]] = ANSWERS) -> Canned:
    body = draw(bodies(flavor, streamed, table))
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=4)))
    chunks = tuple(part for part in (body[a:b] for a, b in
                                     zip([0, *cuts], [*cuts, len(body)], strict=True)) if part)
    return Canned(
        status=draw(st.one_of(st.just(200), st.integers(200, 599))),
        chunks=chunks,
        content_type=draw(st.sampled_from(["application/json", "text/event-stream",
                                           "application/x-ndjson", "text/plain"])),
        cut=draw(st.booleans()),
        length=draw(st.booleans()))


@pytest.fixture(scope="module")
def backends() -> Iterator[dict[str, tuple[WireServer, Any]]]:
    with VLLMWireServer() as v, SGLangWireServer() as s, OllamaWireServer() as o:
        made: dict[str, tuple[WireServer, Any]] = {}
        for flavor, server, cls in (("vllm", v, VLLMBackend), ("sglang", s, SGLangBackend),
                                    ("sglang-openai", s, SGLangBackend),
                                    ("ollama", o, OllamaBackend)):
            extra = {"api": "openai"} if flavor == "sglang-openai" else {}
            cfg = server_config(cls.name, server.base_url, model="m", read_timeout_s=2,
                                **extra)
            made[flavor] = (server, cls(cfg))
        yield made
        for _server, backend in made.values():
            run_sync(backend.aclose())


def _call(backend: Any, streamed: bool, request: GenerationRequest = REQUEST) -> str:
    req = dataclasses.replace(request, deadline=time.monotonic() + CALL_DEADLINE_S)

    async def go() -> str:
        if streamed:
            return "".join([c async for c in backend.stream(req)])
        result = await backend.agenerate(req)
        assert isinstance(result, GenerationResult) and isinstance(result.text, str)
        if req.tools is not None:  # a native tool answer: calls of the declared type
            assert isinstance(result.tool_calls, list)
            assert all(isinstance(c, RawToolCall) and isinstance(c.arguments, str)
                       for c in result.tool_calls)
        return result.text

    return str(run_sync(go()))


def _fuzz(backends: dict[str, tuple[WireServer, Any]], flavor: str, canned: Canned,
          streamed: bool, request: GenerationRequest = REQUEST) -> None:
    server, backend = backends[flavor]
    server.canned = canned
    what = "tool " if request.tools is not None else ""
    TRIED[f"server {what}streams" if streamed else f"server {what}answers"] += 1
    start = time.monotonic()
    try:
        _call(backend, streamed, request)
    except BackendError:
        pass  # the only kind of failure allowed
    finally:
        server.canned = None
    assert time.monotonic() - start < CALL_DEADLINE_S + 2  # bounded by the deadline


@FUZZ
@given(data=st.data())
def test_fuzz_server_answers(backends: dict[str, tuple[WireServer, Any]],
                             data: st.DataObject) -> None:
    flavor = data.draw(st.sampled_from(FLAVORS))
    _fuzz(backends, flavor, data.draw(answers(flavor, streamed=False)), streamed=False)


@FUZZ
@given(data=st.data())
def test_fuzz_server_streams(backends: dict[str, tuple[WireServer, Any]],
                             data: st.DataObject) -> None:
    flavor = data.draw(st.sampled_from(FLAVORS))
    _fuzz(backends, flavor, data.draw(answers(flavor, streamed=True)), streamed=True)


@settings(FUZZ, max_examples=max(1, EXAMPLES // 2))
@given(data=st.data())
def test_fuzz_server_tool_answers(backends: dict[str, tuple[WireServer, Any]],
                                  data: st.DataObject) -> None:
    """Answers to a tool turn, whole or streamed: calls without names, arguments of the
    wrong type, fragments out of order. A result or a BackendError, nothing else."""
    flavor = data.draw(st.sampled_from(sorted(TOOL_ANSWERS)))
    streamed = data.draw(st.booleans())
    canned = data.draw(st.one_of(answers(flavor, streamed, TOOL_ANSWERS),
                                 framed_tool_answers(flavor, streamed)))
    _fuzz(backends, flavor, canned, streamed, TOOL_REQUESTS[flavor])


@st.composite
def framed_tool_answers(draw: st.DrawFn, flavor: str, streamed: bool) -> Canned:
    """HTTP 200 and intact framing, so the fuzzed content reaches the tool-call parsing
    (random framing ends most answers before it)."""
    answer = TOOL_ANSWERS[flavor]
    if not streamed:
        return Canned(chunks=(json.dumps(draw(answer)).encode(),), length=True)
    events = draw(st.lists(answer, min_size=1, max_size=5))
    if flavor == "ollama":
        lines = [json.dumps(e) + "\n" for e in events]
    else:
        lines = [f"data: {json.dumps(e)}\n\n" for e in events] + ["data: [DONE]\n\n"]
    return Canned(chunks=("".join(lines).encode(),), content_type="text/event-stream",
                  length=True)
