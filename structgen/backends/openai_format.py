"""The OpenAI chat/completions answer format, as vLLM's and SGLang's OpenAI-compatible
endpoints send it: the pydantic models both backends read (extra fields ignored). Each is
named ``Wire…`` so it never collides with structgen's own records (``types.ToolCall``,
``types.Usage``, ``types.Choice``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, NonNegativeInt, StrictStr


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
    error: Any = None
