"""The layout of JSON text (where the whitespace goes), read from text and from a prompt.

A grammar that forces a layout the model does not expect costs content: with no whitespace
allowed, SmolLM2-135M answered an intent request with empty paths and confidence 0 where
the same model, free to write ``{"kind": "debug", ...}``, copied the path from the request
(docs/embedded.md, "JSON layout"). The ``"auto"`` layout therefore follows the worked
examples a prompt gives as assistant turns (the model continues a conversation in the
layout it answered in before); without them it is ``json.dumps``' default (``"spaced"``),
compact or spaced examples written inside a message's text included (measured,
benchmarks/quality.py: the spaced grammar answered better than the compact one even
beside compact examples in the system prompt), and the free ``"any"`` when the examples
written there are indented (measured: better than spaced beside them).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence

# The layouts with fixed separators, (item, key) as json.dumps' ``separators`` names them:
# every engine (and a guidance vLLM server) emits exactly these and no other whitespace.
# "any" is the free layout (bounded whitespace between tokens), "auto" picks one per prompt.
JSON_SEPARATORS: dict[str, tuple[str, str]] = {"compact": (",", ":"), "spaced": (", ", ": ")}
LAYOUTS = (*JSON_SEPARATORS, "any")


def guidance_options(layout: str) -> dict[str, object] | None:
    """llguidance's JSON options ("x-guidance") for a fixed-separator layout (None for the
    others): what the embedded llguidance engine compiles with, and what goes into a
    schema sent to a server whose grammar engine is llguidance (it reads a schema's
    "x-guidance" over the server's defaults)."""
    separators = JSON_SEPARATORS.get(layout)
    if separators is None:
        return None
    return {"whitespace_flexible": False, "item_separator": separators[0],
            "key_separator": separators[1]}
# what "auto" becomes when no assistant turn shows a JSON example (measured:
# benchmarks/quality.py)
DEFAULT_LAYOUT = "spaced"
# a JSON example shown indented (json.dumps(indent=...)): no fixed-separator layout
# matches it, so the answer gets the bounded free layout
INDENTED_LAYOUT = "any"
# keys that make a JSON object a JSON Schema (shown in a prompt, not an example answer)
_SCHEMA_KEYS = frozenset({"$schema", "$defs", "properties", "definitions"})
_WS = " \t\n\r"


# what a byte (or a character's code) was to the JSON strings: StringState.step
OUTSIDE, OPENED, INSIDE, CLOSED = 0, 1, 2, 3
_QUOTE, _BACKSLASH = 0x22, 0x5C


class StringState:
    """Whether a JSON text, followed byte by byte (or character code by character code),
    is inside a string, escapes known: the one string lexer of the layout reader, the
    tool-call scanner (``constrain.calls``) and the decoder's guards (``backends.local``).
    """

    __slots__ = ("escape", "in_string")

    def __init__(self, *, in_string: bool = False) -> None:
        self.in_string = in_string
        self.escape = False

    def copy(self) -> StringState:
        """An independent copy (a fork of the text followed so far)."""
        out = StringState(in_string=self.in_string)
        out.escape = self.escape
        return out

    def step(self, c: int) -> int:
        """Follow ``c``; OPENED / INSIDE / CLOSED for a string's bytes, else OUTSIDE."""
        if self.in_string:
            if self.escape:
                self.escape = False
            elif c == _BACKSLASH:
                self.escape = True
            elif c == _QUOTE:
                self.in_string = False
                return CLOSED
            return INSIDE
        if c == _QUOTE:
            self.in_string = True
            return OPENED
        return OUTSIDE


def json_layout(text: str) -> str | None:
    """The layout of one JSON text: ``"compact"`` (no whitespace between tokens),
    ``"spaced"`` (exactly one space after each ``,`` and ``:``, none elsewhere, as
    ``json.dumps`` writes it), ``"indented"`` (line breaks between tokens), ``"other"``
    (any other whitespace), or None when it has no separator to tell by (``[]``, ``1``).
    Whitespace inside strings does not count; ``text`` need not be valid JSON.

    >>> json_layout('{"a": 1, "b": [2, 3]}'), json_layout('{"a":1}')
    ('spaced', 'compact')
    """
    seen: set[str] = set()
    separators = 0
    for before, gap in _gaps(text.strip()):
        if "\n" in gap:
            return "indented"
        if before in ",:":
            separators += 1
            seen.add({"": "compact", " ": "spaced"}.get(gap, "other"))
        elif gap:
            seen.add("other")
    if not separators and not seen:
        return None
    return seen.pop() if len(seen) == 1 else "other"


def spaced(text: str, *, in_string: bool = False) -> str:
    """Compact JSON text as ``json.dumps`` spaces it: a space after each ``,`` and ``:``
    between tokens (``text`` starts inside a string when ``in_string``).

    >>> spaced('{"a":[1,2],"b:c":3}')
    '{"a": [1, 2], "b:c": 3}'
    """
    return "".join(c + " " if between and c in ",:" else c
                   for _, c, between in _scan(text, in_string=in_string))


def _gaps(text: str) -> Iterator[tuple[str, str]]:
    """(the character before, the whitespace run) for each place between two JSON tokens
    (empty runs included)."""
    for i, c, between in _scan(text):
        if between and c not in _WS:
            yield from _gap_after(text, c, i + 1)


def _scan(text: str, *, in_string: bool = False) -> Iterator[tuple[int, str, bool]]:
    """Each character of JSON text with its index and whether, once it is read, the text
    stands between tokens (outside every string: true of a string's closing quote, false
    of its opening one); ``text`` starts inside a string when ``in_string``."""
    strings = StringState(in_string=in_string)
    for i, c in enumerate(text):
        strings.step(ord(c))
        yield i, c, not strings.in_string


def _gap_after(text: str, before: str, i: int) -> Iterator[tuple[str, str]]:
    j = i
    while j < len(text) and text[j] in _WS:
        j += 1
    if j < len(text) and (before in "{}[],:\"" or text[j] in "{}[],:\""):
        yield before, text[i:j]


def prompt_layout(messages: Sequence[Mapping[str, object]]) -> str | None:
    """The layout of the worked examples a prompt gives as assistant turns (``"compact"``,
    ``"spaced"`` or ``"indented"``; the most frequent, ties going to ``"spaced"``), None
    when it gives none. An example is an assistant turn whose text is a JSON object or
    array (not a JSON Schema); JSON written inside any message's text does not count."""
    votes: Counter[str] = Counter()
    for message in messages:
        content = message.get("content")
        if message.get("role") != "assistant" or not isinstance(content, str):
            continue
        layout = _example_layout(content.strip())
        if layout is not None:
            votes[layout] += 1
    votes.pop("other", None)
    if not votes:
        return None
    ranked = sorted(votes.items(), key=lambda kv: (kv[1], kv[0] == "spaced"), reverse=True)
    return ranked[0][0]


def choose_layout(setting: str, messages: Sequence[Mapping[str, object]]) -> str:
    """The layout a request's grammar enforces: ``setting`` itself unless it is ``"auto"``,
    then the layout of the prompt's assistant-turn examples (:func:`prompt_layout`); with
    none, :data:`INDENTED_LAYOUT` when the JSON examples written inside the messages'
    text are indented (measured: the free layout, in which the model writes their
    indentation, answered better there than spaced), else :data:`DEFAULT_LAYOUT`. An
    indented turn gets :data:`INDENTED_LAYOUT` too."""
    if setting != "auto":
        return setting
    shown = prompt_layout(messages) or _text_layout(messages)
    if shown is None:
        return DEFAULT_LAYOUT
    return INDENTED_LAYOUT if shown == "indented" else shown


def _text_layout(messages: Sequence[Mapping[str, object]]) -> str | None:
    """``"indented"`` when most JSON examples written inside the messages' text (not JSON
    Schemas) are indented, else None: compact or spaced examples there do not choose the
    layout (measured: spaced answered better beside compact ones)."""
    votes: Counter[str] = Counter()
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            for text in _embedded_objects(content):
                layout = _example_layout(text)
                if layout is not None:
                    votes["indented" if layout == "indented" else "other"] += 1
    return "indented" if votes["indented"] > votes["other"] else None


def _example_layout(text: str) -> str | None:
    if not text.startswith(("{", "[")):
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if isinstance(value, dict) and _SCHEMA_KEYS & value.keys():
        return None
    return json_layout(text)



def _embedded_objects(content: str) -> Iterator[str]:
    """The JSON objects written inside free text, outermost only, left to right."""
    decoder = json.JSONDecoder()
    i = content.find("{")
    while i >= 0:
        try:
            _, end = decoder.raw_decode(content, i)
        except (ValueError, RecursionError):
            i = content.find("{", i + 1)
            continue
        yield content[i:end]
        i = content.find("{", end)
