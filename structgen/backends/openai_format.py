"""The OpenAI chat/completions answer format, as vLLM's and SGLang's OpenAI-compatible
endpoints send it: the pydantic models both backends read (extra fields ignored). Each is
named ``Wire…`` so it never collides with structgen's own records (``types.ToolCall``,
``types.Usage``, ``types.Choice``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, NonNegativeInt, StrictStr

from structgen.backends.base import Finished


class WireFunction(BaseModel):
    name: StrictStr | None = None  # only in a call's first delta when streamed
    arguments: StrictStr | None = None  # a JSON *string*, or a fragment of it when streamed


class WireToolCall(BaseModel):
    index: NonNegativeInt | None = None  # streamed deltas: which call a fragment continues
    id: StrictStr | None = None
    function: WireFunction


class WireMessage(BaseModel):
    content: str | None = None
    reasoning: str | None = None  # vLLM >= 0.13 with a --reasoning-parser
    reasoning_content: str | None = None  # SGLang, and vLLM before 0.13
    tool_calls: list[WireToolCall] | None = None  # a tool turn answered natively


class WireChoice(BaseModel):
    message: WireMessage | None = None  # chat
    delta: WireMessage | None = None  # chat, streamed
    text: str | None = None  # completions
    finish_reason: str | None = None


class WireUsage(BaseModel):
    prompt_tokens: NonNegativeInt | None = None
    completion_tokens: NonNegativeInt | None = None


class Completion(BaseModel):
    model: str | None = None
    choices: list[WireChoice] = Field(min_length=1)
    usage: WireUsage | None = None


class Event(BaseModel):
    """One streamed ``data:`` payload."""

    choices: list[WireChoice] = Field(default_factory=list)
    usage: WireUsage | None = None
    model: str | None = None
    error: Any = None


def usage_chunk(event: Event, out: list[str | None], finish: list[str]) -> list[Finished]:
    """The token counts of a stream's usage event (``stream_options.include_usage``: an
    event of its own after the finish reason, no choices) as a last :class:`Finished`
    chunk with the reason given before; ``finish`` keeps that reason between events."""
    finish.extend(c.finish_reason for c in out if isinstance(c, Finished))
    usage = event.usage
    if usage is None or usage.completion_tokens is None:
        return []
    return [Finished("", finish[-1] if finish else "stop", prompt_tokens=usage.prompt_tokens,
                     completion_tokens=usage.completion_tokens, model=event.model)]
