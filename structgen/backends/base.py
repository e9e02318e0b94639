"""The one protocol every backend implements, and the request/result types it speaks.

A backend takes a :class:`GenerationRequest` (messages + compiled output constraint +
sampling) and returns a :class:`GenerationResult` (raw text + bookkeeping). It never
validates or repairs: that is the engine's job, one layer up.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from structgen.portal import run_sync
from structgen.registry import BACKENDS, SECTIONS
from structgen.types import Message, OutputKind, RawToolCall, Sampling, ToolTurn

if TYPE_CHECKING:
    from structgen.schema import CompiledOutput
    from structgen.schema.support import EngineSupport, PostEnforced, Quirk


@dataclass(frozen=True)
class Capabilities:
    """What a backend can enforce while decoding.

    ``output_kinds``: kinds it can constrain at all. ``support``: its grammar engine's row
    in :mod:`structgen.schema.support` (what is left to validation); ``None``: every
    keyword structgen knows is enforced. ``quirks``: constraints it takes but is known not
    to hold in some cases (reported, then validated); ``into_branches``: its engine ignores
    keywords beside an anyOf/oneOf/allOf/$ref (XGrammar), so they go into the branches.
    """

    output_kinds: frozenset[OutputKind]
    support: EngineSupport | None = None
    reasoning: bool = False
    batching: bool = False
    notes: tuple[str, ...] = ()
    quirks: tuple[Quirk, ...] = ()
    into_branches: bool = False


@dataclass
class GenerationRequest:
    messages: list[Message]
    output: CompiledOutput | None
    sampling: Sampling = field(default_factory=Sampling)
    model: str | None = None
    reasoning: bool = False
    # the JSON layout: "compact" | "spaced" | "any" (the engine sets it, resolving [local]
    # whitespace = "auto" per prompt; a request built by hand gets compact)
    whitespace: str = "compact"
    deadline: float | None = None  # absolute time.monotonic() deadline
    extra: dict[str, Any] = field(default_factory=dict)
    # a tool turn: ``output`` then holds the call envelope's schema (see types.ToolTurn)
    tools: ToolTurn | None = None

    @property
    def multi_turn(self) -> bool:
        return sum(1 for m in self.messages if m["role"] in ("user", "assistant")) > 1


@dataclass
class GenerationResult:
    text: str
    backend: str
    model: str = ""
    finish_reason: str = "stop"  # "stop" | "length" | "grammar"
    reasoning_text: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    ttft_s: float | None = None
    server_time_s: float | None = None
    constrained: bool = True
    # what the grammar did not enforce (validation does): the engine's loosening
    # (schema/support.py), a compile-time fallback, a server's quirks
    post_enforced: tuple[PostEnforced, ...] = ()
    # a server backend: the path the request went to, and its round trip as httpx timed it
    endpoint: str | None = None
    http_s: float | None = None
    # engine counters for benchmarks and tests (forward passes, fast-forwarded tokens, ...)
    stats: dict[str, Any] = field(default_factory=dict)
    # a backend with native tool calling: the calls it returned (``text`` keeps any free
    # text the model wrote beside them); None: not a tool answer
    tool_calls: list[RawToolCall] | None = None


class Finished(str):
    """A stream chunk that also says why generation stopped (``GenerationResult.finish_reason``).

    Backends yield it once the server or decoder reports the reason (often as an empty
    chunk at the end); to a consumer that only wants text it is a plain ``str``. The last
    one seen tells whether the streamed answer was cut off at ``max_tokens``.
    """

    finish_reason: str
    # what the backend's engine left to validation, as its agenerate reports it in
    # ``GenerationResult.post_enforced`` (None: not reported), so a stream reports the same
    # ``post_enforced`` as a call
    post_enforced: tuple[PostEnforced, ...] | None
    # the token counts and model the backend reported at the end of the stream (None: not
    # reported), so a streamed answer's usage is that of a call
    prompt_tokens: int | None
    completion_tokens: int | None
    model: str | None

    def __new__(cls, text: str, finish_reason: str,
                post_enforced: tuple[PostEnforced, ...] | None = None, *,
                prompt_tokens: int | None = None, completion_tokens: int | None = None,
                model: str | None = None) -> Finished:
        chunk = super().__new__(cls, text)
        chunk.finish_reason = finish_reason
        chunk.post_enforced = post_enforced
        chunk.prompt_tokens = prompt_tokens
        chunk.completion_tokens = completion_tokens
        chunk.model = model
        return chunk

    def reported(self, post_enforced: tuple[PostEnforced, ...] | None) -> Finished:
        """This chunk with ``post_enforced`` set (the rest as it is)."""
        return Finished(str(self), self.finish_reason, post_enforced,
                        prompt_tokens=self.prompt_tokens,
                        completion_tokens=self.completion_tokens, model=self.model)


@runtime_checkable
class Backend(Protocol):
    """One protocol for all backends (embedded and servers)."""

    name: str

    def capabilities(self) -> Capabilities: ...

    async def agenerate(self, request: GenerationRequest) -> GenerationResult: ...

    def generate(self, request: GenerationRequest) -> GenerationResult: ...

    def stream(self, request: GenerationRequest) -> AsyncIterator[str]:
        """Text chunks as they arrive; the finish reason comes as a :class:`Finished`."""
        ...

    async def health(self) -> bool: ...

    async def aclose(self) -> None: ...


class BackendBase:
    """Shared sync wrappers; subclasses implement the async methods."""

    name: str = "base"
    # the model of this backend's config section, ``[<name>]`` (a Pydantic model; the
    # built-in backends' sections are declared in structgen/config.py)
    settings: Any = None

    def __init_subclass__(cls, *, name: str | None = None, **kwargs: Any) -> None:
        """``class TinyBackend(BackendBase, name="tiny")`` registers it (structgen.registry)."""
        super().__init_subclass__(**kwargs)
        if name is not None:
            cls.name = name
            BACKENDS[name] = cls
            if cls.settings is not None:
                SECTIONS[name] = cls.settings

    async def agenerate(self, request: GenerationRequest) -> GenerationResult:
        raise NotImplementedError

    def stream(self, request: GenerationRequest) -> AsyncIterator[str]:
        raise NotImplementedError

    def generate(self, request: GenerationRequest) -> GenerationResult:
        return run_sync(self.agenerate(request))

    async def aclose(self) -> None:
        return None
