"""Bad input and shutdown against a live ``structgen serve``: each answered with its own
status in the API's own shape, never a traceback; SIGTERM finishes what is in flight."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from tests.server.conftest import KEY, Served, start_server, tiny_config

pytestmark = pytest.mark.slow

AUTH = {"Authorization": f"Bearer {KEY}"}


def post(server: Served, path: str, content: bytes, headers: dict[str, str] | None = None,
         ) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", content=content, timeout=120,
                      headers={"Content-Type": "application/json", **AUTH, **(headers or {})})


def test_no_key_and_wrong_key_are_401(tiny_server: Served) -> None:
    body = json.dumps({"model": "structgen", "messages": [{"role": "user", "content": "x"}]})
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer nope"},
                    {"Authorization": f"Basic {KEY}"}):
        response = post(tiny_server, "/v1/chat/completions", body.encode(), headers)
        assert response.status_code == 401, headers
        assert response.json()["error"]["type"] == "invalid_api_key"
        assert KEY not in response.text
    assert httpx.get(f"{tiny_server.url}/health").status_code == 200  # open: a probe
    assert KEY not in tiny_server.output()  # never logged


def test_body_over_the_limit_is_413(tiny_server: Served) -> None:
    big = json.dumps({"model": "structgen", "messages": [
        {"role": "user", "content": "x" * (10 * 1024 * 1024)}]}).encode()
    response = post(tiny_server, "/v1/chat/completions", big)
    assert response.status_code == 413
    assert "1048576" in response.json()["error"]["message"]

    def chunked() -> Any:  # no Content-Length: counted as it arrives
        for _ in range(20):
            yield b" " * 100_000
    response = httpx.post(f"{tiny_server.url}/api/chat", content=chunked(), headers=AUTH,
                          timeout=120)
    assert response.status_code == 413 and "error" in response.json()


def test_a_body_sent_one_byte_at_a_time_is_dropped_at_the_timeout(tiny_server: Served
                                                                  ) -> None:
    """The body must arrive within [server] body_timeout_s (3 s here): a client trickling
    it is answered 408 and does not hold the server."""
    host, port = tiny_server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: "
                     f"Bearer {KEY}\r\nContent-Type: application/json\r\n"
                     "Content-Length: 1000\r\n\r\n".encode())
        answer = b""
        for _ in range(100):  # one byte every 0.1 s: 10 s for the whole body
            try:
                sock.sendall(b" ")
            except OSError:  # the server answered and closed
                break
            time.sleep(0.1)
            sock.setblocking(False)
            try:
                answer += sock.recv(65536)
            except BlockingIOError:
                pass
            finally:
                sock.setblocking(True)
            if answer:
                break
        sock.settimeout(30)
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert httpx.get(f"{tiny_server.url}/health").status_code == 200


class Trickle:
    """A raw connection that sends ``head`` at once, then ``rest`` one byte per tick, and
    records what comes back until the server closes it."""

    def __init__(self, server: Served, head: bytes, rest: bytes) -> None:
        host, port = server.url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.sock.sendall(head)
        self.sock.setblocking(False)
        self.rest = rest
        self.answer = b""
        self.closed_after: int | None = None  # ticks until the server closed it

    def tick(self, n: int) -> None:
        if self.closed_after is not None:
            return
        try:
            while chunk := self.sock.recv(65536):
                self.answer += chunk
            self.closed_after = n  # b"": the server closed the connection
        except BlockingIOError:
            if n < len(self.rest):
                with contextlib.suppress(BlockingIOError, BrokenPipeError):
                    self.sock.send(self.rest[n:n + 1])
        except ConnectionResetError:
            self.closed_after = n
        if self.closed_after is not None:
            self.sock.close()


def trickle(server: Served, clients: list[Trickle], ticks: int) -> None:
    """One byte a second on every client while another client is answered each second."""
    for n in range(ticks):
        for client in clients:
            client.tick(n)
        if all(c.closed_after is not None for c in clients):
            return
        assert httpx.get(f"{server.url}/health", timeout=30).status_code == 200
        time.sleep(1)


def test_headers_sent_one_byte_a_second_are_dropped_at_the_timeout(tiny_server: Served
                                                                  ) -> None:
    """[server] header_timeout_s is 3 s here: 20 clients trickling their request line
    (80 s to send it whole) and one that sends nothing are answered 408 and closed within
    the timeout and a margin, while other clients are served; uvicorn alone waits for
    ever."""
    request = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
               f"{KEY}\r\nContent-Type: application/json\r\n\r\n").encode()
    clients = [Trickle(tiny_server, b"", request) for _ in range(20)]
    clients.append(Trickle(tiny_server, b"", b""))
    trickle(tiny_server, clients, 20)
    for client in clients:
        assert client.closed_after is not None and client.closed_after <= 10, client.answer
        assert client.answer.startswith(b"HTTP/1.1 408"), client.answer[:200]


def test_a_body_nobody_reads_is_dropped_at_the_timeout(tiny_server: Served) -> None:
    """Without a key the answer (401) goes out before the body is read; a client that
    goes on trickling that body is still closed at body_timeout_s (3 s) + a margin."""
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
            b"application/json\r\nContent-Length: 1000\r\n\r\n")
    clients = [Trickle(tiny_server, head, b" " * 1000) for _ in range(5)]
    trickle(tiny_server, clients, 20)
    for client in clients:
        assert client.closed_after is not None and client.closed_after <= 10, client.answer
        assert client.answer.startswith(b"HTTP/1.1 401"), client.answer[:200]


def test_headers_over_the_limit_are_refused(tiny_server: Served) -> None:
    """Request headers are capped at 64 kB: over it, 431 when they arrive in one piece
    (h11 takes those whole), 400 from h11 when they arrive in pieces."""
    for size, status in ((40_000, 200), (100_000, 431)):
        response = httpx.get(f"{tiny_server.url}/health", headers={"X-Pad": "x" * size})
        assert response.status_code == status, size
    response = httpx.get(f"{tiny_server.url}/api/tags", headers={"X-Pad": "x" * 100_000})
    assert response.status_code == 431 and "65536" in response.json()["error"]
    host, port = tiny_server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: ")
        with contextlib.suppress(OSError):  # the server may close while this is sent
            for _ in range(10):
                sock.sendall(b"x" * 10_000)
                time.sleep(0.05)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert httpx.get(f"{tiny_server.url}/health").status_code == 200


@pytest.mark.parametrize("body", [b"{not json", b"", b"[1, 2]", b"\xff\xfe", b"1" * 5000,
                                  b"[" * 100_000])
def test_malformed_json_is_400(tiny_server: Served, body: bytes) -> None:
    response = post(tiny_server, "/v1/chat/completions", body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"]


def test_wrong_shapes_are_400(tiny_server: Served) -> None:
    for body in ({"model": "structgen"}, {"model": "structgen", "messages": []},
                 {"model": "structgen", "messages": [{"role": "robot", "content": "x"}]},
                 {"model": "structgen", "messages": [{"role": "user", "content": "x"}],
                  "max_tokens": "ten"},
                 {"model": "structgen", "messages": [{"role": "user", "content": "x"}],
                  "tools": [{"type": "function", "function": {"name": "bad name!"}}]}):
        response = post(tiny_server, "/v1/chat/completions", json.dumps(body).encode())
        assert response.status_code == 400, (body, response.text)


def nested_schema(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


def ref_bomb(levels: int) -> dict[str, Any]:
    """Each definition holds the one below twice: 2**levels leaves once expanded."""
    defs = {"d0": {"type": "integer"}}
    for i in range(1, levels):
        defs[f"d{i}"] = {"type": "array", "prefixItems": [{"$ref": f"#/$defs/d{i - 1}"}] * 2}
    return {"$defs": defs, "$ref": f"#/$defs/d{levels - 1}"}


def schema_request(schema: dict[str, Any]) -> bytes:
    return json.dumps({"model": "structgen", "max_tokens": 20,
                       "messages": [{"role": "user", "content": "x"}],
                       "response_format": {"type": "json_schema",
                                           "json_schema": {"name": "bomb", "schema": schema}}
                       }).encode()


def test_deep_schema_bomb_is_400(tiny_server: Served) -> None:
    """Deeper than [limits] max_schema_depth: refused before any compile (the request's
    timeout bounds how long that may take)."""
    response = post(tiny_server, "/v1/chat/completions", schema_request(nested_schema(300)))
    assert response.status_code == 400, response.text[:500]
    error = response.json()["error"]
    assert error["type"] == "invalid_schema" and "depth" in error["message"], error
    assert httpx.get(f"{tiny_server.url}/health").status_code == 200


def test_ref_fanout_schema_is_answered_without_expansion(tiny_server: Served) -> None:
    """2**40 leaves if ``$ref`` were expanded: the compile keeps references, so the answer
    comes (valid) and the server stays up."""
    schema = ref_bomb(40)
    response = post(tiny_server, "/v1/chat/completions", schema_request(schema))
    assert response.status_code == 200, response.text[:500]
    jsonschema.validate(json.loads(response.json()["choices"][0]["message"]["content"]),
                        schema)


def test_no_traceback_in_any_error(tiny_server: Served) -> None:
    body = {"model": "structgen", "messages": [{"role": "user", "content": "x"}],
            "structured_outputs": {"regex": "(unclosed"}}
    response = post(tiny_server, "/v1/chat/completions", json.dumps(body).encode())
    assert response.status_code == 400
    assert "Traceback" not in response.text


def test_request_ids_in_the_access_log(tiny_server: Served) -> None:
    response = httpx.get(f"{tiny_server.url}/v1/models", headers={**AUTH,
                                                                  "X-Request-Id": "rid-4711"})
    assert response.headers["x-request-id"] == "rid-4711"
    access = r"rid-4711 127\.0\.0\.1 GET /v1/models 200"
    assert re.search(access, tiny_server.wait_for_output(access))
    assert httpx.get(f"{tiny_server.url}/health").headers["x-request-id"]


def test_metrics_are_the_engines_registry(tiny_server: Served) -> None:
    text = httpx.get(f"{tiny_server.url}/metrics", headers=AUTH).text
    assert "structgen_http_requests_total" in text
    assert "structgen_in_flight" in text


def test_sigterm_answers_everything_in_flight_then_exits_0(tiny_model_dir: Path,
                                                          tmp_path: Path) -> None:
    server = start_server(tmp_path, tiny_config(tiny_model_dir, tmp_path, drain_s=120))
    client = openai.OpenAI(base_url=server.openai_url, api_key=KEY, max_retries=0,
                           timeout=300)
    answers: list[str] = []
    errors: list[BaseException] = []

    def ask(i: int) -> None:
        try:
            response = client.chat.completions.create(
                model="structgen", messages=[{"role": "user", "content": f"word {i}"}],
                max_tokens=400, seed=i, temperature=1.0,
                extra_body={"structured_outputs": {"regex": "[a-z]{300}"}})
            answers.append(response.choices[0].message.content or "")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        metrics = httpx.get(f"{server.url}/metrics", headers=AUTH).text
        match = re.search(r"^structgen_http_in_flight (\S+)", metrics, re.M)
        if match and float(match.group(1)) >= 8:
            break
        time.sleep(0.02)
    else:
        pytest.fail("the 8 requests were never in flight together")
    server.proc.send_signal(signal.SIGTERM)
    for _ in range(100):  # it stops accepting while the 8 are still being answered
        try:
            httpx.get(f"{server.url}/health", timeout=5)
        except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
            # refused, or reset: a probe that reached the listening socket's backlog just
            # before it closed is reset, never answered (the server's exit and the 8
            # answers are checked below)
            break
        time.sleep(0.1)
    else:
        pytest.fail("still accepting connections 10 s after SIGTERM")
    assert len(answers) < 8
    for t in threads:
        t.join(300)
    assert server.proc.wait(120) == 0, server.output()[-3000:]
    assert not errors, errors
    assert len(answers) == 8
    assert all(re.fullmatch("[a-z]{300}", a) for a in answers), answers
