"""Tool calls, one grammar per tool: the matcher of a :class:`~structgen.schema.CallTable`.

A call envelope of 500 tools compiled as one grammar costs every engine every tool's schema
(llguidance ~0.3 ms a tool, XGrammar seconds), though an answer calls a few of them. So the
matcher starts on the table's *head*: the answer with each call's arguments a placeholder,
``{"name": <one of the names>, "arguments": <any>}`` (a few ms for 500 names).

- A single call (``frame="single"``): once the name's closing quote is consumed the matcher
  switches to that tool's own call grammar (compiled on first use, cached like any
  grammar) and replays the tokens so far into it. From then on it is that tool's matcher.
- Several calls (``"array"``: ``parallel``) or calls after ``<tool_call>`` triggers
  (``"trigger"``: an ``"auto"`` turn): the head stays, and holds the frame, the names, the
  text branch and the number of calls (``max_calls``). Once a call's name is written, that
  tool's call grammar runs beside it, *open-ended* (any text may follow the call,
  :attr:`ConstraintOptions.open_end`: a token may close the call and open the next one),
  started on the call's text from its ``{``. A token is allowed when both allow it; the
  call's grammar is dropped when its call closes. A small scanner of the text (strings,
  nesting, the trigger) says where each call starts and ends.

Exactness: until a name's closing quote both grammars admit the same text (the name, then
the fixed ``","arguments":``); after it, within the call, the head's placeholder admits
any JSON and the tool's grammar only its arguments, so the intersection is the tool's; past
the call's end the tool's grammar admits anything and the head judges. The one token that
could slip between them runs from inside a name past the whole ``"arguments"`` key into the
arguments, where the tool's grammar has not started yet (its bytes contain ``arguments"``;
SmolLM2 has none): while a single call's head is live such tokens are masked out; in a
frame each one the mask allows is tried on a copy of the matcher, which starts the call's
grammar and replays it.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from structgen.constrain.matcher import Matcher, lowest_allowed
from structgen.schema.layout import OUTSIDE, StringState

if TYPE_CHECKING:
    import torch

# the call's text up to its name's closing quote, in any layout (compact, spaced, free)
NAME_END = re.compile(rb'\A\s*\{\s*"name"\s*:\s*"([A-Za-z0-9_-]{1,64})"')
KEY_END = b'arguments"'  # a head token with this in it would reach into the arguments
TRIGGER = b"<tool_call>"  # structgen.messages.TOOL_CALL_OPEN: where an "auto" call starts


def crossing_tokens(token_bytes: list[bytes]) -> frozenset[int]:
    """The tokens that could run from a name into the arguments: masked out while a
    single call's head is live, tried on a copy in a frame (see the module docstring)."""
    if KEY_END not in b"\n".join(token_bytes):  # most vocabularies: one scan in C
        return frozenset()
    return frozenset(i for i, b in enumerate(token_bytes) if KEY_END in b)


@dataclass
class CallScan:
    """Where the calls of a frame's text start and end, one byte at a time. The head's
    grammar has already checked the text, so strings, escapes and nesting are enough:
    a call is an object opened at nesting ``depth`` (1 in an array of calls, 0 after a
    trigger), and in a ``trigger`` frame only after a ``<tool_call>``."""

    depth: int
    trigger: bool
    nesting: int = 0
    in_text: bool = False  # a trigger frame's free text, before its next <tool_call>
    tail: bytes = b""  # the last bytes of free text, to find the trigger in
    strings: StringState = field(default_factory=StringState)

    def __post_init__(self) -> None:
        self.in_text = self.trigger

    def fork(self) -> CallScan:
        """An independent copy: the fork's bytes move neither this scan nor its strings."""
        out = copy.copy(self)  # not dataclasses.replace: __post_init__ would reset in_text
        out.strings = self.strings.copy()
        return out

    def step(self, byte: int) -> int:
        """Take one byte: 1 when it opens a call, -1 when it closes one, else 0."""
        if self.in_text:
            self.tail = (self.tail + bytes((byte,)))[-len(TRIGGER):]
            self.in_text = self.tail != TRIGGER
            return 0
        if self.strings.step(byte) != OUTSIDE:
            return 0
        if byte in (0x7B, 0x5B):  # { [
            self.nesting += 1
            return 1 if byte == 0x7B and self.nesting == self.depth + 1 else 0
        if byte in (0x7D, 0x5D):  # } ]
            self.nesting -= 1
            if byte == 0x7D and self.nesting == self.depth:
                self.in_text, self.tail = self.trigger, b""
                return -1
        return 0


class CallMatcher(Matcher):
    """The head's matcher with each called tool's grammar (see the module docstring)."""

    def __init__(self, head: Matcher, resolve: Callable[[str], Matcher],
                 token_bytes: list[bytes], crossing: frozenset[int], *,
                 frame: str = "single", encode: Callable[[str], list[int]] | None = None
                 ) -> None:
        self.head = head
        self.resolve = resolve
        self.token_bytes = token_bytes
        self.crossing = crossing
        self.encode = encode
        self.call: Matcher | None = None
        # single: every token and the text so far; a frame: the open call's tokens after
        # its first one, its first token, and its text from its "{"
        self.ids: list[int] = []
        self.text = b""
        self.first: list[int] = []
        self.failed: str | None = None
        self.supports_closing = head.supports_closing
        self.closers = head.closers
        self.post_enforced = head.post_enforced
        # a frame (several calls, or calls after triggers): the head stays; the scan says
        # where each call is, ``named`` whether the open call's grammar has started
        self.scan = None if frame == "single" else CallScan(int(frame == "array"),
                                                            frame == "trigger")
        self.in_call = False
        self.named = False

    @property
    def now(self) -> Matcher:
        return self.head if self.call is None else self.call

    def _start(self, name: bytes, tokens: list[int]) -> bool:
        """The named tool's grammar, replayed on ``tokens``; False when it refuses them."""
        call = self.resolve(name.decode())
        if not call.consume_all(tokens):  # a crossing token the tool's grammar refuses
            self.failed = f"the call of {name.decode()} cannot go on this way"
            return False
        self.call = call
        self.post_enforced = tuple(dict.fromkeys((*self.post_enforced, *call.post_enforced)))
        return True

    def _took(self, tokens: list[int], fed: Matcher | None = None) -> bool:
        """Record ``tokens`` (taken by the head); start a call's grammar once its name is
        complete. A frame: give them to the open call's grammar too (unless it is ``fed``,
        which took them already), and end it when its call closes."""
        if self.scan is not None:
            return all(self._took_in_frame(t, fed) for t in tokens)
        self.ids.extend(tokens)
        self.text += b"".join(self.token_bytes[t] for t in tokens)
        found = NAME_END.match(self.text)
        return found is None or self._start(found.group(1), self.ids)

    def _took_in_frame(self, token: int, fed: Matcher | None) -> bool:
        assert self.scan is not None
        if self.call is not None and self.call is not fed and not self.call.consume(token):
            self.failed = "the call's grammar refused a token the mask allowed"
            return False
        data = self.token_bytes[token]
        if self.in_call:  # the open call goes on through this token
            self.ids.append(token)
            self.text += data
        for i, byte in enumerate(data):
            event = self.scan.step(byte)
            if event == 1:  # a call opens at this byte
                self.in_call, self.named = True, False
                self.first, self.ids, self.text = [token, i], [], data[i:]
            elif event == -1:  # it closes: its grammar took the whole token (open-ended)
                if not self.named and not self._name_call():
                    return False
                if not self.named:  # the head let a call close without its name
                    self.failed = "a call closed before its name"
                    return False
                self.in_call, self.call = False, None
        return not self.in_call or self.named or self._name_call()

    def _name_call(self) -> bool:
        """Start the open call's grammar once its name is complete, on the call's text:
        its first token's bytes from the "{" on (re-encoded, unless the token starts
        there), then the tokens since. False when it refuses them."""
        found = NAME_END.match(self.text)
        if found is None:
            return True
        self.named = True
        token, offset = self.first
        piece = self._encoded(self.token_bytes[token][offset:]) if offset else [token]
        if piece is None:
            self.failed = "the call's first token cannot be split at its '{'"
            return False
        return self._start(found.group(1), piece + self.ids)

    def _encoded(self, data: bytes) -> list[int] | None:
        """Tokens that spell ``data`` exactly (None when none are found)."""
        if self.encode is not None:
            try:
                ids = self.encode(data.decode("utf-8"))
            except UnicodeDecodeError:
                ids = []
            if ids and b"".join(self.token_bytes[t] for t in ids) == data:
                return ids
        single = {b: t for t, b in reversed(list(enumerate(self.token_bytes))) if len(b) == 1}
        ids = [single.get(bytes((b,)), -1) for b in data]
        return None if -1 in ids else ids

    # Matcher ---------------------------------------------------------------------------
    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        if self.scan is None:
            self.now.fill_bitmask(bitmask, row)
            if self.call is None:  # the single call's head: crossing tokens masked out
                for token in self.crossing:
                    _clear(bitmask, row, token)
            return
        self.head.fill_bitmask(bitmask, row)
        if self.call is not None:
            own = bitmask.new_empty((1, bitmask.shape[1]))
            self.call.fill_bitmask(own, 0)
            bitmask[row].bitwise_and_(own[0])
        for token in self.crossing:  # each one allowed is tried on a copy
            word, bit = divmod(token, 32)
            if word < bitmask.shape[1] and int(bitmask[row, word]) >> bit & 1 \
                    and not self.fork().consume(token):
                _clear(bitmask, row, token)

    def consume(self, token: int) -> bool:
        if self.failed is not None:
            return False
        if self.scan is None and self.call is not None:
            return self.call.consume(token)
        return self.head.consume(token) and self._took([token])

    def forced_tokens(self) -> list[int]:
        if self.failed is not None:
            return []
        if self.call is not None:
            forced = self.call.forced_tokens()
            if self.scan is None or not forced:
                return forced
            # within the call the head admits what the call's grammar does
            if not self.head.consume_all(forced):
                self.failed = "the head refused what the call's grammar forced"
                return []
            return forced if self._took(forced, fed=self.call) else []
        forced = self.head.forced_tokens()
        if not forced or not self._took(forced):
            return []
        if self.call is None:
            return forced
        call = self.call
        more = call.forced_tokens()
        if self.scan is not None and more and not (self.head.consume_all(more)
                                                   and self._took(more, fed=call)):
            self.failed = "the head refused what the call's grammar forced"
            return forced
        return forced + more

    def is_finished(self) -> bool:
        return self.failed is None and (self.head if self.scan is not None
                                        else self.now).is_finished()

    def is_accepting(self) -> bool:
        if self.failed is not None:
            return False
        if self.scan is not None:
            return self.call is None and not self.in_call and self.head.is_accepting()
        return self.call is not None and self.call.is_accepting()

    def error(self) -> str | None:
        return self.failed or self.head.error() or (self.call.error() if self.call else None)

    def fork(self) -> CallMatcher:
        out = CallMatcher(self.head if self.scan is None and self.call is not None
                          else self.head.fork(), self.resolve, self.token_bytes,
                          self.crossing, encode=self.encode)
        out.call = None if self.call is None else self.call.fork()
        out.ids, out.text, out.first = list(self.ids), self.text, list(self.first)
        out.failed, out.post_enforced = self.failed, self.post_enforced
        out.scan = None if self.scan is None else self.scan.fork()
        out.in_call, out.named = self.in_call, self.named
        return out

    def accepts(self, token: int) -> bool:
        if self.scan is None:
            if self.call is not None:
                return self.call.accepts(token)
            return token not in self.crossing and self.head.accepts(token)
        if token in self.crossing:
            return self.fork().consume(token)
        return (self.call is None or self.call.accepts(token)) and self.head.accepts(token)

    def first_allowed(self) -> int | None:
        if self.scan is None:
            token = self.now.first_allowed()
            return None if self.call is None and token in self.crossing else token
        import torch

        mask = torch.full((1, (len(self.token_bytes) + 31) // 32), -1, dtype=torch.int32)
        self.fill_bitmask(mask, 0)
        return lowest_allowed(mask[0])


def _clear(bitmask: torch.Tensor, row: int, token: int) -> None:
    """Take ``token`` out of ``bitmask[row]`` (int32 words, as signed values)."""
    word, bit = divmod(token, 32)
    if word < bitmask.shape[1]:
        keep = ~(1 << bit) & 0xFFFFFFFF
        bitmask[row, word] &= keep - (1 << 32) if keep >= 1 << 31 else keep
