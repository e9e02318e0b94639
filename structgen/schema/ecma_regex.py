"""ECMA-262 regular expressions, the dialect of JSON Schema ``pattern``/``patternProperties``
and of structgen's ``Regex(...)``, translated for every engine that reads them.

Grammar engines (llguidance, XGrammar, outlines-core) and Python's ``re`` read ``\\d`` as any
Unicode decimal digit, ``\\w`` as any Unicode word character, ``$`` as "end, or before a final
newline" (Python) and ``.`` as "anything but ``\\n``". ECMA-262 says ``\\d`` = ``[0-9]``,
``\\w`` = ``[A-Za-z0-9_]``, ``\\s`` = its white-space and line-terminator set, ``$`` = end of
input and ``.`` = anything but a line terminator. One parser reads the ECMA pattern and
writes it out per target:

- ``"portable"``: ECMA syntax whose meaning no engine can misread (shorthand classes and
  ``.`` spelled out as explicit ranges, escapes normalized). It goes into the compiled
  schema and the regex output, so grammar engines and server backends get it.
- ``"re2"``: google-re2 syntax, the validator's linear-time matcher.
- ``"python"``: the ``regex`` module's syntax, the validator's fallback for what RE2 does not
  implement (backreferences, lookaround); every match runs under a time limit.

Patterns are read with Unicode semantics (``\\u{...}``, ``\\p{...}``), as the
JSON-Schema-Test-Suite's ``optional/ecmascript-regex.json`` requires.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from structgen.errors import SchemaError

Dialect = Literal["portable", "re2", "python"]

# How long the fallback matcher (patterns RE2 cannot run) may spend on one match. RE2 needs
# no limit: it runs in time linear in the text.
FALLBACK_TIMEOUT_S = 0.25
# The fallback engine (``regex``) unrolls counted repetitions when it compiles:
# ((a{200}){200}){200} is 8 million copies of ``a``, 2.2 GB. A pattern it would unroll
# past this many atoms is refused before it is compiled (about 30 MB at this size).
MAX_EXPANDED_ATOMS = 100_000

_MAX = 0x10FFFF
Ranges = list[tuple[int, int]]
_DIGIT: Ranges = [(0x30, 0x39)]
_WORD: Ranges = [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)]
# ECMA-262 WhiteSpace + LineTerminator (22.2.2.9, CharacterClassEscape :: s)
_SPACE: Ranges = [(0x09, 0x0D), (0x20, 0x20), (0xA0, 0xA0), (0x1680, 0x1680),
                  (0x2000, 0x200A), (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F),
                  (0x3000, 0x3000), (0xFEFF, 0xFEFF)]
_LINE_TERMINATORS: Ranges = [(0x0A, 0x0A), (0x0D, 0x0D), (0x2028, 0x2029)]
_SHORTHANDS = {"d": _DIGIT, "w": _WORD, "s": _SPACE}
_CONTROL_ESCAPES = {"t": 0x09, "n": 0x0A, "v": 0x0B, "f": 0x0C, "r": 0x0D}
_SHORT_ESCAPES = {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r", 0x0C: "\\f"}
_SYNTAX = set("^$\\.*+?()[]{}|")
_QUANTIFIER = re.compile(r"\{[0-9]+(?:,[0-9]*)?\}")
_GROUP_NAME = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*")
# Long Unicode general-category names (ECMA accepts both) → the short ones RE2 knows.
_CATEGORIES = {
    "letter": "L", "cased_letter": "LC", "uppercase_letter": "Lu", "lowercase_letter": "Ll",
    "titlecase_letter": "Lt", "modifier_letter": "Lm", "other_letter": "Lo", "mark": "M",
    "combining_mark": "M", "nonspacing_mark": "Mn", "spacing_mark": "Mc",
    "enclosing_mark": "Me", "number": "N", "decimal_number": "Nd", "digit": "Nd",
    "letter_number": "Nl", "other_number": "No", "punctuation": "P", "punct": "P",
    "connector_punctuation": "Pc", "dash_punctuation": "Pd", "open_punctuation": "Ps",
    "close_punctuation": "Pe", "initial_punctuation": "Pi", "final_punctuation": "Pf",
    "other_punctuation": "Po", "symbol": "S", "math_symbol": "Sm", "currency_symbol": "Sc",
    "modifier_symbol": "Sk", "other_symbol": "So", "separator": "Z",
    "space_separator": "Zs", "line_separator": "Zl", "paragraph_separator": "Zp",
    "other": "C", "control": "Cc", "cntrl": "Cc", "format": "Cf", "surrogate": "Cs",
    "private_use": "Co", "unassigned": "Cn",
}


_HUGE = 1 << 62  # sizes are capped here: any count past it is refused all the same


def _count(digits: str) -> int:
    return int(digits) if len(digits) <= 18 else _HUGE


def _complement(ranges: Ranges) -> Ranges:
    out: Ranges = []
    start = 0
    for lo, hi in sorted(ranges):
        if lo > start:
            out.append((start, lo - 1))
        start = max(start, hi + 1)
    if start <= _MAX:
        out.append((start, _MAX))
    return out


class _Translator:
    """One left-to-right pass over an ECMA pattern, writing ``dialect``."""

    def __init__(self, pattern: str, dialect: Dialect) -> None:
        self.p = pattern
        self.i = 0
        self.dialect = dialect
        self.out: list[str] = []
        self.starts: list[int] = []  # where in the pattern each piece of ``out`` came from
        # The size of the pattern with every counted repetition unrolled, per open group:
        # [atoms so far, atoms of the last item] (alternatives add up: an upper bound).
        self.frames: list[list[int]] = [[0, 0]]

    @property
    def expanded_atoms(self) -> int:
        """Atoms of the pattern read so far with ``{n,m}`` unrolled (an upper bound)."""
        return sum(frame[0] for frame in self.frames)

    def atom(self, text: str) -> None:
        self.out.append(text)
        self.counted(1)

    def counted(self, size: int) -> None:
        frame = self.frames[-1]
        frame[0] = min(_HUGE, frame[0] + size)
        frame[1] = size

    def repeat(self, quantifier: str) -> None:
        self.out.append(quantifier)
        low, _, high = quantifier[1:-1].partition(",")
        count = max(1, _count(high) if high else _count(low) + (1 if "," in quantifier else 0))
        frame = self.frames[-1]
        frame[0] = min(_HUGE, frame[0] + frame[1] * (count - 1))
        frame[1] = min(_HUGE, frame[1] * count)

    def error(self, what: str) -> SchemaError:
        return SchemaError(f"invalid regular expression {self.p!r} (ECMA-262): {what} "
                           f"(at offset {self.i})")

    # writing ----------------------------------------------------------------------------
    def char(self, cp: int, in_class: bool = False) -> str:
        c = chr(cp)
        if 0x20 < cp < 0x7F:
            if c.isalnum() or c == "_":
                return c
            if c in _SYNTAX or (in_class and c == "-"):
                return "\\" + c
            return c
        if cp == 0x20:
            return c
        if cp in _SHORT_ESCAPES:
            return _SHORT_ESCAPES[cp]
        if self.dialect == "re2":
            return f"\\x{{{cp:X}}}"
        if cp <= 0xFFFF:
            return f"\\u{cp:04X}"
        return f"\\U{cp:08X}" if self.dialect == "python" else f"\\u{{{cp:X}}}"

    def ranges(self, ranges: Ranges) -> str:
        parts = []
        for lo, hi in ranges:
            if lo == hi:
                parts.append(self.char(lo, True))
            else:
                parts.append(f"{self.char(lo, True)}-{self.char(hi, True)}")
        return "".join(parts)

    def klass(self, ranges: Ranges, negate: bool = False) -> str:
        if not ranges:  # an empty class matches nothing; [^] matches anything
            return f"[{'' if negate else '^'}{self.ranges([(0, _MAX)])}]"
        return f"[{'^' if negate else ''}{self.ranges(ranges)}]"

    def prop(self, negate: bool, name: str) -> str:
        letter = "P" if negate else "p"
        if self.dialect == "re2":
            _, _, value = name.partition("=")
            if value:  # Script=Greek, sc=Greek, General_Category=Letter
                name = _CATEGORIES.get(value.lower(), value)
            else:
                name = _CATEGORIES.get(name.lower(), name)
        return f"\\{letter}{{{name}}}"

    # reading ----------------------------------------------------------------------------
    def translate(self) -> str:
        p = self.p
        while self.i < len(p):
            self.starts.append(self.i)  # every pass writes one piece
            c = p[self.i]
            if c == "\\":
                self.atom(self.escape())
                continue
            self.i += 1
            if c == "[":
                self.atom(self.char_class())
            elif c == ".":
                self.atom(self.klass(_LINE_TERMINATORS, negate=True))
            elif c == "$":
                # ECMA $ (no m flag) is the end of the input, not "before a final newline"
                self.out.append("\\Z" if self.dialect == "python" else "$")
            elif c == "(":
                self.out.append(self.group())
                self.frames.append([0, 0])
            elif c == "{":
                m = _QUANTIFIER.match(p, self.i - 1)
                if m and self.out and self.out[-1] not in ("(", "|", "^"):
                    self.repeat(m.group())
                    self.i = m.end()
                else:  # a brace that is no quantifier is a literal (Annex B)
                    self.atom("\\{")
            elif c in "}]":
                self.atom("\\" + c)
            elif c == ")" and len(self.frames) > 1:
                self.out.append(c)
                self.counted(max(1, self.frames.pop()[0]))
            elif c in "^|*+?)":
                self.out.append(c)
            else:
                self.atom(self.char(ord(c)))
        return "".join(self.out)

    def source_offset(self, pos: int) -> int:
        """The offset in the pattern of offset ``pos`` of the translated text."""
        end = 0
        for start, piece in zip(self.starts, self.out, strict=True):
            end += len(piece)
            if pos < end:
                return start
        return len(self.p)

    def group(self) -> str:
        p = self.p
        if not p.startswith("?", self.i):
            return "("
        for opener in ("?:", "?=", "?!", "?<=", "?<!"):
            if p.startswith(opener, self.i):
                self.i += len(opener)
                return "(" + opener
        if p.startswith("?<", self.i):
            m = _GROUP_NAME.match(p, self.i + 2)
            if m and p.startswith(">", m.end()):
                self.i = m.end() + 1
                if self.dialect == "portable":
                    return f"(?<{m.group()}>"
                return f"(?P<{m.group()}>"
        raise self.error("unsupported group syntax")

    def escape(self) -> str:
        """An escape outside a character class."""
        p = self.p
        if self.i + 1 >= len(p):
            raise self.error("trailing backslash")
        c = p[self.i + 1]
        if c in _SHORTHANDS or c.lower() in _SHORTHANDS:
            self.i += 2
            return self.klass(_SHORTHANDS[c.lower()], negate=c.isupper())
        if c in "bB":
            self.i += 2
            return "\\" + c
        if c in "123456789":
            m = re.compile(r"[0-9]+").match(p, self.i + 1)
            assert m is not None
            self.i = m.end()
            return "\\" + m.group()
        if c == "k":
            m = _GROUP_NAME.match(p, self.i + 3)
            if p.startswith("<", self.i + 2) and m and p.startswith(">", m.end()):
                self.i = m.end() + 1
                return f"\\k<{m.group()}>" if self.dialect == "portable" else \
                    f"(?P={m.group()})"
        if c in "pP":
            m = re.compile(r"\{([A-Za-z_]+(?:=[A-Za-z_]+)?)\}").match(p, self.i + 2)
            if m is None:
                raise self.error(f"malformed \\{c}{{...}}")
            self.i = m.end()
            return self.prop(c == "P", m.group(1))
        return self.char(self.atom_escape(in_class=False))

    def atom_escape(self, in_class: bool) -> int:
        """The code point of a character escape at ``self.i`` (the backslash); advance."""
        p = self.p
        c = p[self.i + 1]
        self.i += 2
        if c in _CONTROL_ESCAPES:
            return _CONTROL_ESCAPES[c]
        if c == "0" and not (self.i < len(p) and p[self.i].isdigit()):
            return 0
        if c == "b" and in_class:
            return 0x08
        if c == "c":
            if self.i < len(p) and p[self.i].isascii() and p[self.i].isalpha():
                self.i += 1
                return ord(p[self.i - 1]) % 32
            raise self.error("\\c must be followed by a letter")
        if c == "x":
            m = re.compile(r"[0-9A-Fa-f]{2}").match(p, self.i)
            if m is None:
                raise self.error("\\x needs two hex digits")
            self.i = m.end()
            return int(m.group(), 16)
        if c == "u":
            return self.unicode_escape()
        if c in _SYNTAX or c in "-/" or not (c.isascii() and c.isalnum()):
            return ord(c)  # an identity escape: the character itself
        raise self.error(f"unknown escape \\{c}")

    def unicode_escape(self) -> int:
        p = self.p
        m = re.compile(r"\{([0-9A-Fa-f]{1,6})\}|([0-9A-Fa-f]{4})").match(p, self.i)
        if m is None:
            raise self.error("\\u needs four hex digits or {hex}")
        self.i = m.end()
        cp = int(m.group(1) or m.group(2), 16)
        if cp > _MAX:
            raise self.error("code point above U+10FFFF")
        low = re.compile(r"\\u([Dd][C-Fc-f][0-9A-Fa-f]{2})").match(p, self.i)
        if 0xD800 <= cp <= 0xDBFF and low:  # a surrogate pair spells one code point
            self.i = low.end()
            cp = 0x10000 + ((cp - 0xD800) << 10) + (int(low.group(1), 16) - 0xDC00)
        return cp

    def char_class(self) -> str:
        """``[...]`` (the ``[`` already read) as one class in the target dialect."""
        p = self.p
        negate = p.startswith("^", self.i)
        if negate:
            self.i += 1
        ranges: Ranges = []
        extra: list[str] = []  # \p{...} items, written as they are
        while True:
            if self.i >= len(p):
                raise self.error("unterminated character class")
            if p[self.i] == "]":
                self.i += 1
                break
            lo = self.class_atom(ranges, extra)
            if lo is None:
                continue
            if (p.startswith("-", self.i) and self.i + 1 < len(p) and p[self.i + 1] != "]"):
                self.i += 1
                hi = self.class_atom(ranges, extra)
                if hi is None:  # [a-\d]: the dash is a literal (Annex B)
                    ranges.append((lo, lo))
                    ranges.append((0x2D, 0x2D))
                    continue
                if hi < lo:
                    raise self.error("character class range out of order")
                ranges.append((lo, hi))
            else:
                ranges.append((lo, lo))
        if extra:
            return f"[{'^' if negate else ''}{self.ranges(ranges)}{''.join(extra)}]"
        return self.klass(ranges, negate)

    def class_atom(self, ranges: Ranges, extra: list[str]) -> int | None:
        """One class member: a code point (returned) or a set (added; None returned)."""
        p = self.p
        c = p[self.i]
        if c != "\\":
            self.i += 1
            return ord(c)
        if self.i + 1 >= len(p):
            raise self.error("trailing backslash")
        e = p[self.i + 1]
        if e.lower() in _SHORTHANDS:
            self.i += 2
            base = _SHORTHANDS[e.lower()]
            ranges.extend(_complement(base) if e.isupper() else base)
            return None
        if e in "pP":
            m = re.compile(r"\{([A-Za-z_]+(?:=[A-Za-z_]+)?)\}").match(p, self.i + 2)
            if m is None:
                raise self.error(f"malformed \\{e}{{...}}")
            self.i = m.end()
            extra.append(self.prop(e == "P", m.group(1)))
            return None
        return self.atom_escape(in_class=True)


@lru_cache(maxsize=4096)
def translate(pattern: str, dialect: Dialect = "portable") -> str:
    """``pattern`` (ECMA-262) written in ``dialect``; :class:`SchemaError` if malformed.

    >>> translate(r"^\\d{2}$")
    '^[0-9]{2}$'
    """
    if not isinstance(pattern, str):
        raise SchemaError(f"a regular expression must be a string, got {type(pattern).__name__}")
    return _Translator(pattern, dialect).translate()


class PatternTimeout(Exception):
    """The fallback matcher ran past :data:`FALLBACK_TIMEOUT_S` on one text."""


@dataclass(frozen=True)
class EcmaRegex:
    """A compiled ECMA-262 pattern: RE2 when it can run it, else ``regex`` with a timeout
    (also for text RE2 cannot take: strings holding lone surrogates are not UTF-8)."""

    source: str
    engine: str  # "re2" | "regex"
    compiled: Any

    def search(self, text: str) -> bool:
        """Does the pattern match anywhere in ``text`` (JSON Schema ``pattern``)?"""
        return self._match(text, full=False)

    def fullmatch(self, text: str) -> bool:
        """Does the pattern match all of ``text`` (a ``Regex(...)`` output)?"""
        return self._match(text, full=True)

    def _match(self, text: str, *, full: bool) -> bool:
        if self.engine == "re2":
            try:
                found = self.compiled.fullmatch(text) if full else self.compiled.search(text)
                return found is not None
            except UnicodeEncodeError:
                pass
        compiled = self.compiled if self.engine == "regex" else _fallback(self.source)
        try:
            found = compiled.fullmatch(text, timeout=FALLBACK_TIMEOUT_S) if full else \
                compiled.search(text, timeout=FALLBACK_TIMEOUT_S)
        except TimeoutError:
            raise PatternTimeout(self.source) from None
        return found is not None


def expanded_atoms(pattern: str) -> int:
    """How many atoms ``pattern`` has once its counted repetitions are unrolled (an upper
    bound: ``(ab|c){3}`` counts 9); SchemaError if it is malformed.

    >>> expanded_atoms("((a{200}){200}){200}")
    8000000
    """
    translator = _Translator(pattern, "python")
    translator.translate()
    return translator.expanded_atoms


@lru_cache(maxsize=256)
def _fallback(pattern: str) -> Any:
    """The ``regex``-module form of ``pattern`` (SchemaError if even that fails, or if
    compiling it would unroll past :data:`MAX_EXPANDED_ATOMS`)."""
    import regex

    if not isinstance(pattern, str):
        raise SchemaError(f"a regular expression must be a string, got {type(pattern).__name__}")
    size = expanded_atoms(pattern)
    if size > MAX_EXPANDED_ATOMS:
        raise SchemaError(f"regular expression {_head(pattern)} repeats to {size} atoms once "
                          f"its counted repetitions are unrolled (limit {MAX_EXPANDED_ATOMS}; "
                          "RE2 refused it too)")
    translator = _Translator(pattern, "python")
    try:
        return regex.compile(translator.translate(), regex.ASCII | regex.V0)
    except regex.error as exc:
        # the position regex reports is in the translated text: say where it is in the
        # pattern the user wrote
        where = ("" if exc.pos is None else
                 f" at offset {translator.source_offset(exc.pos)} of the pattern")
        raise SchemaError(f"invalid regular expression {pattern!r} (ECMA-262): "
                          f"{exc.msg}{where}") from None
    except (ValueError, OverflowError) as exc:
        raise SchemaError(f"invalid regular expression {pattern!r} (ECMA-262): {exc}") from None


def _head(pattern: str) -> str:
    return repr(pattern if len(pattern) <= 80 else pattern[:77] + "...")


@lru_cache(maxsize=1)
def _re2_options() -> Any:
    import re2

    options = re2.Options()
    options.log_errors = False  # a pattern RE2 refuses goes to the fallback, not to stderr
    return options


@lru_cache(maxsize=1024)
def compile_ecma(pattern: str) -> EcmaRegex:
    """Compile an ECMA-262 pattern for matching; :class:`SchemaError` if it is malformed."""
    import re2

    re2_source = translate(pattern, "re2")
    try:
        return EcmaRegex(pattern, "re2", re2.compile(re2_source, _re2_options()))
    except re2.error:
        pass  # backreferences and lookaround: RE2 does not implement them
    return EcmaRegex(pattern, "regex", _fallback(pattern))


def is_ecma_pattern(pattern: object) -> bool:
    """Is ``pattern`` a valid ECMA-262 regular expression (the ``regex`` format)?"""
    if not isinstance(pattern, str):
        return True  # formats apply to strings only
    try:
        compile_ecma(pattern)
    except SchemaError:
        return False
    return True
