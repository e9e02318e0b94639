"""Two ``structgen serve`` replicas sharing one real redis-server: one answers from the
other's cache. A replica that is full answers 503 (with ``Retry-After``) at once instead of
queueing without bound, and stays up; a key over its own limit gets 429."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.cache.conftest import RedisServer
from tests.server.conftest import KEY, Served, start_server, tiny_config

pytestmark = [pytest.mark.slow, pytest.mark.redis]

QUESTION = [{"role": "user", "content": "Which colour?"}]


@pytest.fixture(scope="module")
def replicas(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[tuple[Served, Served]]:
    folder = tmp_path_factory.mktemp("replicas")
    redis = RedisServer(folder)
    redis.wait()
    cache = f'backend = "redis"\nurl = "redis://127.0.0.1:{redis.port}/0"'
    started: list[Served] = []
    try:
        started.append(start_server(folder / "a", tiny_config(
            tiny_model_dir, folder / "a", cache, max_concurrency=1, max_queue=1)))
        started.append(start_server(folder / "b", tiny_config(
            tiny_model_dir, folder / "b", cache, max_concurrency_per_key=1)))
        yield started[0], started[1]
    finally:
        codes = [s.stop() for s in started]
        redis.stop()
    assert codes == [0, 0]


def test_a_replica_answers_from_the_others_cache(replicas: tuple[Served, Served]) -> None:
    a, b = (openai.OpenAI(base_url=s.openai_url, api_key=KEY, max_retries=0, timeout=300)
            for s in replicas)
    fmt = {"choice": ["red", "green", "blue", "cyan"]}
    first = a.chat.completions.create(model="structgen", messages=QUESTION,  # type: ignore
                                      max_tokens=10, extra_body={"structured_outputs": fmt})
    second = b.chat.completions.create(model="structgen", messages=QUESTION,  # type: ignore
                                       max_tokens=10, extra_body={"structured_outputs": fmt})
    assert (first.model_extra or {})["structgen"]["cached"] is False
    assert (second.model_extra or {})["structgen"]["cached"] is True
    assert second.choices[0].message.content == first.choices[0].message.content


def test_a_full_replica_answers_503_and_stays_up(replicas: tuple[Served, Served]) -> None:
    """200 requests at once against max_concurrency 1 + max_queue 1: the first two are
    answered (valid), the rest get 503 with Retry-After; nothing else, no crash."""
    served = replicas[0]

    async def flood() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=300)
        async with httpx.AsyncClient(timeout=300, limits=limits,
                                     headers={"Authorization": f"Bearer {KEY}"}) as client:
            return await asyncio.gather(*(client.post(
                f"{served.url}/v1/chat/completions", json={
                    "model": "structgen", "max_tokens": 200, "seed": i, "temperature": 1.0,
                    "messages": [{"role": "user", "content": f"letters {i}"}],
                    "structured_outputs": {"regex": "[a-z]{150}"}}) for i in range(200)))

    responses = asyncio.run(flood())
    codes = [r.status_code for r in responses]
    assert set(codes) == {200, 503}, codes
    assert 2 <= codes.count(200) < 200
    for r in responses:
        if r.status_code == 200:
            assert re.fullmatch("[a-z]{150}", r.json()["choices"][0]["message"]["content"])
        else:
            assert r.headers["retry-after"] and r.json()["error"]["type"] == "server_busy"
    assert httpx.get(f"{served.url}/health").status_code == 200
    metrics = httpx.get(f"{served.url}/metrics", headers={"Authorization": f"Bearer {KEY}"})
    assert re.search(r'structgen_http_requests_total\{route="/v1/chat/completions",'
                     r'status="503"\} (\d+)', metrics.text)


def test_a_key_over_its_limit_gets_429(replicas: tuple[Served, Served]) -> None:
    """Replica b allows one request in flight per key: of 6 at once with one key, one is
    answered and the others get 429; the server's own limit is not what refused them."""
    served = replicas[1]

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=300, headers={
                "Authorization": f"Bearer {KEY}"}) as client:
            return await asyncio.gather(*(client.post(
                f"{served.url}/v1/chat/completions", json={
                    "model": "structgen", "max_tokens": 200, "seed": 100 + i,
                    "temperature": 1.0, "messages": [{"role": "user", "content": f"k {i}"}],
                    "structured_outputs": {"regex": "[a-z]{150}"}}) for i in range(6)))

    codes = sorted(r.status_code for r in asyncio.run(burst()))
    assert codes[0] == 200 and set(codes) == {200, 429}, codes
