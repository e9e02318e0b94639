"""Validate a backend's text and, if it is not valid, repair it or re-ask, in this order:

1. ``syntax``: almost-JSON made JSON with ``json-repair`` (code fences, prose around the
   object, single quotes, comments, trailing commas, and output cut off at ``max_tokens``,
   whose open strings/arrays/objects get closed);
2. ``coerce``: schema-aware fixes that have exactly one reading: ``"3"`` → ``3`` where the
   schema wants an integer, an enum value in the wrong case, a single item where a list is
   wanted, a default for an optional field that is missing or null, a key in the wrong case,
   an object wrapped in one extra key (:func:`coerce`);
3. ``reask``: the model gets its own output and the validator's errors (pointer + message)
   as a follow-up turn, under the same constraint, through the router.

Local stages (1, 2) are bounded by ``repair.max_repairs`` per text, re-asks by
``repair.max_retries`` (and ``repair.reask``). The first valid value wins; if none is valid,
:class:`ValidationFailed` carries the raw text, its errors and every attempt. An invalid
value is never returned.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import math
import re
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NoReturn

import json_repair

from structgen.backends import GenerationRequest, GenerationResult
from structgen.config import RepairConfig
from structgen.constrain.closing import minimal_value
from structgen.errors import Attempt, BackendError, ErrorDetail, ValidationFailed
from structgen.schema import CompiledOutput
from structgen.schema.limits import DEFAULT_LIMITS, Limits, nesting_depth
from structgen.schema.support import PostEnforced
from structgen.types import Repair
from structgen.validate import (
    Outcome,
    parse_json,
    schema_valid,
    validate_data,
    validate_text,
)

STAGES = ("syntax", "coerce", "reask")

# How repair asks the model again: (the follow-up request, the backend that gave the bad
# answer) -> the new answer. The engine routes it; repair never sees the engine.
Reask = Callable[[GenerationRequest, str], Awaitable[GenerationResult]]
_MAX_ECHO_CHARS = 4000  # how much of a bad answer is sent back in a re-ask


@dataclass
class Repaired:
    """A valid value and how it was obtained.

    ``stages`` lists every repair stage that ran, in order; when ``repaired`` is true the
    last one is the stage that produced the valid value.
    """

    value: Any
    text: str
    repaired: bool = False
    stages: list[str] = field(default_factory=list)
    post_enforced: list[PostEnforced] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)
    truncated: bool = False  # made from an answer cut off at max_tokens (see cut_short)

    @property
    def repairs(self) -> list[Repair]:
        """``stages`` as records; the last coercion carries the changes it made (earlier
        ones were on texts that a later stage replaced)."""
        last = max((i for i, s in enumerate(self.stages) if s == "coerce"), default=-1)
        return [Repair(s, tuple(self.changes) if i == last else ())
                for i, s in enumerate(self.stages)]


@dataclass
class LocalFix:
    """The outcome of the local stages on one text (``outcome.ok`` tells if it worked)."""

    outcome: Outcome
    text: str
    stages: list[str]
    attempts: list[Attempt]
    changes: list[str] = field(default_factory=list)


async def finalize(gen: GenerationResult, request: GenerationRequest, config: RepairConfig,
                   reask: Reask, *, allow_truncated: bool = False) -> Repaired:
    """Turn ``gen`` into a valid value for ``request.output`` or raise ValidationFailed.

    ``config`` bounds the stages; ``reask`` sends a follow-up turn (the re-ask stage).

    A value made from an answer cut off at ``max_tokens`` (:func:`cut_short`) may be valid
    and still not what the model meant ("Adds a verbose fl"): it raises ValidationFailed
    unless ``allow_truncated``, and is then returned with ``truncated`` set.
    """
    done = await _finalize(gen, request, config, reask)
    if done.truncated and not allow_truncated:
        error = ErrorDetail("", cut_note(gen, request) + "; or pass allow_truncated=True to "
                            "accept the cut value", "truncated")
        raise ValidationFailed("output was truncated", done.text, [error],
                               [*done.attempts, Attempt("truncated", done.text, [error],
                                                        gen.backend)])
    return done


def cut_note(gen: GenerationResult, request: GenerationRequest) -> str:
    """What to tell a caller whose answer was cut at ``max_tokens``: the budget, and what
    the shortest valid answer needs (in tokens when the backend measured it, the embedded
    one's closing path does; else in characters, from the schema)."""
    budget = request.sampling.max_tokens
    note = f"the answer was cut off at max_tokens={budget} (finish_reason 'length')"
    need = gen.stats.get("shortest_answer_tokens")
    if isinstance(need, int):
        return note + (f"; the shortest valid answer needs {need} tokens: raise max_tokens "
                       f"to at least {need}")
    output = request.output
    schema = output.json_schema if output is not None else None
    shortest = minimal_value(schema, schema) if schema is not None else None
    if shortest is not None:
        shown = shortest if len(shortest) <= 60 else shortest[:57] + "..."
        return note + (f"; the shortest valid answer is {len(shortest)} characters "
                       f"({shown}): raise max_tokens")
    return note + "; raise max_tokens"


def cut_short(text: str, finish_reason: str, output: CompiledOutput) -> bool:
    """Is a value made from ``text`` possibly missing what came after the cut?

    Only when generation stopped at ``max_tokens``. Even then, JSON whose top-level value
    is an object, array or string and parses as is was complete: its closing bracket or
    quote was generated. Anything else (a repaired text, a number, a regex or grammar
    match) may have gone on.
    """
    if finish_reason != "length":
        return False
    if output.kind != "json":
        return True
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return True
    return not isinstance(value, dict | list | str)


async def _finalize(gen: GenerationResult, request: GenerationRequest, cfg: RepairConfig,
                    reask: Reask) -> Repaired:
    output = request.output
    assert output is not None
    # What the grammar did not enforce (schema/support.py), validation below does.
    post_enforced = list(dict.fromkeys(gen.post_enforced))
    # Parsing, validation and coercion of a long answer take CPU time: in a worker thread,
    # so other requests on this event loop (and their deadlines) do not wait for them.
    fix = await asyncio.to_thread(repair_locally, gen.text, output,
                                  max_repairs=cfg.max_repairs, backend=gen.backend,
                                  truncated=gen.finish_reason == "length")
    attempts = list(fix.attempts)
    stages = list(fix.stages)
    if fix.outcome.ok:
        return Repaired(fix.outcome.value, fix.text, bool(stages), stages, post_enforced,
                        attempts, fix.changes,
                        truncated=cut_short(gen.text, gen.finish_reason, output))
    if gen.finish_reason == "length":
        _raise_cut(gen, request, attempts)  # a re-ask has the same budget: it would be cut too
    first_errors = attempts[0].errors
    last_text, last_errors = gen.text, _worst_errors(fix)
    retries = cfg.max_retries if cfg.reask else 0
    for _ in range(retries):
        stages.append("reask")
        follow_up = reask_request(request, last_text, last_errors)
        try:
            again = await reask(follow_up, gen.backend)
        except BackendError as exc:
            attempts.append(Attempt("reask", "", [ErrorDetail("", f"re-ask failed: {exc}",
                                                              "backend")], exc.backend or None))
            break
        fix = await asyncio.to_thread(repair_locally, again.text, output,
                                      max_repairs=cfg.max_repairs, backend=again.backend,
                                      truncated=again.finish_reason == "length",
                                      first_stage="reask")
        attempts.extend(fix.attempts)
        # The local stages that ran on the re-asked text count too ("reask", then "syntax").
        stages.extend(fix.stages)
        if fix.outcome.ok:
            return Repaired(fix.outcome.value, fix.text, True, stages, post_enforced, attempts,
                            fix.changes,
                            truncated=cut_short(again.text, again.finish_reason, output))
        if again.finish_reason == "length":
            _raise_cut(again, request, attempts)
        last_text, last_errors = again.text, _worst_errors(fix)
    raise ValidationFailed(
        f"output could not be made valid ({len(attempts)} attempt(s): "
        f"{', '.join(a.stage for a in attempts)})",
        gen.text, first_errors, attempts)


def _raise_cut(gen: GenerationResult, request: GenerationRequest,
               attempts: list[Attempt]) -> NoReturn:
    """An answer cut at ``max_tokens`` that no local repair made valid."""
    error = ErrorDetail("", cut_note(gen, request), "truncated")
    raise ValidationFailed("output was truncated before it was valid", gen.text, [error],
                           [*attempts, Attempt("truncated", gen.text, [error], gen.backend)])


def _worst_errors(fix: LocalFix) -> list[ErrorDetail]:
    """The errors to show the model: those of the most repaired form that still parsed."""
    for attempt in reversed(fix.attempts):
        if attempt.errors and not any(e.keyword == "json" for e in attempt.errors):
            return attempt.errors
    return fix.attempts[-1].errors if fix.attempts else []


# Local stages ----------------------------------------------------------------------------
def repair_locally(text: str, output: CompiledOutput, *, max_repairs: int = 2,
                   backend: str | None = None, truncated: bool = False,
                   first_stage: str = "generate") -> LocalFix:
    """Validate ``text``; if invalid, run the syntax and coercion stages (at most
    ``max_repairs`` of them). Pure: no model is called."""
    outcome = validate_text(text, output)
    attempts = [Attempt(first_stage, text, outcome.errors, backend)]
    if outcome.ok:
        return LocalFix(outcome, text, [], attempts)
    stages: list[str] = []
    budget = max_repairs
    if output.kind != "json":
        if budget > 0:
            candidate = _coerce_text(text, output)
            if candidate is not None:
                stages.append("coerce")
                fixed = validate_text(candidate, output)
                attempts.append(Attempt("coerce", candidate, fixed.errors, backend))
                if fixed.ok:
                    return LocalFix(fixed, candidate, stages, attempts,
                                    [f"/: {text!r} → {candidate!r}"])
        return LocalFix(outcome, text, stages, attempts)

    assert output.json_schema is not None
    data: Any = outcome.data
    parsed = outcome.errors[0].keyword != "json" if outcome.errors else True
    current = outcome
    if not parsed:
        if budget <= 0:
            return LocalFix(outcome, text, stages, attempts)
        budget -= 1
        stages.append("syntax")
        # A complete value inside the text (prose around it, a second answer after it):
        # the first one that is valid wins, before json-repair guesses at the whole text.
        for candidate in embedded_values(text, output.limits):
            fixed = validate_data(candidate, output)
            if fixed.ok:
                repaired_text = json.dumps(candidate, ensure_ascii=False)
                attempts.append(Attempt("syntax", repaired_text, [], backend))
                return LocalFix(fixed, repaired_text, stages, attempts)
        data, found = syntax_repair(text, output.limits)
        if not found:
            note = "the text was cut off at max_tokens" if truncated else "no JSON value found"
            attempts.append(Attempt("syntax", text, [ErrorDetail("", note, "json")], backend))
            return LocalFix(outcome, text, stages, attempts)
        current = validate_data(data, output)
        repaired_text = json.dumps(data, ensure_ascii=False)
        attempts.append(Attempt("syntax", repaired_text, current.errors, backend))
        if current.ok:
            return LocalFix(current, repaired_text, stages, attempts)
    if budget <= 0 or any(e.keyword == "depth" for e in current.errors):
        return LocalFix(current, text, stages, attempts)  # coerce recurses: not past limits
    new, changes = coerce(data, output.json_schema)
    if not changes:
        return LocalFix(current, text, stages, attempts)
    stages.append("coerce")
    coerced = validate_data(new, output)
    coerced_text = json.dumps(new, ensure_ascii=False)
    attempts.append(Attempt("coerce", coerced_text, coerced.errors, backend))
    return LocalFix(coerced, coerced_text, stages, attempts, changes)


_MAX_EMBEDDED = 16  # complete values read from one text
_DECODER = json.JSONDecoder()


def embedded_values(text: str, limits: Limits = DEFAULT_LIMITS) -> Iterator[Any]:
    """The complete JSON objects and arrays that ``text`` holds one after another from its
    first ``{`` or ``[`` (``{"n": 1} garbage {"n": 2}`` yields both; json-repair would keep
    the later one, or make a list of the two). The first one that does not parse ends the
    run: what follows may be its inside (an answer cut off at max_tokens), which
    json-repair closes instead."""
    if len(text) > limits.max_chars or nesting_depth(text, limits.max_depth) > limits.max_depth:
        return
    i = 0
    for _ in range(_MAX_EMBEDDED):
        starts = [j for j in (text.find("{", i), text.find("[", i)) if j != -1]
        if not starts:
            return
        try:
            value, i = _DECODER.raw_decode(text, min(starts))
        except (ValueError, RecursionError):  # not JSON from here (or a 5000-digit int)
            return
        yield value


def syntax_repair(text: str, limits: Limits = DEFAULT_LIMITS) -> tuple[Any, bool]:
    """Parse almost-JSON; ``(data, found)`` where ``found`` is false when no JSON was there."""
    # json-repair recurses per nesting level and is far slower than the C parser: text
    # past the parse limits is not repaired (validation already reported why)
    if len(text) > limits.max_chars or nesting_depth(text, limits.max_depth) > limits.max_depth:
        return None, False
    try:
        data = json_repair.loads(text)
    except Exception:  # json-repair raises assorted errors on pathological input
        return None, False
    # json-repair answers "" when it found nothing that looks like JSON.
    if data == "" and not re.search(r'""', text):
        return None, False
    return data, True


def _coerce_text(text: str, output: CompiledOutput) -> str | None:
    """Coercion for non-JSON outputs: surrounding whitespace/quotes, choice case."""
    stripped = text.strip()
    if len(stripped) >= 2 and stripped[0] == stripped[-1] and stripped[0] in "\"'`":
        stripped = stripped[1:-1].strip()
    if output.kind == "choice":
        matches = [c for c in output.choices or () if _norm(c) == _norm(stripped)]
        return matches[0] if len(matches) == 1 and matches[0] != text else None
    return stripped if stripped != text else None


def _norm(s: str) -> str:
    return re.sub(r"[\s_\-]+", "", s).casefold()


# Schema-aware coercion --------------------------------------------------------------------
_INT = re.compile(r"\s*[-+]?\d+\s*")
_NUM = re.compile(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*")


def coerce(data: Any, schema: dict[str, Any]) -> tuple[Any, list[str]]:
    """Return ``(coerced_copy, changes)``: fixes with exactly one reading, made while walking
    ``schema`` (following ``$ref``/``$defs``; an ``anyOf``/``oneOf`` only when exactly one
    branch can be made to fit). ``changes`` describes each fix as ``"pointer: what"``.

    >>> coerce({"n": "3"}, {"type": "object", "properties": {"n": {"type": "integer"}}})
    ({'n': 3}, ["/n: '3' → 3 (integer)"])
    """
    walker = _Coercer(schema, _Memo())
    try:
        return walker.walk(copy.deepcopy(data), schema, ""), walker.changes
    except _OverBudget:
        return copy.deepcopy(data), []  # too much work to be sure of one reading: none


# Trying every branch of every nested anyOf is exponential in the nesting (a recursive
# Union[Add, Mul, int] doubles per level); with the memo each (place, branches, value) is
# tried once, and a walk that still takes more steps than this gives up.
MAX_COERCE_STEPS = 20_000


class _OverBudget(Exception):
    pass


@dataclass
class _Memo:
    """What one coercion learnt, shared by the trial walks of its branches."""

    steps: int = 0
    fits: dict[tuple[int, str], bool] = field(default_factory=dict)
    branches: dict[tuple[str, int, str], tuple[Any, list[str]]] = field(default_factory=dict)
    # the schemas keyed by id() above, kept alive so that no id is reused while it is known
    keep: list[Any] = field(default_factory=list)


def _fingerprint(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=repr)


class _Coercer:
    def __init__(self, root: dict[str, Any], memo: _Memo) -> None:
        self.root = root
        self.memo = memo
        self.changes: list[str] = []

    def resolve(self, schema: Any) -> Any:
        for _ in range(32):  # a chain of refs longer than this is a cycle
            if not isinstance(schema, dict) or "$ref" not in schema:
                return schema
            ref = schema["$ref"]
            if not isinstance(ref, str) or not ref.startswith("#"):
                return {}
            target: Any = self.root
            for part in ref[1:].split("/")[1:]:
                part = part.replace("~1", "/").replace("~0", "~")
                if not isinstance(target, dict) or part not in target:
                    return {}
                target = target[part]
            siblings = {k: v for k, v in schema.items() if k != "$ref"}
            schema = {**target, **siblings} if siblings and isinstance(target, dict) else target
        return {}

    def fits(self, data: Any, schema: Any) -> bool:
        if not isinstance(schema, dict):
            return schema is not False
        key = (id(schema), _fingerprint(data))
        known = self.memo.fits.get(key)
        if known is None:
            self.step()
            standalone = dict(schema)
            for defs in ("$defs", "definitions"):
                if defs in self.root and defs not in standalone:
                    standalone[defs] = self.root[defs]
            known = self.memo.fits[key] = schema_valid(data, standalone)
            self.memo.keep.append(schema)
        return known

    def step(self) -> None:
        self.memo.steps += 1
        if self.memo.steps > MAX_COERCE_STEPS:
            raise _OverBudget

    def note(self, pointer: str, what: str) -> None:
        self.changes.append(f"{pointer or '/'}: {what}")

    def walk(self, data: Any, schema: Any, pointer: str) -> Any:
        self.step()
        schema = self.resolve(schema)
        if not isinstance(schema, dict):
            return data
        for sub in schema.get("allOf", ()):
            data = self.walk(data, sub, pointer)
        for key in ("anyOf", "oneOf"):
            if key in schema:
                data = self.branches(data, schema[key], pointer)
        if "enum" in schema:
            data = self.enum(data, list(schema["enum"]), pointer)
        elif "const" in schema:
            data = self.enum(data, [schema["const"]], pointer)
        types = schema.get("type")
        if types is not None:
            data = self.retype(data, [types] if isinstance(types, str) else list(types), pointer)
        if isinstance(data, list):
            prefix = schema.get("prefixItems", [])
            items = schema.get("items")
            for i in range(len(data)):
                sub = prefix[i] if i < len(prefix) else items
                if sub is not None:
                    data[i] = self.walk(data[i], sub, f"{pointer}/{i}")
        elif isinstance(data, dict) and isinstance(schema.get("properties"), dict):
            data = self.obj(data, schema, pointer)
        return data

    def branches(self, data: Any, branches: list[Any], pointer: str) -> Any:
        key = (pointer, id(branches), _fingerprint(data))
        known = self.memo.branches.get(key)
        if known is None:
            value, changes = self._branches(data, branches, pointer)
            known = self.memo.branches[key] = (copy.deepcopy(value), changes)
            self.memo.keep.append(branches)
        value, changes = known
        self.changes.extend(changes)
        return copy.deepcopy(value)  # the caller edits it in place; the memo keeps its own

    def _branches(self, data: Any, branches: list[Any], pointer: str
                  ) -> tuple[Any, list[str]]:
        if any(self.fits(data, b) for b in branches):
            return data, []
        fitting: list[tuple[Any, list[str]]] = []
        for branch in branches:
            trial = _Coercer(self.root, self.memo)
            candidate = trial.walk(copy.deepcopy(data), branch, pointer)
            if trial.changes and self.fits(candidate, branch):
                fitting.append((candidate, trial.changes))
        if len(fitting) != 1:
            return data, []  # none or several readings: not ours to choose
        return fitting[0]

    def enum(self, data: Any, values: list[Any], pointer: str) -> Any:
        if data in values or not isinstance(data, str):
            return data
        matches = [v for v in values if (isinstance(v, str) and _norm(v) == _norm(data))
                   or (not isinstance(v, str) and json.dumps(v) == data.strip())]
        if len(matches) == 1:
            self.note(pointer, f"{data!r} → {matches[0]!r} (enum)")
            return matches[0]
        return data

    def retype(self, data: Any, types: list[str], pointer: str) -> Any:
        if any(_is_type(data, t) for t in types):
            return data
        readings: list[tuple[str, Any]] = []
        for t in types:
            converted = _convert(data, t)
            if converted is not _NO:
                readings.append((t, converted))
        if len(readings) != 1:
            return data
        t, value = readings[0]
        self.note(pointer, f"{_short(data)} → {_short(value)} ({t})")
        return value

    def obj(self, data: dict[str, Any], schema: dict[str, Any], pointer: str) -> dict[str, Any]:
        props: dict[str, Any] = schema["properties"]
        required = set(schema.get("required", ()))
        if len(data) == 1 and props:
            (outer, inner), = data.items()
            if outer not in props and isinstance(inner, dict) and inner and set(inner) <= set(props):
                self.note(pointer, f"unwrapped the object from key {outer!r}")
                data = inner
        for key in [k for k in data if k not in props]:
            matches = [p for p in props if _norm(p) == _norm(key) and p not in data]
            if len(matches) == 1:
                self.note(pointer, f"key {key!r} → {matches[0]!r}")
                data[matches[0]] = data.pop(key)
        for name, sub in props.items():
            sub_schema = self.resolve(sub)
            child = f"{pointer}/{name}"
            has_default = isinstance(sub_schema, dict) and "default" in sub_schema
            if name not in data:
                if name in required and has_default:
                    data[name] = copy.deepcopy(sub_schema["default"])
                    self.note(child, "missing, filled with its default")
                continue
            if (data[name] is None and has_default and name not in required
                    and not self.fits(None, sub_schema)):
                data[name] = copy.deepcopy(sub_schema["default"])
                self.note(child, "null, replaced by its default")
                continue
            data[name] = self.walk(data[name], sub, child)
        return data


class _Missing:
    pass


_NO: Any = _Missing()


def _is_type(data: Any, t: str) -> bool:
    if t == "integer":
        return (isinstance(data, int) and not isinstance(data, bool)) or (
            isinstance(data, float) and data.is_integer())
    if t == "number":
        return isinstance(data, int | float) and not isinstance(data, bool)
    return {"string": str, "boolean": bool, "array": list, "object": dict,
            "null": type(None)}.get(t, object) in type(data).__mro__


def _convert(data: Any, t: str) -> Any:
    """The one obvious conversion of ``data`` to JSON type ``t``, or ``_NO``."""
    if isinstance(data, str) and len(data) > DEFAULT_LIMITS.max_number_digits \
            and t in ("integer", "number"):
        return _NO  # past the parse limits: not a number anyone wrote on purpose
    if t == "integer" and isinstance(data, str) and _INT.fullmatch(data):
        return int(data)
    if t == "number" and isinstance(data, str) and _NUM.fullmatch(data):
        number = float(data)
        if not math.isfinite(number):
            return _NO
        return int(data) if _INT.fullmatch(data) else number
    if t == "boolean" and isinstance(data, str) and data.strip().casefold() in ("true", "false"):
        return data.strip().casefold() == "true"
    if t == "string" and isinstance(data, int | float) and not isinstance(data, bool):
        return json.dumps(data)
    if t in ("array", "object") and isinstance(data, str):
        decoded, errors = parse_json(data)  # bounded: the string is model text too
        if errors:
            decoded = _NO
        if decoded is not _NO and _is_type(decoded, t):
            return decoded
    if t == "array" and data is not None:
        return [data]
    return _NO


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# Re-ask ------------------------------------------------------------------------------------
def reask_request(request: GenerationRequest, bad_text: str,
                  errors: list[ErrorDetail]) -> GenerationRequest:
    """The follow-up request: the model's own answer, then the validator's errors."""
    assert request.output is not None
    shown = bad_text if len(bad_text) <= _MAX_ECHO_CHARS else bad_text[:_MAX_ECHO_CHARS] + "…"
    listed = "\n".join(f"- {e.pointer or '/'}: {e.message}" for e in errors[:20]) or "- (unknown)"
    what = ("the corrected JSON object only, with no explanation and no code fences"
            if request.output.kind == "json" else "the corrected answer only")
    feedback = (f"Your answer is not valid. The validator reported these errors "
                f"(JSON pointer: message):\n{listed}\n\nReply with {what}.")
    messages = [*request.messages, {"role": "assistant", "content": shown or "(empty)"},
                {"role": "user", "content": feedback}]
    return dataclasses.replace(request, messages=messages)  # type: ignore[arg-type]
