"""Every error structgen raises, in one hierarchy a caller can catch by meaning.

    StructgenError
    ├── SchemaError        bad or unsupported output spec (carries a JSON pointer)
    │   └── GrammarCompileTimeout   its grammar took too long to compile
    ├── ToolError          a tool that cannot be offered (carries the tool's name)
    ├── MessageError       a malformed chat message (carries its index and field)
    ├── ConfigError        bad config.toml / environment
    ├── ExecutorError      a distributed executor (Ray) is missing or unreachable
    ├── CacheError         the cache store cannot be used (Redis down, unreadable dir)
    ├── WarmupLineError    one line of a warmup file is not a valid request
    ├── BatchLineError     one line of a batch file is not a request structgen can run
    ├── BatchItemError     a batch item failed with an error that is not a StructgenError
    ├── BackendError       a backend failed: unreachable, timeout, protocol
    │   ├── BackendUnavailable
    │   ├── BackendTimeout
    │   └── BackendProtocolError
    └── ValidationFailed   output could not be made valid (raw text + errors + attempts)
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from structgen.attempts import Attempt, ErrorDetail


def did_you_mean(word: str, choices: Iterable[Any]) -> str:
    """`` (did you mean 'x'?)`` naming the closest of ``choices`` to a misspelt ``word``,
    or ``""`` when none is close: the tail of an error message."""
    close = difflib.get_close_matches(word, [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class StructgenError(Exception):
    """Base class of every error structgen raises on purpose."""


class SchemaError(StructgenError):
    """The output spec is malformed or uses something structgen cannot honour.

    ``pointer`` is the JSON pointer (RFC 6901) of the offending part of the schema,
    ``""`` for the whole document (or a spec that is not a schema); ``reason`` is the
    message without the pointer.
    """

    def __init__(self, message: str, pointer: str = "") -> None:
        self.pointer = pointer
        self.reason = message
        # RFC 6901: "" is the whole document ("/" would be the key ""), so say nothing
        super().__init__(f"{message} (at {pointer})" if pointer else message)


class GrammarCompileTimeout(SchemaError):
    """Compiling the grammar for this schema took longer than the allowed time.

    Raised at once (without compiling again) for a schema recorded as timed out with a
    deadline at least as long. The caller should fall back to a looser grammar and rely on
    validation. ``key`` is the grammar-cache key (schema hash, tokenizer hash, engine,
    engine version), ``timeout_s`` the deadline that was missed.
    """

    def __init__(self, key: tuple[str, str, str, str], timeout_s: float, *,
                 recorded: bool = False) -> None:
        self.key = key
        self.timeout_s = timeout_s
        self.recorded = recorded
        how = "recorded as timing out" if recorded else "timed out"
        super().__init__(f"grammar compile for schema {key[0][:12]} ({key[2]}) {how} "
                         f"after {timeout_s:g}s; use a looser grammar")


class ToolError(StructgenError):
    """A tool cannot be offered to a model: a function parameter without a type annotation,
    ``*args``/``**kwargs``, a default its own annotation refuses (``x: int = "no"``), two
    tools with one name, a name outside ``^[a-zA-Z0-9_-]{1,64}$``
    (what the OpenAI tools format and the grammar's name literal hold), or a
    ``tool_choice`` that names no offered tool. ``tool`` is the tool's name, when known."""

    def __init__(self, message: str, tool: str | None = None) -> None:
        self.tool = tool
        super().__init__(f"tool {tool!r}: {message}" if tool else message)


class MessageError(StructgenError):
    """A chat message structgen cannot read: an unknown role, a content part that is not
    text, a tool call without a name or with arguments that are not a JSON object, a tool
    result whose ``tool_call_id`` answers no earlier call. ``index`` is the message's
    position in the list, ``field`` the offending field (``"tool_calls[0].function.name"``),
    ``None`` for the message as a whole."""

    def __init__(self, message: str, index: int, field: str | None = None) -> None:
        self.index = index
        self.field = field
        self.reason = message
        where = f"messages[{index}]" + (f".{field}" if field else "")
        super().__init__(f"{where}: {message}")


class ConfigError(StructgenError):
    """config.toml or a STRUCTGEN_* environment variable is invalid."""

    def __init__(self, message: str, key: str | None = None) -> None:
        self.key = key
        super().__init__(f"{key}: {message}" if key else message)


class ExecutorError(StructgenError):
    """The executor a job asked for cannot run it: Ray is not installed, or the cluster
    address does not answer (``structgen warmup --ray ADDRESS``)."""


class CacheError(StructgenError):
    """The cache store cannot be used (unreachable Redis, unreadable directory, bad file)."""


class WarmupLineError(StructgenError):
    """One line of a warmup file is not a valid request (reported, not raised to the user)."""


class BatchLineError(StructgenError):
    """One line of a batch file is not a request structgen can run (an error line)."""


class BatchItemError(StructgenError):
    """An item failed with an error that is not a :class:`StructgenError` (a bug below, or a
    library's own exception); the original is its ``__cause__``. The batch goes on."""


class BackendError(StructgenError):
    """A backend could not produce an answer."""

    def __init__(self, message: str, backend: str = "", *, retryable: bool = False) -> None:
        self.backend = backend
        self.retryable = retryable
        super().__init__(f"[{backend}] {message}" if backend else message)


class BackendUnavailable(BackendError):
    """Connection refused, DNS failure, no model installed, circuit open."""


class BackendTimeout(BackendError):
    """The backend did not answer within the deadline."""


class BackendProtocolError(BackendError):
    """The backend answered, but not in the shape its wire format promises."""


class ValidationFailed(StructgenError):
    """No valid object could be produced.

    Carries the last raw text, the validator's errors for it, and every attempt made.
    """

    def __init__(
        self,
        message: str,
        raw_text: str,
        errors: list[ErrorDetail],
        attempts: list[Attempt] | None = None,
    ) -> None:
        self.raw_text = raw_text
        self.errors = errors
        self.attempts = attempts or []
        detail = "; ".join(str(e) for e in errors[:5])
        super().__init__(f"{message}: {detail}" if detail else message)

    def to_dict(self) -> dict[str, Any]:
        return {
            "raw_text": self.raw_text,
            "errors": [e.__dict__ for e in self.errors],
            "attempts": [
                {"stage": a.stage, "text": a.text, "backend": a.backend,
                 "errors": [e.__dict__ for e in a.errors]}
                for a in self.attempts
            ],
        }
