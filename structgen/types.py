"""Data that crosses boundaries: output specs, chat messages, sampling parameters, results."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any, Literal

from structgen.attempts import BackendAttempt

# chat messages are parsed in one place (structgen/messages.py); named here as before
from structgen.messages import Message as Message
from structgen.messages import normalize_messages as normalize_messages

OutputKind = Literal["json", "regex", "choice", "grammar"]
ALL_KINDS: frozenset[OutputKind] = frozenset({"json", "regex", "choice", "grammar"})
ToolChoice = str  # "auto" | "required" | the name of one tool


@dataclass(frozen=True)
class Regex:
    """Constrain the output to a regular expression (Python/Rust `regex` syntax)."""

    pattern: str


@dataclass(frozen=True)
class Choice:
    """Constrain the output to exactly one of the given strings."""

    choices: tuple[str, ...]

    def __init__(self, choices: Sequence[str]) -> None:
        object.__setattr__(self, "choices", tuple(choices))


@dataclass(frozen=True)
class Grammar:
    """Constrain the output to a context-free grammar.

    ``syntax`` is ``"lark"`` (llguidance's Lark dialect) or ``"ebnf"`` (GBNF / W3C EBNF as
    used by llama.cpp, SGLang and XGrammar). ``"auto"`` guesses from the text.
    """

    text: str
    syntax: Literal["lark", "ebnf", "auto"] = "auto"


@dataclass(frozen=True)
class JsonSchema:
    """A raw JSON Schema given as a dict (``generate_structured`` also takes the dict as is)."""

    schema: dict[str, Any]
    name: str = "output"
    # close every object with declared properties (additionalProperties: false), as
    # structgen does for Pydantic models: a small model cannot invent keys
    closed_objects: bool = False


@dataclass
class Sampling:
    """Backend-independent sampling parameters (also part of the cache key)."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    max_tokens: int = 512
    stop: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "max_tokens": self.max_tokens,
            "stop": list(self.stop),
        }


SAMPLING_KEYS = frozenset({"temperature", "top_p", "seed", "max_tokens", "stop"})


@dataclass(frozen=True)
class Usage(Mapping[str, Any]):
    """Token counts and timings of the call that made a result (all None/0 for a cache hit).

    Read as attributes, or by name as the dict it used to be (``usage["http_s"]``).
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float | None = None  # time to the first token, as the caller saw it
    server_time_s: float | None = None  # the server's own time for the request
    http_s: float | None = None  # a server backend's round trip, as httpx measured it

    def __getitem__(self, name: str) -> Any:
        if name not in _USAGE_FIELDS:
            raise KeyError(name)
        return getattr(self, name)

    def __iter__(self) -> Iterator[str]:
        return iter(_USAGE_FIELDS)

    def __len__(self) -> int:
        return len(_USAGE_FIELDS)


_USAGE_FIELDS = tuple(f.name for f in fields(Usage))


@dataclass(frozen=True)
class Repair:
    """One repair stage that ran on the answer (``"syntax"``, ``"coerce"``, ``"reask"``) and
    what it changed, ``"<pointer>: <what>"`` each (the coercions it made, for instance)."""

    stage: str
    changes: tuple[str, ...] = ()

    def __str__(self) -> str:
        return self.stage


@dataclass
class StructuredResult:
    """A validated value plus everything a caller may want to know about how it was made."""

    value: Any
    raw_text: str
    backend: str
    model: str = ""
    cached: bool = False
    repaired: bool = False
    repairs: list[Repair] = field(default_factory=list)  # in the order they ran
    attempts: list[BackendAttempt] = field(default_factory=list)  # one per backend tried
    # what the grammar did not enforce and validation did: ``"<pointer>/<keyword>"`` each
    # (``str`` of structgen.schema.support.PostEnforced; ``"/"`` = the whole output)
    post_enforced: list[str] = field(default_factory=list)
    reasoning_text: str | None = None
    latency_s: float = 0.0
    cache_key: str | None = None
    usage: Usage = field(default_factory=Usage)
    # made from an answer cut off at max_tokens (only with allow_truncated=True); never cached
    truncated: bool = False
    # why the backend's answer ended ("stop", "length", ...), streamed or not; "stop" for a
    # cache hit (only whole answers are stored)
    finish_reason: str = "stop"


# Tool calling ------------------------------------------------------------------------
# The records a tool turn crosses the pipeline in. A tool turn is compiled like any output:
# ``GenerationRequest.output`` holds the JSON Schema of the *call envelope*
# (``{"name": <tool>, "arguments": {...}}``, one branch per tool; an array of them with
# ``parallel``), so a backend without native tool calling constrains it as plain JSON, and
# validation, repair, caching and metrics see one JSON value as for any output. A backend
# with native tool calling reads ``GenerationRequest.tools`` and answers in
# ``GenerationResult.tool_calls``; the engine turns those back into the envelope.


@dataclass(frozen=True)
class ToolSpec:
    """One tool offered to the model: its name, description and arguments schema.

    ``parameters`` is the JSON Schema of the arguments as sent to servers (closed objects,
    local ``$defs``); ``model`` is the Pydantic model the arguments validate into.
    """

    name: str
    description: str
    parameters: dict[str, Any]
    model: Any  # type[pydantic.BaseModel]

    @cached_property
    def digest(self) -> str:
        """Identity of the tool for caches (its name, description, schema and model class),
        computed once per spec: a tool set's key is the tuple of its tools' digests, so a
        repeated set of 500 tools is recognized without re-reading 500 schemas. A spec is
        treated as immutable (do not change ``parameters`` in place after using it)."""
        model = "" if self.model is None else \
            f"{self.model.__module__}.{self.model.__qualname__}:{id(self.model)}"
        body = json.dumps([self.name, self.description, model], ensure_ascii=False)
        return hashlib.sha256(f"{body}\x00{self.parameters_text}".encode(
            "utf-8", "surrogatepass")).hexdigest()

    @cached_property
    def parameters_text(self) -> str:
        """``parameters`` as canonical JSON text (sorted keys), computed once per spec."""
        return json.dumps(self.parameters, sort_keys=True, ensure_ascii=False, default=repr)


@dataclass(frozen=True)
class ToolTurn:
    """The tools of one request and how the model may use them."""

    tools: tuple[ToolSpec, ...]
    choice: ToolChoice = "auto"
    parallel: bool = False
    # with ``parallel``: at most this many calls (the grammar's bound); None: no bound.
    # Without ``parallel`` a turn has exactly one call, by its grammar
    max_calls: int | None = None

    def openai_tools(self) -> list[dict[str, Any]]:
        """``tools`` in the OpenAI chat-completions shape (vLLM, SGLang, Ollama accept it)."""
        return [{"type": "function",
                 "function": {"name": t.name, "description": t.description,
                              "parameters": t.parameters}} for t in self.tools]

    def openai_tool_choice(self) -> str | dict[str, Any]:
        if self.choice in ("auto", "required", "none"):
            return self.choice
        return {"type": "function", "function": {"name": self.choice}}


@dataclass(frozen=True)
class RawToolCall:
    """A tool call as a backend returned it: arguments still unvalidated JSON text."""

    name: str
    arguments: str
    id: str | None = None


@dataclass(frozen=True)
class ToolCall:
    """A validated tool call: the tool's name and an instance of its arguments model."""

    name: str
    arguments: Any  # an instance of the tool's ToolSpec.model
    id: str | None = None


def call_envelope(calls: Sequence[RawToolCall], text: str = "", *, parallel: bool = False) -> str:
    """The canonical answer text of a tool turn, built from a backend's native answer.

    A call is ``{"name": N, "arguments": <the backend's argument text>}``; with ``parallel``
    the calls form an array; a turn without calls (only possible with ``"auto"``) is
    ``{"text": "..."}``. The argument text is embedded as the backend wrote it, unparsed, so
    validation sees it and syntax repair can mend it. This text is what validation, repair,
    the cache and streaming consumers see for every tool turn, whatever the backend.
    """
    if not calls:
        return json.dumps({"text": text}, ensure_ascii=False)
    parts = [f'{{"name":{json.dumps(c.name, ensure_ascii=False)},"arguments":'
             f'{c.arguments.strip() or "{}"}}}' for c in calls]
    return f"[{','.join(parts)}]" if parallel else parts[0]
