"""Streaming structured output: partial objects while the text arrives, then the final one.

:func:`stream_structured` (behind :meth:`Engine.astream`) streams the backend's tokens.
For JSON outputs it parses the text received so far with ``partial-json-parser`` and
yields each new partial value (plain dicts/lists: fields appear as they are generated,
an unfinished string shows as far as it got, an unfinished number is held back). The text
so far is a prefix the grammar accepted, so the partial value never contains a field the
schema forbids. When the stream ends, the whole text goes through the same validation and
repair as a non-streamed call, and the final validated value (the Pydantic instance for a
model) is the last item yielded; if no valid value can be made, ``ValidationFailed`` is
raised instead of yielding an invalid one.

An answer cut off at ``max_tokens`` is treated as in :meth:`Engine.arun`: the final step
raises ``ValidationFailed`` unless ``allow_truncated=True``. A streamed value is never
cached. With ``final_result=True`` the last item is the :class:`StructuredResult` (its
``value``, ``truncated``, ``backend``, ...) instead of the bare value.

Regex, choice and grammar outputs yield the text so far, then the validated string.

    >>> async for item in engine.astream("Fix app.py", Intent):  # doctest: +SKIP
    ...     print(item)   # {'kind': 'ed'} ... {'kind': 'edit_code', ...} ... Intent(...)
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from partial_json_parser import Allow, MalformedJSON
from partial_json_parser import loads as partial_loads

from structgen.backends.base import Finished, GenerationResult
from structgen.backends.capabilities import unenforced

if TYPE_CHECKING:
    from structgen.engine import Engine

# Everything may be partial except numbers: "12" may still become "125" or "12.5".
_PARTIAL = Allow.ALL & ~Allow.NUM


def partial_value(text: str) -> Any:
    """The value of a JSON prefix, or ``None`` while nothing is parseable yet."""
    stripped = text.strip()
    if not stripped:
        return None
    try:
        return partial_loads(stripped, _PARTIAL)
    except (MalformedJSON, ValueError, IndexError, RecursionError):
        return None


async def stream_structured(engine: Engine, prompt_or_messages: str | Sequence[Any],
                            output: Any, *, backend: str | None = None,
                            model: str | None = None, reasoning: bool = False,
                            allow_truncated: bool = False, final_result: bool = False,
                            **sampling: Any) -> AsyncIterator[Any]:
    """Yield partial values as the text streams in, then the final validated value."""
    from structgen.engine import StructuredResult
    from structgen.repair import finalize

    start = time.perf_counter()
    request = engine.build_request(prompt_or_messages, output, model=model,
                                   reasoning=reasoning, **sampling)
    assert request.output is not None
    request.deadline = time.monotonic() + engine.config.llm_backend.timeout_s
    name, stream, first = await engine.router.open_stream(request, backend)
    ttft = time.perf_counter() - start
    is_json = request.output.kind == "json"
    text = ""
    finish = "stop"
    last: Any = None
    chunks = [first]
    while True:
        for chunk in chunks:
            text += chunk
            if isinstance(chunk, Finished):
                finish = chunk.finish_reason
        chunks = []
        current = partial_value(text) if is_json else text
        if current is not None and current != last:
            last = current
            yield current
        try:
            chunks.append(await anext(stream))
        except StopAsyncIteration:
            break
    gen = GenerationResult(text=text, backend=name, model=request.model or "",
                           finish_reason=finish, latency_s=time.perf_counter() - start,
                           ttft_s=ttft)
    # Same bookkeeping as a non-streamed call: what the backend's engine did not enforce.
    gen.stats["post_enforced"] = unenforced(request.output, engine.backend(name).capabilities())
    repaired = await finalize(gen, request, engine, allow_truncated=allow_truncated)
    if not final_result:
        yield repaired.value
        return
    yield StructuredResult(
        value=repaired.value, raw_text=repaired.text, backend=name, model=gen.model,
        repaired=repaired.repaired, repairs=repaired.stages,
        post_enforced=repaired.post_enforced, reasoning_text=gen.reasoning_text,
        latency_s=time.perf_counter() - start, usage=dict(gen.stats),
        truncated=repaired.truncated)

