"""The server's ASGI app in-process, in front of a vLLM wire stand-in (no model): what a
client sends that is wrong is answered 4xx in the API's own error shape, never 500 or
plain text; what a client reads (``finish_reason``, ``/v1/models``) is what the real APIs
answer. The ``openai`` and ``ollama`` packages are the clients where they can be."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import ollama
import openai
import pytest
from starlette.testclient import TestClient

from structgen.engine import Engine
from structgen.server import create_app
from tests.backends.helpers import server_config
from tests.servers.wire import VLLMWireServer

MESSAGES: list[Any] = [{"role": "user", "content": "Status?"}]
READ_FILE = {"type": "function", "function": {"name": "read_file", "parameters": {
    "type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}}


@pytest.fixture(scope="module")
def vllm() -> Iterator[VLLMWireServer]:
    with VLLMWireServer() as server:
        yield server


@pytest.fixture
def http(vllm: VLLMWireServer) -> Iterator[TestClient]:
    vllm.reset()
    engine = Engine(server_config("vllm", vllm.base_url, model="org/tiny"))
    with TestClient(create_app(engine), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def client(http: TestClient) -> openai.OpenAI:
    return openai.OpenAI(base_url="http://testserver/v1", api_key="none", max_retries=0,
                         http_client=http)


def openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    """The response is ``status`` with OpenAI's error object; that object."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}, error
    assert error["message"] and "Traceback" not in response.text
    return dict(error)


def ollama_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.text
    error = response.json()["error"]
    assert isinstance(error, str) and error and "Traceback" not in response.text
    return error


# finish_reason --------------------------------------------------------------------------------
def test_plain_text_cut_at_max_tokens_is_finish_reason_length(vllm: VLLMWireServer,
                                                              client: openai.OpenAI,
                                                              http: TestClient) -> None:
    """A plain-text answer the backend cut at ``max_tokens`` is ``finish_reason: "length"``
    (OpenAI) and ``done_reason: "length"`` (Ollama), as clients check to tell a whole answer
    from a cut one; it was "stop"."""
    vllm.reply, vllm.finish = "The build is", "length"
    answer = client.chat.completions.create(model="structgen", messages=MESSAGES,
                                            max_tokens=3)
    assert answer.choices[0].message.content == "The build is"
    assert answer.choices[0].finish_reason == "length"
    chunks = list(client.chat.completions.create(model="structgen", messages=MESSAGES,
                                                 max_tokens=3, stream=True))
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    ollama_client = ollama.Client(host="http://testserver")
    ollama_client._client = http  # the app in-process, through the ollama package
    reply = ollama_client.chat(model="structgen", messages=MESSAGES,
                               options={"num_predict": 3})
    assert reply.done_reason == "length"
    assert ollama_client.generate(model="structgen", prompt="Status?",
                                  options={"num_predict": 3}).done_reason == "length"

    vllm.finish = "stop"
    answer = client.chat.completions.create(model="structgen", messages=MESSAGES,
                                            max_tokens=30)
    assert answer.choices[0].finish_reason == "stop"


# Bad requests: 4xx in the API's own shape ----------------------------------------------------
@pytest.mark.parametrize("tool_choice", [
    {"type": "function", "function": "read_file"},  # the name where its object should be
    {"type": "function", "function": ["read_file"]},
    {"type": "function", "function": {"name": 5}},
    {"type": "function"},
])
def test_malformed_named_tool_choice_is_400(http: TestClient, tool_choice: Any) -> None:
    response = http.post("/v1/chat/completions", json={
        "model": "structgen", "messages": MESSAGES, "tools": [READ_FILE],
        "tool_choice": tool_choice})
    assert openai_error(response, 400)["param"] == "tool_choice"


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/v1/nothing", 404), ("POST", "/v1/completions", 404),
    ("POST", "/v1/embeddings", 404), ("GET", "/v1/chat/completions", 405),
    ("DELETE", "/v1/models", 405), ("GET", "/api/nothing", 404), ("POST", "/api/tags", 405),
    ("GET", "/api/chat", 405),
])
def test_unknown_routes_and_methods_answer_in_the_apis_shape(http: TestClient, method: str,
                                                             path: str, status: int) -> None:
    """An unserved route or method is the API's own JSON error (a client parses it), not
    Starlette's plain-text "Not Found"."""
    response = http.request(method, path, json={})
    if path.startswith("/api/"):
        ollama_error(response, status)
    else:
        openai_error(response, status)
    if status == 405:
        assert response.headers["allow"]


def test_an_unserved_openai_route_is_a_not_found_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.embeddings.create(model="structgen", input="x")
    assert "/v1/embeddings" in info.value.message


@pytest.mark.parametrize(("field", "value"), [
    ("max_tokens", "10"), ("max_completion_tokens", "10"), ("max_tokens", True),
    ("n", "2"), ("stream", "yes"), ("stream", "false"), ("stream", 1), ("temperature", "0.5"),
    ("top_p", "1"), ("seed", "7"), ("seed", 7.5), ("parallel_tool_calls", "true"),
    ("response_format", {"type": "json_schema", "json_schema": {
        "name": "x", "strict": "yes", "schema": {"type": "object"}}}),
])
def test_openai_wrong_types_are_400_naming_the_field(http: TestClient, field: str,
                                                     value: Any) -> None:
    """OpenAI answers a string for an integer (``"max_tokens": "10"``) with a 400, and so
    does this server: a value is not guessed from another type (pydantic's lax mode took
    "10" as 10 and "false" as false)."""
    response = http.post("/v1/chat/completions", json={
        "model": "structgen", "messages": MESSAGES, field: value})
    assert openai_error(response, 400)["param"].startswith(field)


@pytest.mark.parametrize("body", [
    {"options": {"num_predict": "10"}}, {"options": {"temperature": "0.5"}},
    {"options": {"seed": "7"}}, {"stream": "false"}, {"stream": 0}])
def test_ollama_wrong_types_are_400(http: TestClient, body: dict[str, Any]) -> None:
    for path, request in (("/api/chat", {"messages": MESSAGES}), ("/api/generate",
                                                                    {"prompt": "Status?"})):
        response = http.post(path, json={"model": "structgen", **request, **body})
        assert next(iter(body)) in ollama_error(response, 400)


def test_right_types_are_taken(vllm: VLLMWireServer, client: openai.OpenAI) -> None:
    """Integers for numbers, numbers for floats: what clients send is still served."""
    vllm.reply = "green"
    answer = client.chat.completions.create(
        model="structgen", messages=MESSAGES, max_tokens=10, temperature=1, top_p=1,
        seed=7, n=1, stream=False)
    assert answer.choices[0].message.content == "green"


@pytest.mark.parametrize(("field", "value"), [
    ("max_completion_tokens", 0), ("max_tokens", 0), ("max_tokens", -5),
    ("temperature", -0.5), ("top_p", 0), ("top_p", 1.5)])
def test_sampling_out_of_range_is_400_naming_the_field(http: TestClient, field: str,
                                                       value: Any) -> None:
    """``max_completion_tokens: 0`` was dropped (read with ``or``: no limit at all); the
    others were refused by the engine with ``param: null``."""
    response = http.post("/v1/chat/completions", json={
        "model": "structgen", "messages": MESSAGES, field: value})
    assert openai_error(response, 400)["param"] == field


def test_ollama_sampling_out_of_range_is_400_naming_the_option(http: TestClient) -> None:
    for option, value in (("temperature", -1), ("top_p", 0)):
        response = http.post("/api/chat", json={"model": "structgen", "messages": MESSAGES,
                                                "options": {option: value}})
        assert f"options.{option}" in ollama_error(response, 400)


# What clients read ---------------------------------------------------------------------------
def test_models_retrieve(client: openai.OpenAI, http: TestClient) -> None:
    """``GET /v1/models/{model}`` (the openai package's ``models.retrieve``, which clients
    call to check a model before using it): each listed model, and 404 in OpenAI's shape
    for another."""
    listed = {m.id: m for m in client.models.list()}
    assert set(listed) == {"structgen", "org/tiny"}
    for name, model in listed.items():
        assert client.models.retrieve(name).model_dump() == model.model_dump()
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")
    assert openai_error(http.get("/v1/models/gpt-4o"), 404)["type"] == "model_not_found"
    metrics = http.get("/metrics").text  # counted per route, not per path a client makes up
    assert 'route="/v1/models/{model}"' in metrics and "gpt-4o" not in metrics


@pytest.mark.parametrize("stop", ["", [""], ["END", ""]])
def test_an_empty_stop_string_is_400_naming_the_field(vllm: VLLMWireServer, http: TestClient,
                                                      stop: Any) -> None:
    """An empty stop string matches before the first token: a backend ended the answer at
    once, empty text with ``finish_reason: "stop"``. OpenAI refuses it with a 400; so does this server, in each
    API's shape (Ollama's ``options.stop`` is a list), before the backend is asked."""
    vllm.reply = "green"
    for stream in (False, True):
        response = http.post("/v1/chat/completions", json={
            "model": "structgen", "messages": MESSAGES, "stop": stop, "stream": stream})
        assert openai_error(response, 400)["param"] == "stop"
    if isinstance(stop, list):
        for path, request in (("/api/chat", {"messages": MESSAGES}),
                              ("/api/generate", {"prompt": "Status?"})):
            response = http.post(path, json={"model": "structgen", **request,
                                             "options": {"stop": stop}, "stream": False})
            assert "options.stop" in ollama_error(response, 400)
    assert not vllm.requests


def test_a_stop_string_is_still_taken(vllm: VLLMWireServer, client: openai.OpenAI,
                                      http: TestClient) -> None:
    vllm.reply = "green"
    for stop in ("END", ["END", "\n\n"]):
        answer = client.chat.completions.create(model="structgen", messages=MESSAGES,
                                                stop=stop)
        assert answer.choices[0].message.content == "green"
    response = http.post("/api/chat", json={"model": "structgen", "messages": MESSAGES,
                                            "options": {"stop": ["END"]}, "stream": False})
    assert response.status_code == 200, response.text
    assert [body.get("stop") for _, body in vllm.requests] == [["END"], ["END", "\n\n"],
                                                                ["END"]]


@pytest.mark.parametrize(("body", "param"), [
    ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
    ({"stop": 5}, "stop"),
    ({"stop": [5]}, "stop"),  # pydantic's first error is the str member's: "stop"
    ({"stop": ["END", 5]}, "stop"),
    ({"guided_json": 5}, "guided_json"),
    ({"tool_choice": 5}, "tool_choice"),
    ({"structured_outputs": {"json": 5}}, "structured_outputs.json"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": 5}}},
     "response_format.json_schema.schema"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [
        {"function": {"name": "read_file", "arguments": 5}}]}]},
     "messages.1.tool_calls.0.function.arguments"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, 5]}]},
     "messages.0.content"),
])
def test_a_union_fields_400_names_the_field_not_a_type(http: TestClient, body: dict[str, Any],
                                                       param: str) -> None:
    """A field that takes more than one type: pydantic's error location has the union
    member it tried (``messages.0.content.str``, ``stop.list[str].0``), which is no part of
    the request; ``param`` (and the message) name the request's field."""
    response = http.post("/v1/chat/completions", json={
        "model": "structgen", "messages": MESSAGES, **body})
    error = openai_error(response, 400)
    assert error["param"] == param
    assert error["message"].startswith(f"{param}: ")


@pytest.mark.parametrize(("body", "field"), [
    ({"format": 5}, "format"), ({"format": "yaml"}, "format"), ({"think": 5}, "think"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
    ({"options": {"stop": "END"}}, "options.stop"),
])
def test_ollama_a_union_fields_400_names_the_field_not_a_type(http: TestClient,
                                                              body: dict[str, Any],
                                                              field: str) -> None:
    response = http.post("/api/chat", json={"model": "structgen", "messages": MESSAGES,
                                            "stream": False, **body})
    assert ollama_error(response, 400).startswith(f"{field}: ")


def test_field_path_leaves_out_union_members_only() -> None:
    """Tags are dropped wherever the union is (inside a list, a dict, a nested model); a
    dict key or a field that looks like a type name is kept."""
    from pydantic import Field, ValidationError

    from structgen.server.calls import Wire, field_path

    class Inner(Wire):
        str_: int | list[int] = Field(alias="str")

    class Outer(Wire):
        items: list[Inner | bool] = []
        table: dict[str, list[int] | str] = {}
        plain: list[int] = []

    def where(body: dict[str, Any]) -> list[str]:
        with pytest.raises(ValidationError) as info:
            Outer.model_validate(body)
        return [field_path(Outer, e["loc"]) for e in info.value.errors()]

    assert where({"items": [True, {"str": "x"}]}) == ["items.1.str", "items.1.str",
                                                      "items.1"]
    assert where({"items": [{"str": [1, "x"]}]}) == ["items.0.str", "items.0.str.1",
                                                     "items.0"]
    assert where({"table": {"str": [1, "x"]}}) == ["table.str.1", "table.str"]
    assert where({"plain": [1, "x"]}) == ["plain.1"]
