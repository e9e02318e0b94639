"""Continuous batching on the embedded backend (llama.cpp runtime): requests join a running
batch between decode steps and leave it the moment they finish, long prompts join in
chunks, and a request waits for KV room instead of failing its neighbours. Greedy output
never depends on who decodes beside it."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from structgen.backends.base import Finished
from structgen.errors import BackendError
from structgen.types import Choice
from structgen.validate import validate_text

from .test_llamacpp import chat, gen, make
from .test_local import LongNames

# with favorite_gguf("a"), a string that never ends: only budget-aware closing ends it
RUNAWAY = {"type": "object", "properties": {"title": {"type": "string"},
                                            "tags": {"type": "array",
                                                     "items": {"type": "string"}}},
           "required": ["title", "tags"], "additionalProperties": False}


async def _long_then_short(backend: Any, engine: Any) -> tuple[list[str], Any, Any]:
    """Start a long answer; once its first tokens stream, send a one-token choice. The
    order in which they finish, and both results."""
    order: list[str] = []
    long_req = engine.build_request("Classify it", RUNAWAY, max_tokens=1500)
    short_req = engine.build_request("Is 7 prime?", Choice(["yes", "no"]), max_tokens=8)
    started = asyncio.Event()

    async def long() -> Any:
        async for _ in backend.stream(long_req):
            started.set()
        order.append("long")

    async def short() -> Any:
        await started.wait()
        result = await backend.agenerate(short_req)
        order.append("short")
        return result

    _, result = await asyncio.gather(long(), short())
    return order, long_req, result


def test_a_short_request_does_not_wait_for_a_running_long_one(favorite_gguf: Any) -> None:
    """Head-of-line blocking: under static batching the choice waits for the whole running
    batch; under continuous batching it joins it and finishes first."""
    eng, backend = make(favorite_gguf("a"), batching="continuous", max_batch=4)
    order, _, result = asyncio.run(_long_then_short(backend, eng))
    assert order == ["short", "long"]
    assert result.stats["joined_running_batch"] == 1
    assert result.text in ("yes", "no")

    eng2, static = make(favorite_gguf("a"), max_batch=4, batching="static")
    order, _, _ = asyncio.run(_long_then_short(static, eng2))
    assert order == ["long", "short"]


@pytest.mark.parametrize("kv_cache", ["unified", "per_sequence"])
def test_greedy_output_is_the_same_whoever_joins_or_leaves(tiny_gguf: Path,
                                                            kv_cache: str) -> None:
    """Interleaved arrivals (each request starts when the previous one has streamed its
    first tokens), long prompts prefilled in chunks of 16 tokens beside running decode
    steps: every answer is the one it gets decoding alone (in a unified KV cache), with
    one KV cache for all or a KV stream per sequence."""
    users = ["Add a flag to cli.py", "Why does test_api fail? " * 6, "Rename db.py",
             "Explain what the scheduler in app/jobs/queue.py does " * 3]
    eng, alone = make(tiny_gguf, batching="continuous", prefix_cache_entries=0, max_batch=1)
    expected = [gen(eng, alone, LongNames, chat(u)).text for u in users]
    eng2, backend = make(tiny_gguf, batching="continuous", prefix_cache_entries=0,
                          max_batch=4, prefill_chunk=16, kv_cache=kv_cache)

    async def staggered() -> list[Any]:
        results: list[Any] = [None] * len(users)
        gates = [asyncio.Event() for _ in users]
        gates[0].set()

        async def one(i: int) -> None:
            await gates[i].wait()
            text = ""
            req = eng2.build_request(chat(users[i]), LongNames, max_tokens=160)
            async for chunk in backend.stream(req):
                if isinstance(chunk, str):
                    text += chunk
                if i + 1 < len(users) and len(text) > 8:
                    gates[i + 1].set()
            if i + 1 < len(users):
                gates[i + 1].set()
            results[i] = text

        await asyncio.gather(*(one(i) for i in range(len(users))))
        return results

    assert asyncio.run(staggered()) == expected


def _join_a_running_answer(eng: Any, backend: Any, lead_prompt: Any, join_prompt: Any) -> Any:
    """The result of a yes/no request sent once a long ``RUNAWAY`` answer to
    ``lead_prompt`` has started decoding (it joins that running batch)."""

    async def run() -> Any:
        lead = eng.build_request(lead_prompt, RUNAWAY, max_tokens=1500)
        started = asyncio.Event()

        async def decode_lead() -> None:
            async for _ in backend.stream(lead):
                started.set()

        async def join() -> Any:
            await started.wait()
            return await backend.agenerate(eng.build_request(
                join_prompt, Choice(["yes", "no"]), max_tokens=8))

        _, joined = await asyncio.gather(decode_lead(), join())
        return joined

    return asyncio.run(run())


def test_a_long_prompt_joins_in_chunks(favorite_gguf: Any) -> None:
    """A prompt joining a running batch is prefilled ``prefill_chunk`` tokens per step."""
    eng, backend = make(favorite_gguf("a"), batching="continuous", prefix_cache_entries=0,
                        max_batch=2,
                        prefill_chunk=16)
    long_user = "Explain what the scheduler in app/jobs/queue.py does " * 8

    joined = _join_a_running_answer(eng, backend, "Classify it", chat(long_user))
    assert joined.stats["joined_running_batch"] == 1
    chunks = -(-joined.stats["prefill_tokens"] // 16)
    assert chunks > 4
    # one pass per chunk (a one-token choice then needs no decode pass of its own)
    assert joined.stats["forward_passes"] >= chunks


def _prompt_of(backend: Any, eng: Any, tokens: int) -> list[dict[str, str]]:
    """A chat whose prompt is ``tokens`` tokens long (within a few) on ``backend``'s model."""
    rt = backend.runtime(None)
    for words in range(1, tokens):
        msgs = [{"role": "user", "content": "word " * words}]
        if len(rt.prompt_ids(eng.build_request(msgs, LongNames))) >= tokens:
            return msgs
    raise AssertionError("unreachable: every word is at least one token")


def test_a_request_waits_for_kv_room_instead_of_failing_its_batch(tiny_gguf: Path) -> None:
    """context_size=512, max_batch=4: a short prompt and a 475-token one sent together each
    fit alone but not side by side; the second waits its turn, and both are answered."""
    eng, backend = make(tiny_gguf, batching="continuous", prefix_cache_entries=0, max_batch=4,
                        context_size=512)
    long_msgs = _prompt_of(backend, eng, 475)

    async def both() -> list[Any]:
        return await asyncio.gather(
            backend.agenerate(eng.build_request(chat("Fix db.py"), LongNames, max_tokens=20)),
            backend.agenerate(eng.build_request(long_msgs, LongNames, max_tokens=20)))

    short, long = asyncio.run(both())
    assert short.text and long.text
    assert short.stats["batch_size"] == long.stats["batch_size"] == 1


def test_a_prompt_that_can_never_fit_fails_at_once(tiny_gguf: Path) -> None:
    eng, backend = make(tiny_gguf, batching="continuous", context_size=256)
    msgs = [{"role": "user", "content": "word " * 400}]
    with pytest.raises(BackendError, match=r"context_size=256"):
        gen(eng, backend, LongNames, msgs)


def test_per_sequence_kv_streams_split_the_context(tiny_gguf: Path) -> None:
    """kv_cache = "per_sequence": each of max_batch sequences has context_size / max_batch
    cells of its own, so a prompt a unified cache of that size holds is refused at once,
    the setting named."""
    long_msgs = [{"role": "user", "content": "word " * 150}]  # ~610 tokens
    eng, unified = make(tiny_gguf, batching="continuous", context_size=2048, max_batch=4)
    assert gen(eng, unified, LongNames, long_msgs).text
    eng2, streams = make(tiny_gguf, batching="continuous", context_size=2048, max_batch=4,
                         kv_cache="per_sequence")
    assert gen(eng2, streams, LongNames, chat("Rename db.py")).text
    with pytest.raises(BackendError, match=r"512 tokens a sequence.*per_sequence"):
        gen(eng2, streams, LongNames, long_msgs)


def test_an_answer_longer_than_its_kv_stream_is_closed_there(favorite_gguf: Any) -> None:
    """per_sequence streams of 512 cells: an answer that never ends on its own (max_tokens
    1,500) is closed, valid, within its stream, and the request decoding beside it is
    answered; before, the full stream failed the whole batch ("no room left")."""
    eng, backend = make(favorite_gguf("a"), batching="continuous", context_size=2048,
                        max_batch=4, kv_cache="per_sequence")
    long_req = eng.build_request("Classify it", RUNAWAY, max_tokens=1500)

    async def both() -> tuple[str, Any, Any]:
        text, last, started = "", None, asyncio.Event()

        async def long() -> None:
            nonlocal text, last
            async for chunk in backend.stream(long_req):
                text += chunk
                last = chunk if isinstance(chunk, Finished) else last
                started.set()

        async def short() -> Any:
            await started.wait()
            return await backend.agenerate(eng.build_request(
                "Is 7 prime?", Choice(["yes", "no"]), max_tokens=8))

        _, answer = await asyncio.gather(long(), short())
        return text, last, answer

    text, last, short = asyncio.run(both())
    assert short.text in ("yes", "no")
    assert short.stats["joined_running_batch"] == 1
    assert last is not None and last.prompt_tokens + last.completion_tokens <= 512
    assert last.completion_tokens > 400  # it ran to its stream's end
    assert validate_text(text, long_req.output).ok, text[-200:]


def _held_worker(backend: Any) -> threading.Event:
    """Until the event is set, ``backend``'s worker (not started yet) takes nothing from its
    queue. Requests sent together are then all queued when it forms its first batch; else
    an event loop descheduled for the worker's 5 ms gather window (a loaded machine) splits
    them, and a static batch of one runs to its end before the others start."""
    assert backend._worker is None
    release = threading.Event()
    take = backend._queue.get

    def get(*args: Any, **kwargs: Any) -> Any:
        release.wait(60)
        return take(*args, **kwargs)

    backend._queue.get = get
    return release


@pytest.mark.parametrize(("batching", "kv_cache"), [
    ("static", "unified"), ("continuous", "unified"), ("continuous", "per_sequence")])
def test_a_system_prompt_shared_by_requests_sent_together_is_prefilled_once(
        tiny_gguf: Path, batching: str, kv_cache: str) -> None:
    """Three requests with one system prompt, sent at once, no prefix cache: the first
    computes the system prompt, the others share its KV cells (per_sequence: copy its KV
    stream) and compute only their own turn; every greedy answer is the one it gets
    alone."""
    users = ["Add a flag to cli.py", "Rename db.py", "Why does test_api fail?"]
    eng, alone = make(tiny_gguf, batching=batching, prefix_cache_entries=0, max_batch=1)
    expected = [gen(eng, alone, LongNames, chat(u)).text for u in users]
    eng2, backend = make(tiny_gguf, batching=batching, prefix_cache_entries=0, max_batch=4,
                         kv_cache=kv_cache)
    release = _held_worker(backend)

    async def together() -> list[Any]:
        sent = [asyncio.ensure_future(backend.agenerate(
            eng2.build_request(chat(u), LongNames, max_tokens=160))) for u in users]
        await asyncio.sleep(0)  # each has queued its request
        release.set()
        return await asyncio.gather(*sent)

    results = asyncio.run(together())
    assert [r.text for r in results] == expected
    assert max(r.stats["batch_size"] for r in results) == 3
    computed = sorted(r.stats["prefill_tokens"] for r in results)
    assert computed[0] < results[0].prompt_tokens / 3  # its own turn only
    assert computed[1] < results[0].prompt_tokens / 3
    assert computed[2] == max(r.prompt_tokens for r in results)  # the one that computed it
    assert sum(r.stats.get("prefix_shared_tokens", 0) for r in results) > 60


@pytest.mark.parametrize("batching", ["static", "continuous"])
def test_a_cached_system_prompt_is_restored_once_for_requests_sent_together(
        tiny_gguf: Path, batching: str) -> None:
    """The system prompt is in the prefix cache: of three requests sent together, one
    restores it and the others share that sequence's KV cells instead of restoring a copy
    each (every decode step attends over every cell in use); every greedy answer is the
    one it gets alone."""
    users = ["Add a flag to cli.py", "Rename db.py", "Why does test_api fail?"]
    eng, alone = make(tiny_gguf, batching=batching, prefix_cache_entries=0, max_batch=1)
    expected = [gen(eng, alone, LongNames, chat(u)).text for u in users]
    eng2, backend = make(tiny_gguf, batching=batching, max_batch=4)
    gen(eng2, backend, LongNames, chat("Explain the scheduler"))  # caches the system prompt

    async def together() -> list[Any]:
        return await asyncio.gather(*(backend.agenerate(
            eng2.build_request(chat(u), LongNames, max_tokens=160)) for u in users))

    results = asyncio.run(together())
    assert [r.text for r in results] == expected
    restored = [r.stats["prefix_cache_hit_tokens"] for r in results]
    assert sorted(n > 0 for n in restored) == [False, False, True], restored
    shared = [r.stats.get("prefix_shared_tokens", 0) for r in results]
    assert sorted(n > 60 for n in shared) == [False, True, True], shared


@pytest.mark.parametrize("kv_cache", ["unified", "per_sequence"])
def test_a_joining_request_shares_the_system_prompt_of_a_running_one(
        favorite_gguf: Any, kv_cache: str) -> None:
    """A request joining a running batch does not prefill again the system prompt that a
    live sequence already holds (no prefix cache: the KV cells are shared, or with
    per-sequence streams the running one's stream is copied)."""
    eng, backend = make(favorite_gguf("a"), batching="continuous", prefix_cache_entries=0,
                        max_batch=2, kv_cache=kv_cache)

    joined = _join_a_running_answer(eng, backend, chat("Classify it"), chat("Is 7 prime?"))
    assert joined.stats["joined_running_batch"] == 1
    assert joined.stats["prefix_shared_tokens"] > 60
    assert joined.stats["prefill_tokens"] < joined.prompt_tokens / 3
    assert joined.text in ("yes", "no")
