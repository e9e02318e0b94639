"""The shortest way to finish a JSON answer: what budget-aware closing steers to.

:class:`JsonCursor` follows the answer's bytes as the decoder produces them (a JSON lexer
with a stack of open objects and arrays, each with the subschema that applies there).
:meth:`JsonCursor.completion` then writes the text that closes everything open with the
fewest characters the schema allows: the current string, number or literal finished, the
required members an open object still lacks, the items an array still needs for
``minItems``, then the closing brackets.

The text is a proposal: the decoder tokenizes it and keeps it only if the grammar engine
accepts it (so a schema feature this module does not model, a ``pattern`` say, costs a
fallback, never an invalid answer). When the schema gives no proposal,
:func:`walk_to_accept` walks the grammar itself, through any engine's matcher; the tokens
it tries first are :func:`closing_candidates`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Protocol

from structgen.schema.layout import spaced

_MAX_DEPTH = 24  # schema nesting followed when building a minimal value
# Tokens of the model's own words a required member not yet begun is owed beyond its
# minimal value (:meth:`JsonCursor.owed`): a string's, and the most one member (an
# object or array of several) is owed in all. A number, boolean or enum member's minimal
# value is about as long as the model's (a token or two); a number's a few tokens shorter.
RESERVE_STRING = 12
RESERVE_MEMBER = 24


@dataclass
class _Frame:
    kind: str  # "object" | "array"
    schema: Any
    # object: "key_or_end" after "{", "key" after ",", "colon", "value", "comma_or_end"
    # array: "value_or_end" after "[", "value" after ",", "comma_or_end"
    state: str
    keys: set[str] = field(default_factory=set)
    key: str = ""  # the member being written
    count: int = 0  # array items so far
    # an object of an anyOf/oneOf with several object branches: all of them, so a member
    # whose value is a branch's ``const`` (a tool call's "name") picks the branch to close
    options: tuple[Any, ...] = ()


class JsonCursor:
    """Where an answer stands inside its JSON Schema (see the module docstring)."""

    def __init__(self, schema: Any, *, spaced: bool = False) -> None:
        self.root = schema if isinstance(schema, dict) else {}
        self.stack: list[_Frame] = []
        self.top_done = False
        self.started = False
        self.lexeme = ""  # "string" | "key" | "number" | "literal" | ""
        self.buf = ""  # text of the lexeme so far (unescaped enough for keys and lengths)
        self.escape = False
        self.broken = False  # the text left JSON: no completion is proposed
        # the answer's layout: spaced from the start when the grammar enforces it
        # (``spaced``), else as written so far (a space after a "," or ":")
        self.spaced = spaced
        self.after_separator = False  # the last character was a "," or ":" (no space yet)
        self._owed: dict[int, int] = {}  # content_reserve per member schema (shared by copies)

    def copy(self) -> JsonCursor:
        out = JsonCursor.__new__(JsonCursor)
        out.__dict__.update(self.__dict__)
        out.stack = [_Frame(f.kind, f.schema, f.state, set(f.keys), f.key, f.count, f.options)
                     for f in self.stack]
        return out

    # Lexer ----------------------------------------------------------------------------------
    def feed(self, text: str) -> None:
        for ch in text:
            if self.broken:
                return
            self._char(ch)

    def _char(self, ch: str) -> None:
        if self.lexeme in ("string", "key"):
            if self.escape:
                self.escape = False
                self.buf += "?"
            elif ch == "\\":
                self.escape = True
            elif ch == '"':
                self._end_string()
            else:
                self.buf += ch
            return
        if self.lexeme == "number":
            if ch in "0123456789+-.eE":
                self.buf += ch
                return
            self._value_done()
        elif self.lexeme == "literal":
            if ch.isalpha():
                self.buf += ch
                return
            self._value_done()
        if ch in " \t\n\r":
            self.spaced = self.spaced or (self.after_separator and ch == " ")
            self.after_separator = False
            return
        self.after_separator = ch in ",:"
        frame = self.stack[-1] if self.stack else None
        if frame is not None and frame.kind == "object" and frame.state in ("key_or_end", "key"):
            if ch == '"':
                self.lexeme, self.buf = "key", ""
            elif ch == "}" and frame.state == "key_or_end":
                self._close()
            else:
                self.broken = True
            return
        if frame is not None and frame.kind == "object" and frame.state == "colon":
            if ch == ":":
                frame.state = "value"
            else:
                self.broken = True
            return
        if frame is not None and frame.state == "comma_or_end":
            if ch == ",":
                frame.state = "key" if frame.kind == "object" else "value"
            elif ch == ("}" if frame.kind == "object" else "]"):
                self._close()
            else:
                self.broken = True
            return
        if frame is not None and frame.kind == "array" and frame.state == "value_or_end" \
                and ch == "]":
            self._close()
            return
        self._start_value(ch)

    def _start_value(self, ch: str) -> None:
        if self.top_done and not self.stack:
            self.broken = True
            return
        self.started = True
        schema = self._value_schema()
        if ch == "{":
            self.stack.append(_Frame("object", _object_schema(self.root, schema), "key_or_end",
                                     options=_object_branches(self.root, schema)))
        elif ch == "[":
            self.stack.append(_Frame("array", schema, "value_or_end"))
        elif ch == '"':
            self.lexeme, self.buf = "string", ""
        elif ch in "-0123456789":
            self.lexeme, self.buf = "number", ch
        elif ch in "tfn":
            self.lexeme, self.buf = "literal", ch
        else:
            self.broken = True

    def _value_schema(self) -> Any:
        """The subschema of the value about to start (where the cursor stands)."""
        if not self.stack:
            return self.root
        frame = self.stack[-1]
        if frame.kind == "object":
            return _member_schema(self.root, frame.schema, frame.key)
        return _item_schema(self.root, frame.schema, frame.count)

    def _end_string(self) -> None:
        if self.lexeme == "key":
            frame = self.stack[-1]
            frame.key = self.buf
            frame.keys.add(self.buf)
            frame.state = "colon"
            self.lexeme, self.buf = "", ""
            return
        owner = self.stack[-1] if self.stack else None
        if owner is not None and owner.kind == "object" and owner.options:
            for branch in owner.options:
                member = _resolve(self.root, _properties(self.root, branch).get(owner.key, {}))
                if member.get("const") == self.buf:
                    owner.schema = branch
                    break
        self._value_done()

    def _value_done(self) -> None:
        self.lexeme, self.buf = "", ""
        self._after_value()

    def _after_value(self) -> None:
        if not self.stack:
            self.top_done = True
            return
        frame = self.stack[-1]
        if frame.kind == "array":
            frame.count += 1
        frame.state = "comma_or_end"

    def _close(self) -> None:
        self.stack.pop()
        self._after_value()

    def open_frame(self) -> _Frame | None:
        """The innermost open object or array (None: none, or the text left JSON)."""
        return self.stack[-1] if self.stack and not self.broken else None

    def missing_keys(self, frame: _Frame) -> set[str]:
        """The required members of ``frame`` (an object) not begun yet."""
        return {k for k in _required(self.root, frame.schema) if k not in frame.keys}

    def optional_keys(self, frame: _Frame) -> set[str]:
        """The declared members of ``frame`` (an object) that are neither required nor
        begun."""
        required = set(_required(self.root, frame.schema))
        return {k for k in _properties(self.root, frame.schema)
                if k not in required and k not in frame.keys}

    def in_string_value(self) -> bool:
        """Whether the answer is inside a string value (not a key), past any escape."""
        return self.lexeme == "string" and not self.escape and not self.broken

    def owed(self) -> tuple[int, int]:
        """(tokens, members): what the required members not begun yet, in every open
        object, are owed beyond the minimal values the closing path would give them
        (:func:`content_reserve`), and how many they are. What the decoder keeps back from
        the member being written, so that those members are the model's words and not
        closing's ``"a"`` and ``0``."""
        if self.broken or not self.started:
            return 0, 0
        total = members = 0
        for frame in self.stack:
            if frame.kind != "object":
                continue
            for key in _required(self.root, frame.schema):
                if key not in frame.keys:
                    member = _member_schema(self.root, frame.schema, key)
                    owed = self._owed.get(id(member))
                    if owed is None:  # (the schema's parts live as long as the cursor)
                        owed = self._owed[id(member)] = content_reserve(self.root, member)
                    total += owed
                    members += 1
        return total, members

    # Completion -----------------------------------------------------------------------------
    def completion(self) -> str | None:
        """The text that finishes the answer, or None when none can be proposed; in the
        layout the answer has so far (compact, or spaced as ``json.dumps`` writes it)."""
        text = self._compact_completion()
        if not text or not self.spaced:
            return text
        lead = " " if self.after_separator and self.lexeme not in ("string", "key") else ""
        return lead + spaced(text, in_string=self.lexeme in ("string", "key"))

    def _compact_completion(self) -> str | None:
        if self.broken:
            return None
        if not self.started:
            return minimal_value(self.root, self.root)
        cur = self.copy()
        out: list[str] = []
        if cur.lexeme in ("string", "key"):
            if cur.escape:
                return None
            if cur.lexeme == "key":
                frame = cur.stack[-1]
                name = _complete_key(cur.root, frame, cur.buf)
                if name is None:
                    return None
                out.append(name[len(cur.buf):] + '":')
                frame.key = name
                frame.keys.add(name)
                value = minimal_value(cur.root, _member_schema(cur.root, frame.schema, name))
                if value is None:
                    return None
                out.append(value)
                frame.state = "comma_or_end"
            else:
                rest = _string_rest(cur.root, cur._value_schema(), cur.buf)
                if rest is None:
                    return None
                out.append(rest)
                cur._value_done()
        elif cur.lexeme == "number":
            tail = cur.buf[-1]
            out.append("0" if tail in "-+.eE" else "")
            cur._value_done()
        elif cur.lexeme == "literal":
            word = next((w for w in ("true", "false", "null") if w.startswith(cur.buf)), None)
            if word is None:
                return None
            out.append(word[len(cur.buf):])
            cur._value_done()
        while cur.stack:
            frame = cur.stack[-1]
            piece = _close_frame(cur.root, frame)
            if piece is None:
                return None
            out.append(piece)
            cur.stack.pop()
            if cur.stack:
                cur.stack[-1].state = "comma_or_end"
                if cur.stack[-1].kind == "array":
                    cur.stack[-1].count += 1
        return "".join(out)


def _close_frame(root: dict[str, Any], frame: _Frame) -> str | None:
    parts: list[str] = []
    if frame.kind == "object":
        schema = frame.schema
        if frame.state == "colon":
            value = minimal_value(root, _member_schema(root, schema, frame.key))
            if value is None:
                return None
            parts.append(":" + value)
            frame.state = "comma_or_end"
        elif frame.state == "value":
            value = minimal_value(root, _member_schema(root, schema, frame.key))
            if value is None:
                return None
            parts.append(value)
            frame.state = "comma_or_end"
        missing = [k for k in _required(root, schema) if k not in frame.keys]
        if frame.state == "key" and not missing:
            # a member must follow the comma: the first declared one not yet written
            props = _properties(root, schema)
            extra = next((k for k in props if k not in frame.keys), None)
            if extra is None:
                return None
            missing = [extra]
        members = []
        for key in missing:
            value = minimal_value(root, _member_schema(root, schema, key))
            if value is None:
                return None
            members.append(json.dumps(key, ensure_ascii=False) + ":" + value)
        lead = "," if frame.state == "comma_or_end" and members else ""
        parts.append(lead + ",".join(members) + "}")
        return "".join(parts)
    schema = _resolve(root, frame.schema)
    need = max(0, int(_num(schema.get("minItems"), 0)) - frame.count)
    if frame.state == "value":
        need = max(need, 1)
    items = []
    for i in range(need):
        value = minimal_value(root, _item_schema(root, schema, frame.count + i))
        if value is None:
            return None
        items.append(value)
    lead = "," if frame.state == "comma_or_end" and items else ""
    return lead + ",".join(items) + "]"


# Schema navigation ----------------------------------------------------------------------------
def _resolve(root: dict[str, Any], schema: Any, depth: int = 0) -> dict[str, Any]:
    """``schema`` with local ``$ref``s followed and ``allOf`` branches merged (members)."""
    if not isinstance(schema, dict):
        return {} if schema is not False else {"not": {}}
    while "$ref" in schema and depth < _MAX_DEPTH:
        target = _pointer(root, schema["$ref"])
        if target is None:
            break
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        schema = {**target, **rest} if rest else target
        depth += 1
    if "allOf" in schema and depth < _MAX_DEPTH:
        merged = {k: v for k, v in schema.items() if k != "allOf"}
        for branch in schema["allOf"]:
            part = _resolve(root, branch, depth + 1)
            for key, value in part.items():
                if key == "properties":
                    merged["properties"] = {**merged.get("properties", {}), **value}
                elif key == "required":
                    merged["required"] = [*merged.get("required", []), *value]
                else:
                    merged.setdefault(key, value)
        schema = merged
    return schema


def _pointer(root: dict[str, Any], ref: Any) -> dict[str, Any] | None:
    if not isinstance(ref, str) or not ref.startswith("#"):
        return None
    node: Any = root
    for part in ref[1:].split("/")[1:] if ref != "#" else []:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node if isinstance(node, dict) else None


def _object_schema(root: dict[str, Any], schema: Any) -> Any:
    """For an object value: the branch of an anyOf/oneOf that describes objects."""
    schema = _resolve(root, schema)
    for key in ("anyOf", "oneOf"):
        for branch in schema.get(key, []):
            b = _resolve(root, branch)
            if b.get("type") == "object" or "properties" in b:
                return b
    return schema


def _object_branches(root: dict[str, Any], schema: Any) -> tuple[Any, ...]:
    """The object branches of ``schema``'s anyOf/oneOf, when there are several."""
    schema = _resolve(root, schema)
    for key in ("anyOf", "oneOf"):
        branches = tuple(b for b in map(lambda x: _resolve(root, x), schema.get(key, []))
                         if b.get("type") == "object" or "properties" in b)
        if len(branches) > 1:
            return branches
    return ()


def _properties(root: dict[str, Any], schema: Any) -> dict[str, Any]:
    props = _resolve(root, schema).get("properties")
    return props if isinstance(props, dict) else {}


def _required(root: dict[str, Any], schema: Any) -> list[str]:
    req = _resolve(root, schema).get("required")
    return [k for k in req if isinstance(k, str)] if isinstance(req, list) else []


def _member_schema(root: dict[str, Any], schema: Any, key: str) -> Any:
    schema = _resolve(root, schema)
    props = schema.get("properties")
    if isinstance(props, dict) and key in props:
        return props[key]
    extra = schema.get("additionalProperties")
    return extra if isinstance(extra, dict) else {}


def _item_schema(root: dict[str, Any], schema: Any, index: int) -> Any:
    schema = _resolve(root, schema)
    prefix = schema.get("prefixItems")
    if isinstance(prefix, list) and index < len(prefix):
        return prefix[index]
    items = schema.get("items")
    return items if isinstance(items, dict) else {}


def _complete_key(root: dict[str, Any], frame: _Frame, partial: str) -> str | None:
    missing = [k for k in _required(root, frame.schema) if k not in frame.keys]
    names = missing + [k for k in _properties(root, frame.schema) if k not in frame.keys]
    for name in names:
        if name.startswith(partial):
            return name
    return None


def _num(value: Any, default: float) -> float:
    return value if isinstance(value, int | float) and not isinstance(value, bool) \
        else default


def _string_rest(root: dict[str, Any], schema: Any, partial: str) -> str | None:
    """What finishes a string value begun as ``partial`` (closing quote included)."""
    schema = _resolve(root, schema)
    fixed = [schema["const"]] if "const" in schema else schema.get("enum")
    if isinstance(fixed, list):
        for value in sorted((v for v in fixed if isinstance(v, str)), key=len):
            if value.startswith(partial):
                return json.dumps(value, ensure_ascii=False)[1 + len(partial):]
        return None
    for key in ("anyOf", "oneOf"):
        for branch in schema.get(key, []) if isinstance(schema.get(key), list) else []:
            b = _resolve(root, branch)
            if b.get("type") == "string" or "enum" in b or "const" in b:
                return _string_rest(root, b, partial)
    return "a" * max(0, _string_min(root, schema) - len(partial)) + '"'


def _string_min(root: dict[str, Any], schema: Any) -> int:
    return int(_num(_resolve(root, schema).get("minLength"), 0))


def content_reserve(root: dict[str, Any], schema: Any, depth: int = 0) -> int:
    """Tokens a member of ``schema`` is owed beyond its minimal value: a free string
    :data:`RESERVE_STRING` (its ``maxLength`` permitting; one with a ``pattern`` or
    ``format``, a code or a date whose closing value is as long as the model's, 1), an array what its ``minItems``
    (at least one) items are owed, an object what its required members are, at most
    :data:`RESERVE_MEMBER`; a number 3 (``0.85`` against ``0``), an integer, boolean or
    enum 1, a constant or null nothing."""
    if depth > _MAX_DEPTH or schema is True or schema == {}:
        return 0
    schema = _resolve(root, schema)
    if "const" in schema:
        return 0
    if "enum" in schema:
        return 1
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return min(content_reserve(root, b, depth + 1) for b in schema[key])
    types = schema.get("type")
    types = [types] if isinstance(types, str) else types if isinstance(types, list) else []
    if "null" in types:
        return 0
    if "number" in types:  # "0.85" against closing's "0"
        return 3
    if "integer" in types or "boolean" in types:
        return 1
    if "string" in types:
        if "pattern" in schema or "format" in schema:
            # a code, a date: the closing path already writes as much as the model would
            return 1
        longest = _num(schema.get("maxLength"), math.inf)
        return int(min(RESERVE_STRING, longest / 2))
    if "array" in types or "items" in schema:
        need = max(1, int(_num(schema.get("minItems"), 0)))
        each = content_reserve(root, _item_schema(root, schema, 0), depth + 1)
        return min(RESERVE_MEMBER, need * each)
    if "object" in types or "properties" in schema:
        owed = sum(content_reserve(root, _member_schema(root, schema, key), depth + 1)
                   for key in _required(root, schema))
        return min(RESERVE_MEMBER, owed)
    return 0


def minimal_value(root: dict[str, Any], schema: Any, depth: int = 0) -> str | None:
    """The shortest JSON text this module knows to be valid for ``schema`` (None: none)."""
    if depth > _MAX_DEPTH:
        return None
    if schema is True or schema == {}:
        return "0"
    schema = _resolve(root, schema)
    dump = lambda v: json.dumps(v, ensure_ascii=False, separators=(",", ":"))  # noqa: E731
    if "const" in schema:
        return dump(schema["const"])
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return min((dump(v) for v in schema["enum"]), key=len)
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list):
            options = [minimal_value(root, b, depth + 1) for b in schema[key]]
            found = [o for o in options if o is not None]
            return min(found, key=len) if found else None
    types = schema.get("type")
    if isinstance(types, str):
        types = [types]
    if not isinstance(types, list) or not types:
        types = ["object"] if "properties" in schema else \
            ["array"] if "items" in schema or "prefixItems" in schema else \
            ["string"] if "minLength" in schema or "pattern" in schema else ["integer"]
    for kind in sorted(types, key=lambda t: ["null", "integer", "number", "boolean",
                                             "string", "array", "object"].index(t)
                       if t in ("null", "integer", "number", "boolean", "string", "array",
                                "object") else 9):
        if kind == "null":
            return "null"
        if kind in ("integer", "number"):
            return _minimal_number(schema, kind == "integer")
        if kind == "boolean":
            return "true"
        if kind == "string":
            return '"' + "a" * _string_min(root, schema) + '"'
        if kind == "array":
            need = int(_num(schema.get("minItems"), 0))
            items = [minimal_value(root, _item_schema(root, schema, i), depth + 1)
                     for i in range(need)]
            if any(i is None for i in items):
                return None
            return "[" + ",".join(items) + "]"  # type: ignore[arg-type]
        if kind == "object":
            members = []
            for key in _required(root, schema):
                value = minimal_value(root, _member_schema(root, schema, key), depth + 1)
                if value is None:
                    return None
                members.append(dump(key) + ":" + value)
            return "{" + ",".join(members) + "}"
    return None


def _minimal_number(schema: dict[str, Any], integer: bool) -> str:
    lo = _num(schema.get("minimum"), -math.inf)
    hi = _num(schema.get("maximum"), math.inf)
    xlo = _num(schema.get("exclusiveMinimum"), -math.inf)
    xhi = _num(schema.get("exclusiveMaximum"), math.inf)

    def ok(v: float) -> bool:
        return lo <= v <= hi and xlo < v < xhi

    if ok(0):
        return "0"
    start = max(lo, xlo)
    if start > -math.inf:
        v = math.floor(start) + 1 if start == xlo else math.ceil(start)
        if ok(v):
            return str(int(v))
        if not integer and ok(start if start == lo else start + 1e-6):
            return json.dumps(start if start == lo else start + 1e-6)
    end = min(hi, xhi)
    v = math.ceil(end) - 1 if end == xhi else math.floor(end)
    return str(int(v)) if ok(v) else json.dumps(end)


# Bytes a closing walk tries, best first: what ends a value or a container, then what
# starts the shortest values, then what fills a string or a pattern.
CLOSING_BYTES = (b'}]",:' + b"10" + b"23456789-.tfn" + bytes(range(0x61, 0x7B))
                 + bytes(range(0x41, 0x5B)) + b"_{[ @/+#")
# a quote first: inside a string whose pattern admits any character, "}}" is text, and
# only a pair that starts with the closing quote ends the string
CLOSING_PAIRS = (b'":', b'"}', b'"]', b'",', b"}}", b"]}", b"}]", b"]]")


def closing_candidates(token_bytes: list[bytes]) -> tuple[list[int], list[int], frozenset[int]]:
    """Token ids for a closing walk: the candidates in the order it tries them (two-byte
    closers first: fewer tokens, then the single bytes of :data:`CLOSING_BYTES`); the text
    characters among them (no JSON punctuation), tried to get out of a string; and the
    candidates that start with a quote (the ones that can end a string)."""
    by_bytes: dict[bytes, int] = {}
    for i, b in enumerate(token_bytes):
        if b and len(b) <= 2:
            by_bytes.setdefault(b, i)
    wanted = [*CLOSING_PAIRS, *(bytes([c]) for c in CLOSING_BYTES)]
    found = [(b, by_bytes[b]) for b in wanted if b in by_bytes]
    text = [i for b, i in found if len(b) == 1 and b not in b'{}[],:"']
    enders = frozenset(i for b, i in found if b.startswith(b'"'))
    return [i for _, i in found], text, enders


# Walking the grammar -----------------------------------------------------------------------
class Walkable(Protocol):
    """What a closing walk needs of a grammar matcher (every engine's Matcher has it)."""

    closers: tuple[list[int], list[int], frozenset[int]]

    def is_accepting(self) -> bool: ...
    def is_finished(self) -> bool: ...
    def error(self) -> str | None: ...
    def forced_tokens(self) -> list[int]: ...
    def accepts(self, token: int) -> bool: ...
    def first_allowed(self) -> int | None: ...
    def consume(self, token: int) -> bool: ...
    def fork(self) -> Walkable: ...


# A closer taken this many times in a row is set aside (see walk_to_accept): deep enough
# for the close of real nesting (``}}`` 8 times is 16 levels), short enough to leave a
# string the walk has been filling with closers
WALK_REPEATS = 8


def walk_to_accept(m: Walkable, limit: int) -> list[int] | None:
    """Greedy walk from ``m``'s state (consumed as it goes: pass a fork) to an accepting
    state: forced tokens, else the first of ``m.closers`` the grammar takes, else the
    lowest allowed token. The path is short, not always the shortest; what matters is that
    it is valid and that its length is known before the decoder commits to a token. Works
    through the :class:`Matcher` interface, so every engine that can fork closes the same way.

    Inside a string whose pattern admits punctuation (a key matching ``a$`` or ``.+``),
    ``}}`` is text, not a close, and a greedy walk would write it forever. So when the walk
    takes the same closer twice in a row, it first looks for one text character after which
    a quote may end the string (the ``a`` that ``a$`` needs), and a closer taken
    :data:`WALK_REPEATS` times in a row is set aside (still used when nothing else fits)."""
    candidates, text, enders = m.closers
    path: list[int] = []
    banned: set[int] = set()
    last, run = -1, 0
    while not m.is_accepting():
        if len(path) >= limit or m.error() is not None or m.is_finished():
            return None
        forced = m.forced_tokens()
        if forced:
            path.extend(forced)
            last, run = -1, 0
            continue
        tok = next((t for t in candidates if t not in banned and m.accepts(t)), None)
        if tok is None:
            tok = next((t for t in candidates if m.accepts(t)), None)
        if tok is None:
            tok = m.first_allowed()
            if tok is None:
                return None
        run = run + 1 if tok == last else 1
        last = tok
        if run >= 2 and tok not in enders:
            way_out = _string_exit(m, text, enders)
            if way_out is not None:
                tok, last, run = way_out, -1, 0
            elif run >= WALK_REPEATS:
                banned.add(tok)
        if not m.consume(tok):
            return None
        path.append(tok)
    return path if len(path) <= limit else None


def _string_exit(m: Walkable, text: list[int], enders: frozenset[int]) -> int | None:
    """A text character after which a quote may end the current string, if any. In JSON
    structure (outside strings) no text character is followed by a quote, so this finds
    nothing there."""
    for t in text:
        if not m.accepts(t):
            continue
        ahead = m.fork()
        if ahead.consume(t) and any(ahead.accepts(e) for e in enders):
            return t
    return None
