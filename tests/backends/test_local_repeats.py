"""The embedded decoder's repeat guards (issue 25): a string that loops on its own tokens
and an array that repeats an item are cut, so a small greedy model's budget goes to the
answer's other members instead of budget-aware closing's minimal values.

The model tests use a tiny GGUF that always prefers one token (a runaway on purpose) and
run each request twice: with the guard (the default) and without it, so each shows the
loop the guard removes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from structgen.backends.local.guards import ItemGuard, RepeatGuard
from structgen.validate import validate_text

from .test_llamacpp import make

NOTE = {"type": "object", "properties": {"note": {"type": "string"}}, "required": ["note"],
        "additionalProperties": False}
TAGS = {"type": "object",
        "properties": {"tags": {"type": "array", "items": {"type": "string", "maxLength": 3}},
                       "done": {"type": "boolean"}},
        "required": ["tags", "done"], "additionalProperties": False}


# The guards alone --------------------------------------------------------------------------
def feed_all(guard: RepeatGuard, pieces: list[tuple[int, bytes]]) -> None:
    for tok, data in pieces:
        guard.feed(tok, data)


def test_repeat_guard_holds_back_the_token_that_repeats_a_run_of_the_string() -> None:
    g = RepeatGuard(3)
    feed_all(g, [(1, b'{"a": "'), (10, b"x"), (11, b"y"), (12, b"z"), (13, b"w"),
                 (10, b"x"), (11, b"y")])
    assert g.held() is None  # "x y" is a run of 2: it may repeat
    g.feed(12, b"z")  # now the run "x y z" has come twice
    assert g.held() == {13}  # ... and "w" would make "x y z w" come twice
    g.feed(14, b"v")
    assert g.held() is None


def test_repeat_guard_compares_a_string_only_with_itself() -> None:
    """Copying a value into a second member is never held back: each string starts
    afresh (the prompt and the other members are not looked at)."""
    g = RepeatGuard(2)
    feed_all(g, [(1, b'{"a": "'), (10, b"x"), (11, b"y"), (12, b"z"), (2, b'", "b": "'),
                 (10, b"x"), (11, b"y")])
    assert g.held() is None
    g.feed(3, b'"}')
    assert not g.in_string and g.held() is None


@pytest.mark.parametrize(("pieces", "held"), [
    (['{"a": ["x", "y"'], None),
    (['{"a": ["x", "y", "x'], '"'),  # `",` would end the repeat and start an item
    (['{"a": ["x", "y", "x"'], ""),  # after it: a ","
    (['{"a": ["x", "y", "x"', "]"], None),
    (['{"a": ["x", "x\\'], None),  # an escape is pending: the string goes on
    (['{"e": [{"t": "a"}, {"t": "a'], '"}'),  # `"},` ends the object item and goes on
    (['{"e": [{"t": "a"}, {"t": "ab'], None),
    (['{"e": [[1, 2], [1, 2]'], ""),  # (inside the inner array: its own items count)
    (['{"n": [1, 1, 1'], None),  # numbers repeat in earnest
    (['{"o": {"k": "v"}, "p": {"k": "v'], None),  # members, not items
])
def test_item_guard_names_the_tokens_that_go_on_after_a_repeated_item(
        pieces: list[str], held: str | None) -> None:
    g = ItemGuard()
    for piece in pieces:
        g.feed(piece)
    assert g.held() == held


# On a model that loops ---------------------------------------------------------------------
def off_and_on(gguf: Any, schema: dict[str, Any], max_tokens: int, off: dict[str, Any],
               on: dict[str, Any]) -> tuple[Any, Any]:
    """The same request on a runaway tiny model with a guard off, then on; both valid."""
    eng, with_off = make(gguf, **off)
    _, with_on = make(gguf, **on)
    request = eng.build_request("x", schema, max_tokens=max_tokens)
    try:
        results = with_off.generate(request), with_on.generate(request)
    finally:
        with_off.shutdown()
        with_on.shutdown()
    for r in results:
        assert validate_text(r.text, request.output).ok, r.text
    return results


def test_a_string_that_loops_is_cut(favorite_gguf: Any) -> None:
    loose, cut = off_and_on(favorite_gguf("a"), NOTE, 60, {"max_string_repeat": 0}, {})
    assert "a" * 30 in json.loads(loose.text)["note"]  # the runaway, unguarded
    note = json.loads(cut.text)["note"]
    assert "a" * 10 not in note, note  # 9 tokens "a" may come, not a 10th (a run of 8 twice)
    assert cut.stats["guarded_steps"] > 0


def test_an_array_ends_after_a_repeated_item(favorite_gguf: Any) -> None:
    loose, cut = off_and_on(favorite_gguf("a"), TAGS, 80, {"repeated_items_end": False}, {})
    many = json.loads(loose.text)["tags"]
    assert len(many) >= 4 and len(set(many)) < len(many) - 1, loose.text  # the runaway
    tags = json.loads(cut.text)["tags"]
    # the first repeat is kept (nothing the model wrote is changed), and nothing after it
    assert tags[-1] in tags[:-1] and len(set(tags[:-1])) == len(tags) - 1, cut.text
    assert cut.stats["guarded_steps"] > 0


def test_near_the_end_of_the_budget_arrays_end_as_soon_as_they_may(favorite_gguf: Any) -> None:
    """Wrap-up: within ``budget_wrap_up`` tokens of what closing needs, an array takes no
    new item, so the model ends it and writes the members after it itself; without it the
    array runs on until budget-aware closing writes the rest."""
    # repeats allowed here: the item guard alone would end this array after "aaa", "aaa"
    ran, wrapped = off_and_on(favorite_gguf("a"), TAGS, 70,
                              {"repeated_items_end": False, "budget_wrap_up": 0},
                              {"repeated_items_end": False})
    assert ran.stats["closing_tokens"] > 0, ran.text  # the array ran into the closing
    assert wrapped.stats["closing_tokens"] == 0, wrapped.text  # the model ended it
    assert len(json.loads(wrapped.text)["tags"]) < len(json.loads(ran.text)["tags"])


def test_an_item_that_ends_and_goes_on_in_one_token_ends_the_array() -> None:
    """Holding back '",' inside a repeated string item would only make the string longer
    (the model's next choice is more text): the decoder writes the array's end instead, as
    the tokenizer writes it where the answer goes on with a ',' ('"],' rather than '"]'
    then ',': benchmarks/token_seams.py found the split one)."""
    from structgen.backends.local.decoder import Decoder

    class Rt:
        token_bytes = [b'",', b'"]', b'.",', b'."]', b"x", b'"],', b",", b"}", b"],", b'"},',
                       b'"']
        item_start_sets = {'"': frozenset({0, 2}), '"}': frozenset({9})}

        class tok:
            @staticmethod
            def encode(text: str) -> list[int]:
                return {'"]': [1], '."]': [3], '"],': [5], '."],': [3, 6],
                        '"}],': [10, 7, 8]}.get(text, [4])

    class Seq:
        matcher: Any = None
        stats = {"guarded_steps": 0}

    class EndsTheObject:  # a matcher where no "," may follow the array
        @staticmethod
        def accepts(tok: int) -> bool:
            return tok != 5

    d = Decoder.__new__(Decoder)
    d.rt = Rt()  # type: ignore[assignment]
    s = Seq()
    assert d._end_array(s, 0, '"') == 5  # type: ignore[arg-type]  # '"],': one token
    assert d._end_array(s, 2, '"') == 3  # type: ignore[arg-type]  # no '."],' token
    assert d._end_array(s, 4, '"') == 4  # type: ignore[arg-type]  # more text: as chosen
    # an object item: the tokenizer writes '"}],' as '"' '}' '],', so '"' comes first (the
    # item and the array end at the next steps)
    assert d._end_array(s, 9, '"}') == 10  # type: ignore[arg-type]
    s.matcher = EndsTheObject()
    assert d._end_array(s, 0, '"') == 1  # type: ignore[arg-type]  # '"]', then '}'
    assert s.stats["guarded_steps"] == 4


# What the required members still to come are owed ------------------------------------------
TWO_NOTES = {"type": "object",
             "properties": {"note": {"type": "string"}, "next": {"type": "string"}},
             "required": ["note", "next"], "additionalProperties": False}
ASIDE = {"type": "object",
         "properties": {"note": {"type": "string", "maxLength": 12},
                        "aside": {"type": "string"}, "next": {"type": "string"}},
         "required": ["note", "next"], "additionalProperties": False}


def test_a_long_string_ends_where_the_members_after_it_are_owed_the_rest(
        favorite_gguf: Any) -> None:
    """A string that would run to the end of the budget leaves the tokens the required
    members after it are owed (``JsonCursor.owed``): they get the model's words, not
    closing's minimal ``""``. Loop guard off: the runaway string is the point here."""
    ran, cut = off_and_on(favorite_gguf("a"), TWO_NOTES, 60,
                          {"max_string_repeat": 0, "budget_wrap_up": 0},
                          {"max_string_repeat": 0})
    assert json.loads(ran.text)["next"] == "", ran.text  # closing's minimal value
    assert ran.stats["closing_tokens"] > 0
    value = json.loads(cut.text)
    assert len(value["next"]) >= 5, cut.text  # the model's own (runaway) words
    assert len(value["note"]) < len(json.loads(ran.text)["note"])
    assert cut.stats["string_cuts"] > 0


def test_wrapping_up_starts_no_optional_member(favorite_gguf: Any) -> None:
    """Near the end of the budget an object takes the required members it lacks, not an
    optional one: the runaway model, which likes "a", would write "aside" first."""
    ran, wrapped = off_and_on(favorite_gguf("a"), ASIDE, 40,
                              {"max_string_repeat": 0, "budget_wrap_up": 0},
                              {"max_string_repeat": 0})
    assert "aside" in json.loads(ran.text), ran.text
    value = json.loads(wrapped.text)
    assert "aside" not in value and value["next"], wrapped.text


def test_a_budget_too_small_for_every_reserve_is_shared(favorite_gguf: Any) -> None:
    """Ten required strings owe 120 tokens; a budget of 90 cannot hold that, so no string
    may end before its part (not every string cut at its first token, which would leave
    them all empty)."""
    schema = {"type": "object", "properties": {f"s{i}": {"type": "string"} for i in range(10)},
              "required": [f"s{i}" for i in range(10)], "additionalProperties": False}
    _, shared = off_and_on(favorite_gguf("a"), schema, 90,
                           {"max_string_repeat": 0, "budget_wrap_up": 0},
                           {"max_string_repeat": 0})
    values = json.loads(shared.text)
    assert sum(1 for v in values.values() if len(v) >= 2) >= 5, shared.text
