"""``structgen batch IN.jsonl -o OUT.jsonl``: an OpenAI batch file in, OpenAI result lines out.

Each input line is one request in the format of OpenAI's Batch API and vLLM's ``run_batch``::

    {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions",
     "body": {"messages": [...], "response_format": {"type": "json_schema", "json_schema":
              {"name": "intent", "schema": {...}}}, "max_tokens": 128, "temperature": 0}}

``response_format`` is ``json_schema`` (the schema constrains the answer), ``json_object``
(any JSON object) or ``text``/absent (plain text, neither validated nor cached); ``tools``
(``type: function`` with a JSON Schema of ``parameters``) with ``tool_choice`` ``auto``,
``required``, ``none`` or one function make a tool turn. ``max_tokens`` (or
``max_completion_tokens``), ``temperature``, ``top_p``, ``seed`` and ``stop`` are the sampling
parameters; ``model`` is ignored (the configured backend answers; ``--model`` picks one). A
parameter structgen cannot honour (``n`` > 1, ``logprobs``, penalties, ...) is an error line,
never silently dropped.

Each output line is OpenAI's::

    {"id": "batch_req_…", "custom_id": "r1", "response": {"status_code": 200,
     "request_id": "req_…", "body": {<a chat.completion object>}}, "error": null}
    {"id": "batch_req_…", "custom_id": "r2", "response": null,
     "error": {"code": "validation_failed", "message": "…", "line": 2}}

A malformed line (not JSON, no ``custom_id``, a ``custom_id`` seen before, another ``url``, a
bad schema) gets an error line; the job goes on. The input is data: lines are read at most
``max_line_bytes`` at a time, nothing in it is imported or run, and requests go only to the
configured backends.

Exactly once: each line is appended to the output with one ``write`` and made durable
(``fsync``) before the next; a run first reads the output it appends to, cuts a torn last line
(a kill in the middle of a write) and skips what is already answered. So after Ctrl-C or
SIGKILL the same command resumes, and every ``custom_id`` has one line in the end (an error
line for a line without a usable ``custom_id``, or for a repeated one, is known by its input
line number, ``error.line``). A failed request's error line counts as its answer: a re-run
does not retry it. Answers go through the result cache, so a batch is a warmup too.

The compact format (``--format compact``, or found per line by ``--format auto``, the
default): a line of a warmup file (``docs/warmup.md``), ``{"id": "q1", "prompt": "..." or
"messages": [...], "schema": {...} | "file.json" | "pkg.mod:Model", "max_tokens": 64, ...}``,
its ``schema`` a JSON Schema, a ``.json`` file beside the input, or a Pydantic model of a
module allowed with ``--allow-module`` (``[warmup] allow_modules``), validated by that model.
Its answer is a compact line too, the value itself rather than a chat completion::

    {"id": "q1", "line": 3, "value": {...}, "error": null, "backend": "local",
     "model": "…", "cached": false, "repaired": false,
     "usage": {"prompt_tokens": 41, "completion_tokens": 12}}
    {"id": "q2", "line": 4, "value": null, "error": {"code": "invalid_request", …}}

``id`` plays ``custom_id``'s part (default ``line-N``; unique across the file's lines). A line
that is neither format's, or not JSON, is an OpenAI error line (``custom_id`` null).

``--ray`` runs the lines on Ray actors with the same output: :mod:`structgen.batch.on_ray`.
"""

from __future__ import annotations

import json
import os
import time
import typing
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from structgen.batch import (
    BatchRequest,
    BatchSummary,
    ProgressFn,
    run_requests,
)
from structgen.config import Config
from structgen.engine import Engine
from structgen.errors import (
    BackendError,
    BatchLineError,
    ConfigError,
    StructgenError,
    ValidationFailed,
)
from structgen.messages import Message, normalize_messages
from structgen.schema.toolset import schema_tool
from structgen.types import SAMPLING_KEYS, JsonSchema, StructuredResult, ToolCall
from structgen.validate import dump_value
from structgen.warmup.items import parse_item

CHAT_URL = "/v1/chat/completions"
MAX_LINE_BYTES = 4 << 20
# Body keys with no effect on the answer (or that structgen decides itself).
IGNORED_KEYS = frozenset({"model", "user", "metadata", "store", "service_tier",
                          "parallel_tool_calls"})
# Body keys accepted only with their default value (anything else would change the answer
# in a way structgen does not do).
DEFAULT_ONLY = {"n": 1, "stream": False, "logprobs": False, "top_logprobs": None,
                "frequency_penalty": 0, "presence_penalty": 0, "logit_bias": None,
                "stream_options": None}


LineFormat = Literal["auto", "openai", "compact"]
OPENAI_KEYS = frozenset({"custom_id", "method", "url", "body"})
COMPACT_KEYS = frozenset({"prompt", "messages", "schema"})


@dataclass
class JobLine:
    """One input line: its request, or why it has none."""

    line: int
    custom_id: str | None = None
    request: BatchRequest | None = None
    error: StructgenError | None = None
    duplicate: bool = False  # a custom_id an earlier line has
    format: Literal["openai", "compact"] = "openai"
    body: dict[str, Any] | None = None  # as read (a Ray worker parses it again)
    compact: dict[str, Any] | None = None  # a compact line, its schema loaded (for Ray)


@dataclass
class LineReader:
    """How lines are read: which formats, and what a compact line may name."""

    line_format: LineFormat = "auto"
    model: str | None = None  # --model: every line's model
    config: Config | None = None  # the models a compact line may name
    base: Path = Path(".")  # where a compact line's .json schema files may be
    allow_modules: tuple[str, ...] = ()  # whose Pydantic models a compact line may name
    specs: dict[str, Any] | None = None  # loaded schema specs, shared by the lines


# Reading the input -----------------------------------------------------------------------
def read_job(path: Path, *, max_line_bytes: int = MAX_LINE_BYTES,
             model: str | None = None, line_format: LineFormat | str = "auto",
             config: Config | None = None, allow_modules: tuple[str, ...] = ()
             ) -> list[JobLine]:
    """Parse every non-blank line of ``path`` (see the module docstring)."""
    if line_format not in ("auto", "openai", "compact"):
        raise ConfigError(f"unknown line format {line_format!r} (auto, openai or compact)",
                          "--format")
    reader = LineReader(typing.cast(LineFormat, line_format), model, config, path.parent,
                        tuple(allow_modules), {})
    seen: set[str] = set()
    lines: list[JobLine] = []
    try:
        for n, raw in _raw_lines(path, max_line_bytes):
            if raw is not None and not raw.strip():
                continue
            item = JobLine(n)
            try:
                if raw is None:
                    raise BatchLineError(f"line longer than {max_line_bytes} bytes")
                parse_line(item, raw, reader)
            except StructgenError as exc:
                item.error = exc
            except Exception as exc:  # a value deep in the body no check foresaw
                item.error = BatchLineError(f"{type(exc).__name__}: {exc}")
            if item.custom_id is not None:
                if item.custom_id in seen:
                    item.duplicate = True
                    item.error = BatchLineError(
                        f"custom_id {item.custom_id!r} is used by an earlier line; each "
                        "custom_id must be unique in a batch file")
                seen.add(item.custom_id)
            lines.append(item)
    except OSError as exc:
        raise ConfigError(f"cannot read batch file {path}: {exc}") from None
    return lines


def _raw_lines(path: Path, limit: int) -> Iterator[tuple[int, bytes | None]]:
    """(line number, its bytes), or None for a line over ``limit`` (skipped unread)."""
    with path.open("rb") as f:
        n = 0
        while True:
            raw = f.readline(limit + 1)
            if not raw:
                return
            n += 1
            if len(raw) > limit and not raw.endswith(b"\n"):
                while raw and not raw.endswith(b"\n"):  # the rest of the long line
                    raw = f.readline(1 << 20)
                yield n, None
            else:
                yield n, raw


def parse_line(item: JobLine, raw: bytes, reader: LineReader | None = None) -> None:
    """Fill ``item`` from one line (either format); raises BatchLineError."""
    reader = reader or LineReader()
    try:
        obj = json.loads(raw)
    except UnicodeDecodeError:
        raise BatchLineError("not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise BatchLineError(f"not valid JSON: {exc.msg} at column {exc.colno}") from None
    except (ValueError, RecursionError) as exc:  # an integer too long, nesting too deep
        raise BatchLineError(f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise BatchLineError("a line must be a JSON object")
    fmt = reader.line_format
    if fmt == "auto":  # a compact line has none of OpenAI's keys, and one of its own
        fmt = "compact" if set(obj) & COMPACT_KEYS and not set(obj) & OPENAI_KEYS \
            else "openai"
    if fmt == "compact":
        parse_compact(item, obj, reader)
    else:
        parse_openai(item, obj, reader.model)


def parse_compact(item: JobLine, obj: dict[str, Any], reader: LineReader) -> None:
    """A line of the compact format: warmup's parser (``structgen.warmup.items``)."""
    if set(obj) & OPENAI_KEYS:
        raise BatchLineError("an OpenAI batch line where a compact line was expected "
                             "(--format compact)")
    parsed = parse_item(item.line, json.dumps(obj), reader.config or Config(),
                        base=reader.base, spec_cache=reader.specs, model=reader.model,
                        allow_modules=reader.allow_modules)
    item.format = "compact"
    item.custom_id = parsed.id  # line-N for a line that names none (or a bad one)
    if parsed.error is not None:
        raise parsed.error
    options: dict[str, Any] = {"model": parsed.model, "backend": parsed.backend,
                               "reasoning": parsed.reasoning, **parsed.sampling}
    item.request = BatchRequest(parsed.prompt, parsed.schema, options)
    # for a Ray worker: the schema as data (a loaded .json file), or the module:Class name
    item.compact = {**obj, "schema": parsed.schema if isinstance(parsed.schema, dict)
                    else parsed.schema_spec}


def parse_openai(item: JobLine, obj: dict[str, Any], model: str | None = None) -> None:
    """A line of the OpenAI batch format."""
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise BatchLineError('missing "custom_id" (a non-empty string)')
    item.custom_id = custom_id
    if obj.get("method", "POST") != "POST":
        raise BatchLineError(f'method must be "POST", not {obj.get("method")!r}')
    if obj.get("url") != CHAT_URL:
        raise BatchLineError(f"unsupported url {obj.get('url')!r} (supported: {CHAT_URL})")
    body = obj.get("body")
    if not isinstance(body, dict):
        raise BatchLineError('"body" must be a JSON object')
    item.request = wire_request(body, model)
    item.body = body


def wire_request(body: dict[str, Any], model: str | None = None) -> BatchRequest:
    """A ``/v1/chat/completions`` request body as a :class:`BatchRequest`."""
    for key, default in DEFAULT_ONLY.items():
        if body.get(key, default) not in (default, None):
            raise BatchLineError(f"{key}={body[key]!r} is not supported (only {default!r})")
    known = {"messages", "response_format", "tools", "tool_choice", "max_tokens",
             "max_completion_tokens", *SAMPLING_KEYS, *IGNORED_KEYS, *DEFAULT_ONLY}
    unknown = set(body) - known
    if unknown:
        raise BatchLineError(f"unsupported body field(s): {', '.join(sorted(unknown))}")
    options: dict[str, Any] = {k: body[k] for k in SAMPLING_KEYS if body.get(k) is not None}
    if body.get("max_completion_tokens") is not None:
        options["max_tokens"] = body["max_completion_tokens"]
    if model is not None:
        options["model"] = model
    messages = _messages(body.get("messages"))
    tools = body.get("tools")
    choice = body.get("tool_choice", "auto")
    if tools and choice != "none":
        if not isinstance(tools, list):
            raise BatchLineError("tools must be a list")
        options["tools"] = [_tool(t) for t in tools]
        options["tool_choice"] = _tool_choice(choice)
        options["parallel"] = body.get("parallel_tool_calls") is True
        return BatchRequest(messages, None, options)
    fmt = body.get("response_format") or {"type": "text"}
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return BatchRequest(messages, None, options, text=True)
    if kind == "json_object":
        return BatchRequest(messages, {"type": "object"}, options)
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise BatchLineError('response_format json_schema needs "json_schema": '
                                 '{"name": ..., "schema": {...}}')
        name = spec.get("name")
        return BatchRequest(messages, JsonSchema(
            spec["schema"], name=name if isinstance(name, str) and name else "output"),
            options)
    raise BatchLineError(f"unsupported response_format {fmt!r} "
                         "(json_schema, json_object or text)")


def _messages(messages: Any) -> list[Message]:
    """OpenAI messages as structgen's (:func:`structgen.messages.normalize_messages`: text
    parts, ``developer`` as system, earlier tool calls and results)."""
    if not isinstance(messages, list) or not messages:
        raise BatchLineError('"messages" must be a non-empty list')
    try:
        return normalize_messages(messages)
    except StructgenError as exc:
        raise BatchLineError(str(exc)) from None


def _tool(tool: Any) -> Any:
    fn = tool.get("function") if isinstance(tool, dict) else None
    if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(fn, dict):
        raise BatchLineError('a tool must be {"type": "function", "function": {...}}')
    name = fn.get("name")
    if not isinstance(name, str):
        raise BatchLineError("a function tool needs a name")
    parameters = fn.get("parameters", {"type": "object", "properties": {}})
    return schema_tool(name, parameters, fn.get("description") or "")


def _tool_choice(choice: Any) -> str:
    if choice in ("auto", "required"):
        return str(choice)
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        if isinstance(name, str):
            return name
    raise BatchLineError(f"unsupported tool_choice {choice!r}")


# Writing the output ----------------------------------------------------------------------
def result_line(custom_id: str, result: StructuredResult) -> dict[str, Any]:
    """OpenAI's result line for an answered request (a ``chat.completion`` body)."""
    value = result.value
    calls = value if isinstance(value, list) else [value] if isinstance(value, ToolCall) else []
    message: dict[str, Any] = {"role": "assistant", "content": None}
    finish = result.finish_reason  # "length": a plain-text answer cut at max_tokens
    if calls:
        message["tool_calls"] = [
            {"id": c.id or f"call_{uuid.uuid4().hex[:24]}", "type": "function",
             "function": {"name": c.name, "arguments": json.dumps(
                 dump_value(c.arguments), ensure_ascii=False)}} for c in calls]
        finish = "tool_calls"
    elif isinstance(value, str):
        message["content"] = value
    else:
        message["content"] = json.dumps(dump_value(value), ensure_ascii=False)
    usage = result.usage
    body = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
            "created": int(time.time()), "model": result.model or result.backend,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": finish}],
            "usage": {"prompt_tokens": usage.prompt_tokens,
                      "completion_tokens": usage.completion_tokens,
                      "total_tokens": usage.prompt_tokens + usage.completion_tokens},
            "structgen": {"backend": result.backend, "cached": result.cached,
                          "repaired": result.repaired}}
    return {"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": custom_id,
            "response": {"status_code": 200, "request_id": f"req_{uuid.uuid4().hex}",
                         "body": body}, "error": None}


def error_code(exc: StructgenError) -> str:
    if isinstance(exc, ValidationFailed):
        return "validation_failed"
    if isinstance(exc, BackendError):
        return "backend_error"
    return "invalid_request"


def error_line(item: JobLine, exc: StructgenError) -> dict[str, Any]:
    code = "duplicate_custom_id" if item.duplicate else error_code(exc)
    error = {"code": code, "type": type(exc).__name__, "message": str(exc), "line": item.line}
    if item.format == "compact":
        return {"id": item.custom_id, "line": item.line, "value": None, "error": error}
    return {"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": item.custom_id,
            "response": None, "error": error}


def compact_line(item: JobLine, result: StructuredResult) -> dict[str, Any]:
    """The compact format's answer line: the value itself, and where it came from."""
    return {"id": item.custom_id, "line": item.line, "value": dump_value(result.value),
            "error": None, "backend": result.backend, "model": result.model,
            "cached": result.cached, "repaired": result.repaired,
            "usage": {"prompt_tokens": result.usage.prompt_tokens,
                      "completion_tokens": result.usage.completion_tokens}}


class Answered(typing.Protocol):
    """What an output already holds: the ``custom_id`` s answered (or failed), and the input
    line numbers of error lines known by line (no ``custom_id``, or a repeated one)."""

    done_ids: set[str]
    done_lines: set[int]


def remember(answered: Answered, text: bytes) -> None:
    """Note one output line in ``answered``; ConfigError if it is not a result line."""
    try:
        obj = json.loads(text)  # a compact line's "id" is its custom_id
        custom_id = obj["custom_id"] if "custom_id" in obj else obj["id"]
        error = obj["error"]
        if error and (custom_id is None or error.get("code") == "duplicate_custom_id"):
            answered.done_lines.add(int(error["line"]))
        elif isinstance(custom_id, str):
            answered.done_ids.add(custom_id)
        else:
            raise TypeError(custom_id)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ConfigError("not a batch result line") from None


def is_done(answered: Answered, item: JobLine) -> bool:
    if item.custom_id is None or item.duplicate:
        return item.line in answered.done_lines
    return item.custom_id in answered.done_ids


class ResultFile:
    """The output file, appended one durable line at a time; knows what it already holds.

    Opening it cuts a torn last line (a run killed in the middle of a write) and reads the
    rest: the ``custom_id`` s answered (or failed), and the input line numbers of error lines
    known by line (no ``custom_id``, or a repeated one).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done_ids: set[str] = set()
        self.done_lines: set[int] = set()
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            raise ConfigError(f"cannot open output {path}: {exc}") from None
        self._lock(path)
        with open(self.fd, "rb", closefd=False) as f:
            data = f.read()
        whole = data[:data.rfind(b"\n") + 1]
        if len(whole) < len(data):
            os.ftruncate(self.fd, len(whole))
        for n, text in enumerate(whole.splitlines(), start=1):
            self._remember(n, text)

    def _lock(self, path: Path) -> None:
        """Two jobs appending to one output would each answer what the other has not yet
        written: the second is refused while the first runs (the lock dies with it)."""
        try:
            import fcntl
        except ImportError:  # not on this platform: one job per output is the user's to keep
            return
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            raise ConfigError(f"another structgen batch is writing to {path}; wait for it "
                              "or choose another output") from None

    def _remember(self, n: int, text: bytes) -> None:
        try:
            remember(self, text)
        except ConfigError:
            os.close(self.fd)
            raise ConfigError(f"{self.path} line {n} is not a batch result line: is it the "
                              "output of this batch?") from None

    def done(self, item: JobLine) -> bool:
        return is_done(self, item)

    def write(self, obj: dict[str, Any]) -> None:
        data = (json.dumps(obj, ensure_ascii=False) + "\n").encode()
        written = os.write(self.fd, data)  # one write: a whole line or, if killed, a cut one
        while written < len(data):  # a short write (disk full): finish the line or fail
            written += os.write(self.fd, data[written:])
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


@dataclass
class JobSummary(BatchSummary):
    """A file job's counts: those of :class:`BatchSummary`, plus what it did not run."""

    lines: int = 0
    skipped: int = 0  # answered by an earlier run
    invalid: int = 0  # malformed lines (error lines)
    output: Path | None = None

    def describe(self) -> str:
        return (f"{self.lines} lines: {self.skipped} already done, {self.invalid} invalid; "
                + super().describe() + f"; output: {self.output}")


class Output(typing.Protocol):
    """Where a job's lines go: one :class:`ResultFile`, or a directory of shards
    (:class:`structgen.batch.shards.ShardDir`)."""

    path: Path

    def done(self, item: JobLine) -> bool: ...

    def write(self, obj: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def start_job(out: Output, lines: list[JobLine], on_progress: ProgressFn | None
              ) -> tuple[JobSummary, list[JobLine]]:
    """Skip what ``out`` holds, write the malformed lines' error lines; (the running
    summary, the lines left to run). Shared by both executors."""
    todo = [item for item in lines if not out.done(item)]
    summary = JobSummary(total=len(todo), lines=len(lines), output=out.path,
                         skipped=len(lines) - len(todo))
    runnable = []
    for item in todo:
        if item.request is None or item.error is not None:
            assert item.error is not None
            out.write(error_line(item, item.error))
            summary.invalid += 1
            summary.add(item.error)
            if on_progress is not None:
                on_progress(summary)
        else:
            runnable.append(item)
    return summary, runnable


async def run_job(engine: Engine, lines: list[JobLine], output: Path, *,
                  concurrency: int | None = None, on_progress: ProgressFn | None = None
                  ) -> JobSummary:
    """Answer every line of ``lines`` not already in ``output``, appending a line each."""
    out = ResultFile(output)
    try:
        summary, runnable = start_job(out, lines, on_progress)

        def write(index: int, result: StructuredResult | StructgenError) -> None:
            out.write(answer_line(runnable[index], result))

        requests = [item.request for item in runnable if item.request is not None]
        await run_requests(engine, requests, concurrency=concurrency, on_done=write,
                           on_progress=on_progress, summary=summary)
    finally:
        out.close()
    return summary


def answer_line(item: JobLine, result: StructuredResult | StructgenError) -> dict[str, Any]:
    """The output line of a line that ran."""
    assert item.custom_id is not None
    if isinstance(result, StructgenError):
        return error_line(item, result)
    if item.format == "compact":
        return compact_line(item, result)
    return result_line(item.custom_id, result)
