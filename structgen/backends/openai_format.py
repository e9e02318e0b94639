"""The OpenAI chat/completions answer format, as vLLM's and SGLang's OpenAI-compatible
endpoints send it: the pydantic models both backends read (extra fields ignored)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, NonNegativeInt, StrictStr


class Function(BaseModel):
    name: StrictStr | None = None  # only in a call's first delta when streamed
    arguments: StrictStr | None = None  # a JSON *string*, or a fragment of it when streamed


class ToolCall(BaseModel):
    index: NonNegativeInt | None = None  # streamed deltas: which call a fragment continues
    id: StrictStr | None = None
    function: Function


class Message(BaseModel):
    content: str | None = None
    reasoning: str | None = None  # vLLM >= 0.13 with a --reasoning-parser
    reasoning_content: str | None = None  # SGLang, and vLLM before 0.13
    tool_calls: list[ToolCall] | None = None  # a tool turn answered natively


class Choice(BaseModel):
    message: Message | None = None  # chat
    delta: Message | None = None  # chat, streamed
    text: str | None = None  # completions
    finish_reason: str | None = None


class Usage(BaseModel):
    prompt_tokens: NonNegativeInt | None = None
    completion_tokens: NonNegativeInt | None = None


class Completion(BaseModel):
    model: str | None = None
    choices: list[Choice] = Field(min_length=1)
    usage: Usage | None = None


class Event(BaseModel):
    """One streamed ``data:`` payload."""

    choices: list[Choice] = Field(default_factory=list)
    usage: Usage | None = None
    error: Any = None
