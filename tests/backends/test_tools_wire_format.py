"""Tool turns on SGLang's and Ollama's wire formats, against LOCAL stand-in servers
(tests/servers/wire.py).

The stand-ins are NOT SGLang or Ollama: they check every request field by field against
the documented formats (SGLang's OpenAI-compatible ``tools``/``tool_choice``/
``parallel_tool_calls``; Ollama's ``/api/chat`` ``tools``, which has no ``tool_choice``) and
answer in the documented shapes (OpenAI ``message.tool_calls`` with arguments as a JSON
*string*, streamed as ``delta.tool_calls`` fragments; Ollama ``message.tool_calls`` with
arguments as a JSON *object*, each call whole in one NDJSON line). Their calls are generated
from the tools' schemas, or injected broken, so these tests prove what structgen sends and
how it reads the answers, never anything about the real servers' decoding.
"""

from __future__ import annotations

import json

import pytest

from structgen.backends.base import Finished
from structgen.backends.ollama import OllamaBackend
from structgen.backends.sglang import SGLangBackend
from structgen.errors import BackendProtocolError
from structgen.types import RawToolCall, call_envelope
from tests.backends.helpers import check_call, check_envelope, server_config, tool_request
from tests.servers.wire import Canned, OllamaWireServer, SGLangWireServer


def sglang_chat(server: SGLangWireServer) -> SGLangBackend:
    return SGLangBackend(server_config("sglang", server.base_url, api="openai"))


def ollama_backend(server: OllamaWireServer) -> OllamaBackend:
    return OllamaBackend(server_config("ollama", server.base_url, model="smollm2:135m"))


# SGLang -------------------------------------------------------------------------------
@pytest.mark.parametrize(("choice", "parallel", "expect"), [
    ("required", False, "required"), ("ReadFile", False, {
        "type": "function", "function": {"name": "ReadFile"}}),
    ("auto", False, "auto"), ("required", True, "required")])
async def test_sglang_tools_native_on_the_chat_endpoint(sglang, choice, parallel, expect):
    b = sglang_chat(sglang)
    req = tool_request(choice, parallel=parallel)
    result = await b.agenerate(req)
    path, body = sglang.requests[-1]
    assert sglang.violations == [] and path == "/v1/chat/completions"
    assert body["tool_choice"] == expect and body["parallel_tool_calls"] is parallel
    assert [t["function"]["name"] for t in body["tools"]] == ["RunTests", "ReadFile"]
    assert "response_format" not in body  # the tool choice is the constraint
    assert result.tool_calls and result.finish_reason == "stop"  # not "tool_calls"
    assert len(result.tool_calls) == (2 if parallel else 1)
    for call in result.tool_calls:
        check_call(req.tools, call.name, call.arguments)  # type: ignore[arg-type]
    check_envelope(req.tools, call_envelope(result.tool_calls,  # type: ignore[arg-type]
                                            parallel=parallel))
    # only "auto" leaves SGLang's arguments free: validated after, and reported so
    unconstrained = [str(p) for p in result.post_enforced if str(p).startswith("tools/")]
    assert unconstrained == (["tools/RunTests/arguments", "tools/ReadFile/arguments"]
                             if choice == "auto" else [])


async def test_sglang_tools_auto_text_answer(sglang):
    sglang.reply = "No tool needed."
    result = await sglang_chat(sglang).agenerate(tool_request("auto"))
    assert result.tool_calls == [] and result.text == "No tool needed."


async def test_sglang_tools_native_api_sends_the_envelope_schema(sglang):
    """``/generate`` takes no tools: the turn is plain JSON output, the envelope's schema."""
    b = SGLangBackend(server_config("sglang", sglang.base_url))
    req = tool_request("required")
    result = await b.agenerate(req)
    path, body = sglang.requests[-1]
    assert path == "/generate" and sglang.violations == []
    assert "tools" not in body and json.loads(body["sampling_params"]["json_schema"])
    assert result.tool_calls is None
    check_envelope(req.tools, result.text)  # type: ignore[arg-type]


@pytest.mark.parametrize(("choice", "parallel"), [("ReadFile", False), ("required", True),
                                                  ("auto", False)])
async def test_sglang_tools_stream_is_the_envelope(sglang, choice, parallel):
    b = sglang_chat(sglang)
    req = tool_request(choice, parallel=parallel)
    whole = await b.agenerate(req)
    chunks = [c async for c in b.stream(req)]
    assert len(chunks) > 3 and isinstance(chunks[-1], Finished)
    assert chunks[-1].finish_reason == "stop"
    text = "".join(chunks)
    assert text == call_envelope(whole.tool_calls or [], whole.text, parallel=parallel)
    check_envelope(req.tools, text)  # type: ignore[arg-type]


async def test_sglang_tools_stream_auto_text_is_the_text_envelope(sglang):
    sglang.reply = 'Say "hi"\n'
    chunks = [c async for c in sglang_chat(sglang).stream(tool_request("auto"))]
    assert json.loads("".join(chunks)) == {"text": 'Say "hi"\n'}


async def test_sglang_tools_broken_calls_are_returned_for_validation(sglang):
    """A call the server got wrong (unknown tool, arguments that are not JSON) comes back
    as the server sent it: the envelope then fails validation, nothing is hidden."""
    sglang.tool_calls = [("rm_rf", '{"path": "/"'), ("ReadFile", "not json")]
    req = tool_request("required", parallel=True)
    result = await sglang_chat(sglang).agenerate(req)
    assert [(c.name, c.arguments) for c in result.tool_calls or ()] == sglang.tool_calls
    with pytest.raises(ValueError):
        check_envelope(req.tools, call_envelope(result.tool_calls or [],  # type: ignore[arg-type]
                                                parallel=True))


# Ollama -------------------------------------------------------------------------------
async def test_ollama_tools_auto_is_native_and_unconstrained(ollama):
    b = ollama_backend(ollama)
    req = tool_request("auto")
    result = await b.agenerate(req)
    path, body = ollama.requests[-1]
    assert ollama.violations == [] and path == "/api/chat"
    assert "format" not in body and "tool_choice" not in body  # Ollama has no tool_choice
    assert body["tools"] == req.tools.openai_tools()  # type: ignore[union-attr]
    assert result.tool_calls and len(result.tool_calls) == 1
    call = result.tool_calls[0]
    check_call(req.tools, call.name, call.arguments)  # type: ignore[arg-type]
    assert [str(p) for p in result.post_enforced] == ["tools/RunTests/arguments",
                                                      "tools/ReadFile/arguments"]


@pytest.mark.parametrize("choice", ["required", "ReadFile"])
async def test_ollama_tools_forced_choice_is_the_envelope_format(ollama, choice):
    """Ollama cannot force a call: a forced choice goes as ``format`` = the envelope schema
    (which llama.cpp's grammar enforces), without ``tools``."""
    b = ollama_backend(ollama)
    req = tool_request(choice)
    result = await b.agenerate(req)
    body = ollama.requests[-1][1]
    assert ollama.violations == [] and "tools" not in body
    fmt = body["format"]
    assert {b["properties"]["name"]["const"] for b in fmt.get("anyOf", [fmt])} == (
        {"RunTests", "ReadFile"} if choice == "required" else {choice})
    assert result.tool_calls is None
    value = check_envelope(req.tools, result.text)  # type: ignore[arg-type]
    if choice != "required":
        assert value["name"] == choice


async def test_ollama_tools_stream_is_the_envelope(ollama):
    b = ollama_backend(ollama)
    req = tool_request("auto")
    whole = await b.agenerate(req)
    chunks = [c async for c in b.stream(req)]
    assert isinstance(chunks[-1], Finished) and chunks[-1].finish_reason == "stop"
    text = "".join(chunks)
    assert text == call_envelope(whole.tool_calls or [])
    check_envelope(req.tools, text)  # type: ignore[arg-type]
    ollama.reply = "Nothing to run."
    chunks = [c async for c in b.stream(req)]
    assert json.loads("".join(chunks)) == {"text": "Nothing to run."}


async def test_ollama_tools_arguments_must_be_an_object(ollama):
    """Ollama documents arguments as a JSON object; a string there is a protocol error."""
    ollama.tool_calls = [("ReadFile", "not json")]
    with pytest.raises(BackendProtocolError, match="wrong shape"):
        await ollama_backend(ollama).agenerate(tool_request("auto"))


async def test_sglang_tools_stream_call_without_arguments(sglang):
    """A call whose arguments never came is ``"arguments":{}``, as ``call_envelope``
    writes it, so the stream and the whole answer agree."""
    sglang.tool_calls = [("RunTests", "")]
    req = tool_request("required")
    text = "".join([c async for c in sglang_chat(sglang).stream(req)])
    assert json.loads(text) == {"name": "RunTests", "arguments": {}}
    assert text == call_envelope([RawToolCall("RunTests", "")])


async def test_sglang_tools_stream_fragments_out_of_order_are_a_protocol_error(sglang):
    events = [{"choices": [{"index": 0, "delta": {"tool_calls": [
                  {"index": i, "function": {"name": "ReadFile", "arguments": "{}"}}]}}]}
              for i in (1, 0)]
    lines = [f"data: {json.dumps(e)}\n\n".encode() for e in events]
    sglang.canned = Canned(chunks=(*lines, b"data: [DONE]\n\n"),
                           content_type="text/event-stream")
    with pytest.raises(BackendProtocolError, match="continued after"):
        _ = [c async for c in sglang_chat(sglang).stream(tool_request("required",
                                                                      parallel=True))]


def test_tool_calling_table_is_documented():
    """Every built-in backend's tool-calling row is in docs/capabilities.md's tool table,
    a server only constrains choices it answers natively, and a backend has a row for each
    value of the config field its rows are keyed by."""
    import typing
    from pathlib import Path

    from structgen.backends.capabilities import tool_calling_matrix
    from structgen.config import Config
    from structgen.registry import BACKENDS, BUILT_IN_BACKENDS, lookup

    doc = (Path(__file__).resolve().parents[2] / "docs/capabilities.md").read_text()
    table = doc[doc.index("## Tool calling"):]
    rows = tool_calling_matrix(BUILT_IN_BACKENDS)
    documented = {line.split("`")[1] for line in table.splitlines() if line.startswith("| `")}
    assert documented == set(rows)
    for row, calling in rows.items():
        assert calling.constrained <= calling.native <= {"auto", "required", "named"}, row
    for name in BUILT_IN_BACKENDS:
        cls = lookup(BACKENDS, name, "backend")
        if getattr(cls, "api_field", None):
            field = Config.model_fields[name].annotation.model_fields[cls.api_field]
            assert set(cls.tool_calling_rows) == set(typing.get_args(field.annotation)), name
