"""The decoder's runaway guards for JSON answers: lexers that follow the answer's bytes and
say which tokens to hold back next (``decoder.Decoder._choose`` holds them back unless
nothing else is allowed, so a guard never makes an answer invalid).

- :class:`NumberGuard`: a number stops at the digits its type can hold;
- :class:`RepeatGuard`: a string does not repeat a run of its own tokens again (a loop);
- :class:`ItemGuard`: an array whose item repeats an earlier one ends there, and every
  array ends as soon as it may when the budget is nearly spent (wrap-up).
"""

from __future__ import annotations

from structgen.schema.layout import CLOSED, OPENED, OUTSIDE, StringState

_DIGITS = frozenset(b"0123456789")


class NumberGuard(StringState):
    """A JSON lexer over the answer's bytes that knows when a number has as many digits as
    its type can hold (a float: ``max_digits`` significant digits; an integer: 19, int64).
    """

    __slots__ = ("exp_digits", "frac", "in_exp", "in_number", "max_digits", "sig", "zeros")

    def __init__(self, max_digits: int) -> None:
        super().__init__()
        self.max_digits = max_digits
        self.in_number = False
        self.sig = self.zeros = self.exp_digits = 0
        self.frac = self.in_exp = False

    def feed(self, data: bytes) -> None:
        for c in data:
            if self.step(c) != OUTSIDE:
                self.in_number = False
                continue
            if not self.in_number:
                if c == 0x2D or c in _DIGITS:  # a number starts
                    self.in_number = True
                    self.sig = self.zeros = self.exp_digits = 0
                    self.frac = self.in_exp = False
                else:
                    continue
            if c in _DIGITS:
                if self.in_exp:
                    self.exp_digits += 1
                elif self.sig or c != 0x30:
                    self.sig += 1
                else:
                    self.zeros += 1
            elif c == 0x2E:
                self.frac = True
            elif c in (0x65, 0x45):
                self.in_exp = True
            elif c not in (0x2B, 0x2D):
                self.in_number = False

    def room(self) -> int | None:
        """How many more digits the number in progress may take (None: not in a number).

        The exponent gets two digits (|e| <= 99): with at most 17 significant digits that
        stays inside float64, so the value never overflows to infinity."""
        if not self.in_number:
            return None
        if self.in_exp:
            return max(0, 2 - self.exp_digits)
        cap = self.max_digits if self.frac else max(self.max_digits, 19)
        return max(0, cap - max(self.sig, self.zeros))


class RepeatGuard(StringState):
    """What may not come next in the JSON string being written: no string value holds the
    same ``n + 1`` tokens twice.

    A greedy small model that starts repeating itself inside a string rarely stops
    (``"tests/test_cache.py::test_cache.py::test_cache.py::..."``) and spends the budget
    there; budget-aware closing then gives the members still missing their minimal values
    (``"confidence": 0``). Holding back the token that would repeat a run of ``n`` tokens
    a second time (the run itself may occur twice) lets the model end the string or say
    something else. Only a string's own earlier tokens count: copying text from the prompt,
    or the same value into several members, is never held back. (The rule is the
    ``no_repeat_ngram_size`` of Hugging Face's generation, kept to one string value.)
    """

    __slots__ = ("follow", "ids", "n")

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n
        self.ids: list[int] = []  # the tokens of the string being written
        self.follow: dict[tuple[int, ...], set[int]] = {}  # a run of n -> what followed it

    def feed(self, tok: int, data: bytes) -> None:
        opened = False
        for c in data:
            opened = self.step(c) == OPENED or opened
        if opened or not self.in_string:  # a new string (or none): nothing to repeat yet
            self.ids.clear()
            self.follow.clear()
        if not self.in_string:
            return
        ids, n = self.ids, self.n
        if len(ids) >= n:
            self.follow.setdefault(tuple(ids[-n:]), set()).add(tok)
        ids.append(tok)

    def held(self) -> set[int] | None:
        """The tokens that would repeat a run of the string once more (None: none)."""
        if not self.in_string or len(self.ids) < self.n:
            return None
        return self.follow.get(tuple(self.ids[-self.n:]))


class _Open:
    """An open container of the answer, for :class:`ItemGuard`."""

    __slots__ = ("array", "ended", "items", "repeated", "start")

    def __init__(self, array: bool, start: int) -> None:
        self.array = array
        self.start = start  # where the current item's text begins
        self.items: set[str] = set()  # the items so far (their text)
        self.ended = False  # the current item has ended (no "," yet)
        self.repeated = False  # ... and it repeated an earlier one


class ItemGuard(StringState):
    """The arrays of a JSON answer, followed character by character: an array whose item (a
    string, object or array) repeats an earlier item of it ends there.

    A small greedy model that writes an item a second time mostly goes on writing it
    (``"fix_steps": ["Debug.py", "Debug.py", "Debug.py", ...]``) until the budget ends,
    and budget-aware closing then gives the members still missing their minimal values.
    :meth:`held` names the tokens to hold back: those that would end a repeated item and
    start the next one (a ``,`` after the item, or ``",`` / ``"},`` that end it and go on
    in one token). The array then ends after the repeat (or, under ``minItems``, goes on as
    it must). The repeat itself is kept: a value the model wrote is never changed. Numbers
    and literals, which repeat in earnest, are not compared.
    """

    __slots__ = ("stack", "text")

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []  # the answer so far, one character per entry
        self.stack: list[_Open] = []

    def feed(self, data: str) -> None:
        for ch in data:
            self.text.append(ch)
            seen = self.step(ord(ch))
            if seen == CLOSED:
                self._item_ended()
            if seen != OUTSIDE:
                continue
            if ch in "[{":
                self.stack.append(_Open(ch == "[", len(self.text)))
            elif ch in "]}":
                if self.stack:
                    self.stack.pop()
                    self._item_ended()
            elif ch == "," and self.stack and self.stack[-1].array:
                top = self.stack[-1]
                top.start, top.ended, top.repeated = len(self.text), False, False

    def _item_ended(self) -> None:
        """A string or container just ended: if it is an item of an array, compare it."""
        if not self.stack or not self.stack[-1].array:
            return  # a key, a member's value, the top-level value
        top = self.stack[-1]
        item = "".join(self.text[top.start:]).strip()
        top.repeated = item in top.items
        top.items.add(item)
        top.ended = True

    def held(self, *, repeats: bool = True, wrap_up: bool = False) -> str | None:
        """The closing characters of the tokens to hold back next, the ``,`` after them not
        counted (``""``: a ``,``; ``'"'``: ``",``; ``'"}'``: ``"},``), or None: none.

        They are the tokens that would end the innermost array's current item and start
        another: when the item repeats an earlier one (``repeats``), or whatever it is
        (``wrap_up``: the budget is nearly spent, so the array ends as soon as it may)."""
        at = next((i for i in range(len(self.stack) - 1, -1, -1) if self.stack[i].array),
                  None)
        if at is None or self.escape:
            return None
        array = self.stack[at]
        inner = self.stack[at + 1:]
        if array.ended:
            if inner or self.in_string:
                return None
            return "" if wrap_up or (repeats and array.repeated) else None
        closers = ('"' if self.in_string else "") + "".join(
            "]" if o.array else "}" for o in reversed(inner))
        if wrap_up:
            return closers  # "": a number or literal item (or none yet), then a ","
        if not closers or not repeats:
            return None  # a number or literal item, or none yet
        item = ("".join(self.text[array.start:]) + closers).strip()
        return closers if item in array.items else None
