"""structgen's decode loop, the same for every runtime (llama.cpp, transformers).

Per step and sequence:

    fill bitmask (grammar engine) → mask logits → guards → greedy / seeded top-p sample
    → budget check → consume token → forced tokens (fast-forward) → feed token + forced
    tokens in ONE pass

Termination guarantees, so a small model cannot run away until ``max_tokens``:

- **whitespace runs** are bounded (``[local] max_whitespace``): past the bound no
  whitespace token is allowed unless nothing else is;
- **numbers** are bounded to what their type can hold (``[local] max_number_digits``
  significant digits, 2 exponent digits): past the bound no token continues the number
  unless nothing else can follow;
- **repeated items**: an array whose item (a string, object or array) repeats an earlier
  one ends there (``[local] repeated_items_end``): no ``,`` after it unless nothing else is
  allowed, and a token that ends it and goes on in one piece (``",``) is written with the
  array ended (``"]``) instead;
- **loops inside a string** are cut (``[local] max_string_repeat``): no token may make a
  string value repeat a run of that many of its own tokens and go on the same way (a small
  greedy model otherwise spends the budget on ``test_cache.py::test_cache.py::...`` and the
  answer's other members get budget-aware closing's minimal values);
- **wrap-up**: when the tokens left come within ``[local] budget_wrap_up`` of what the
  closing path needs, arrays take no new item (the same way), so the members still to come
  are the model's own words, not closing's;
- **budget-aware closing**: before a token is taken, the decoder checks that a completion
  of the grammar still fits in the tokens left after it (the matcher's shortest closing
  path). When it would not, the decoder takes the closing path from the current state
  instead, so an answer is not cut at ``max_tokens`` whenever the budget can hold a valid
  instance at all.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from structgen.backends.base import GenerationResult
from structgen.backends.local.drafts import PromptLookup
from structgen.backends.local.guards import ItemGuard, NumberGuard, RepeatGuard
from structgen.backends.local.runtime import Batch, Runtime, Seq, common_prefix
from structgen.constrain.base import ConstraintOptions, Matcher
from structgen.constrain.closing import RESERVE_STRING, JsonCursor
from structgen.errors import BackendError, BackendTimeout, BackendUnavailable, StructgenError

if TYPE_CHECKING:
    import torch

    from structgen.backends.base import GenerationRequest
    from structgen.config import LocalConfig

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# Where each answer token came from (``stats["token_origins"]``, a letter a token, beside
# ``stats["token_ids"]``): the token-boundary audit (benchmarks/token_seams.py) compares
# them with the tokenizer's own encoding of the answer.
ORIGINS = {
    "m": "the model's choice among the tokens the grammar and guards allowed",
    "g": "a guard's replacement of the model's choice (an array ended: '\",' -> '\"]')",
    "f": "forced by the grammar (fast-forward), fed after the token before it",
    "c": "budget-aware closing's path",
    "t": "'</think>' written at the think block's limit",
}
# While the tokens left exceed the last closing cost by more than this, the closing path is
# recomputed only every CLOSE_REFRESH steps (a walk costs ~0.1-1 ms); inside the window it
# is checked before every token.
CLOSE_WINDOW = 48
CLOSE_REFRESH = 8
# How far past the longest closing path seen so far a grammar walk looks, and where the
# tokens left count as far from the end. Far from it no completion can fail to fit, so only
# the cost is followed (every CLOSE_REFRESH steps, a walk of at most that cost plus
# CLOSE_WINDOW); near it the full check runs, its walks bounded by the same horizon. A
# step's closing work thus depends on the schema, never on the budget left (issue 24: a
# walk as long as the budget, each step, took vLLM's employee-profile schema from 4.9 s to
# 78.9 s at max_tokens=4096).
CLOSE_SEARCH = 256
# When no completion is known after a token (the schema's minimal completion was refused
# and the grammar walk found none), the token is still taken while this many tokens more
# than the closing path from the current state are left.
CLOSE_MARGIN = 16
# The longest closing path looked for when telling a cut answer's caller what it needs.
_SHORTEST_LIMIT = 4096
# With this many digits of room or fewer, the number guard also holds back the digits after
# which the grammar could not end the number within its room (a ``multipleOf``, whose
# grammar wants the last digits to be a multiple, otherwise runs on past the bound)
NUMBER_LOOKAHEAD = 3


def fail(seq: Seq, exc: BaseException) -> None:
    if seq.future.done():
        return
    if not isinstance(exc, StructgenError):
        exc = BackendError(f"{type(exc).__name__}: {exc}", "local")
    _settle(seq.future.set_exception, exc)
    if seq.on_text is not None:
        seq.on_text(None)


def _settle(setter: Callable[[Any], None], outcome: Any) -> bool:
    """Set a sequence's outcome; False when its stream was closed (future cancelled) between
    the check and now, the consumer's thread being free to do that at any moment."""
    try:
        setter(outcome)
    except concurrent.futures.InvalidStateError:
        return False
    return True


def sample(logits: torch.Tensor, temperature: float, top_p: float,
           generator: torch.Generator) -> int:
    """Temperature + nucleus sampling from one row of (masked) logits."""
    import torch

    probs = torch.softmax(logits / temperature, -1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        cum = torch.cumsum(sorted_probs, -1)
        sorted_probs[(cum - sorted_probs) > top_p] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator).item())


class Waiting(Protocol):
    """The requests queued behind a running batch (the worker's queue, oldest first)."""

    def next(self) -> Seq | None:
        """The oldest waiting sequence if the running batch may take it, else None."""

    def put_back(self, seqs: list[Seq]) -> None:
        """Return ``seqs`` to the head of the queue, in their order."""


class Decoder:
    """Decodes a batch of sequences to completion, admitting more between steps."""

    def __init__(self, rt: Runtime, cfg: LocalConfig, closing: threading.Event) -> None:
        self.rt = rt
        self.cfg = cfg
        self.closing = closing

    def setup(self, seq: Seq) -> None:
        import torch

        req = seq.request
        seq.prompt_ids = self.rt.prompt_ids(req)
        room = self.rt.answer_room(seq.prompt_ids)
        if room is not None and req.sampling.max_tokens > room:  # the memory's budget
            seq.request = req = dataclasses.replace(
                req, sampling=dataclasses.replace(req.sampling, max_tokens=max(1, room)))
        if req.output is not None:
            options = self._options(req)
            engine = self.rt.engine(self.cfg.engine)
            seq.matcher = engine.matcher(req.output, options)
            if req.output.kind == "json":
                if not engine.forbids_json_control_chars:
                    seq.ctrl_mask = self.rt.json_ctrl_mask(options.whitespace)
                if not req.reasoning:
                    self._answer_guards(seq)
            # the guards of a reasoning answer start when its think block ends (_track)
            seq.thinking = req.reasoning
        if self.cfg.draft_tokens and self.cfg.fast_forward:
            seq.lookup = PromptLookup(seq.prompt_ids)
        if req.sampling.temperature > 0:
            seq.generator = torch.Generator()
            seq.generator.manual_seed(req.sampling.seed if req.sampling.seed is not None
                                      else int(time.time_ns() % (2**63)))
        seq.set_up = True

    def _options(self, req: GenerationRequest) -> ConstraintOptions:
        return ConstraintOptions(whitespace=req.whitespace or self.cfg.whitespace,
                                 max_whitespace=self.cfg.max_whitespace,
                                 reasoning=req.reasoning)

    def shortest_answer(self, req: GenerationRequest) -> int | None:
        """Tokens in the shortest complete answer the grammar accepts, from its start (the
        closing path of a fresh matcher); None when unknown. Told to a caller whose answer
        was cut at ``max_tokens``."""
        if req.output is None or req.reasoning or not self.cfg.budget_closing:
            return None
        m = self.rt.engine(self.cfg.engine).matcher(req.output, self._options(req))
        if not m.supports_closing:
            return None
        cursor = JsonCursor(req.output.json_schema, spaced=req.whitespace == "spaced") \
            if req.output.kind == "json" else None
        path = self.closing_path(m, cursor, _SHORTEST_LIMIT)
        return None if path is None else len(path)

    def _ready(self, seq: Seq) -> bool:
        """Set ``seq`` up once; False when it was dropped (its stream closed while it
        waited, or its set-up failed: then its caller has the error)."""
        if seq.future.cancelled():
            return False
        if not seq.set_up:
            try:
                self.setup(seq)
            except BaseException as exc:
                fail(seq, exc)
                return False
        return True

    def run(self, seqs: list[Seq], waiting: Waiting | None = None) -> None:
        """Decode ``seqs`` and, under continuous batching, whatever ``waiting`` hands over
        between steps, until every sequence has finished. Sequences that do not fit the
        runtime's memory beside the others go back to ``waiting`` (first in, first out)."""
        import torch

        with torch.inference_mode():
            self._run(seqs, waiting)

    def _run(self, seqs: list[Seq], waiting: Waiting | None) -> None:
        live: list[Seq] = []
        for i, seq in enumerate(seqs):
            if not self._ready(seq):
                continue
            if waiting is not None and not self.rt.fits(live, seq):
                waiting.put_back([s for s in seqs[i:] if not s.future.done()])
                break
            live.append(seq)
        if not live:
            return
        batch, logits = self.rt.begin(live)
        admit = waiting is not None and batch.admits and self.cfg.batching == "continuous"
        try:
            for seq in live:
                seq.stats["batch_size"] = len(live)
            while True:
                rows = [i for i, s in enumerate(live) if not s.prefill]
                ready = [live[i] for i in rows]
                self._choose(ready, logits if len(rows) == len(live) else logits[rows])
                self._verify(ready)
                for s in live:
                    if s.prefill and s.future.cancelled():  # closed while it prefilled
                        s.finish = "cancelled"
                    if s.finish is not None:
                        self._finish(s)
                keep = [i for i, s in enumerate(live) if s.finish is None]
                if len(keep) < len(live):
                    batch.keep(keep)
                    live = [live[i] for i in keep]
                if admit and live:  # an empty batch ends: the worker gathers afresh
                    self._admit(live, batch, waiting)  # type: ignore[arg-type]
                if not live:
                    return
                if self.cfg.draft_tokens and batch.drafts and self.cfg.fast_forward:
                    drafting = len(live) <= self.cfg.draft_max_live
                    for s in live:
                        s.draft = self._draft(s) if drafting and not s.prefill else []
                logits = batch.step(live, self.cfg.fast_forward)
        finally:
            batch.close()

    def _admit(self, live: list[Seq], batch: Batch, waiting: Waiting) -> None:
        """Continuous batching: take waiting sequences into the running batch, first in
        first out, while there is a slot and memory for them; their prompts are prefilled
        in chunks over the next steps (``Batch.step``)."""
        while len(live) < self.cfg.max_batch and not self.closing.is_set():
            seq = waiting.next()
            if seq is None:
                return
            if not self._ready(seq):
                continue
            if not self.rt.fits(live, seq):
                waiting.put_back([seq])
                return
            try:
                batch.add(seq)
            except BaseException as exc:
                fail(seq, exc)
                continue
            live.append(seq)
            seq.stats["batch_size"] = len(live)
            seq.stats["joined_running_batch"] = 1

    def _draft(self, s: Seq) -> list[int]:
        """Tokens to feed after ``s.pending`` on a guess (:mod:`drafts`): what followed the
        answer's last few tokens where they occurred before in the context, cut where the
        grammar would refuse it or the token budget ends."""
        lookup = s.lookup
        if lookup is None or s.finish is not None:
            return []
        k = min(self.cfg.draft_tokens, s.request.sampling.max_tokens - len(s.out_ids))
        lookup.extend(s.out_ids[len(lookup.ids) - len(s.prompt_ids):])
        guess = lookup.propose(k)
        if not guess or s.matcher is None:
            return guess
        ahead, n = s.matcher.fork(), 0
        for tok in guess:
            if tok in self.rt.eos_ids or not ahead.consume(tok):
                break
            n += 1
            if ahead.is_finished():
                break
        return guess[:n]

    def _verify(self, ready: list[Seq]) -> None:
        """Go on choosing tokens for the sequences whose drafts were fed, position by
        position, while the tokens chosen (sampled and forced) are the drafted ones: each
        position's logits came in the same pass. Each choice is made as one pass at a time
        would make it (``_choose``: masks, guards, the sampler) from the logits the pass
        gave (llama.cpp's CPU kernels give a row's logits slightly differently in passes of
        different sizes, so greedy near-ties may break otherwise, as with fast-forward).
        What was not taken is fed next step (``pending``) and the memory's drafted
        positions after it are dropped (``unfed``)."""
        import torch

        drafted = [s for s in ready if s.draft]
        if not drafted:
            return
        made = {id(s): list(s.pending) for s in drafted}
        active = drafted
        while active:
            active = [s for s in active if s.finish is None
                      and len(made[id(s)]) <= len(s.draft)
                      and s.draft[:len(made[id(s)])] == made[id(s)]]
            if not active:
                break
            rows = torch.stack([s.draft_logits[len(made[id(s)]) - 1]  # type: ignore[index]
                                for s in active])
            self._choose(active, rows)
            for s in active:
                made[id(s)] += s.pending
        for s in drafted:
            taken = common_prefix(s.draft, made[id(s)])
            s.pending = made[id(s)][taken:]
            s.unfed = len(s.draft) - taken
            s.stats["draft_tokens"] = s.stats.get("draft_tokens", 0) + len(s.draft)
            s.stats["draft_accepted"] = s.stats.get("draft_accepted", 0) + taken
            s.draft, s.draft_logits = [], None

    def _choose(self, live: list[Seq], logits: torch.Tensor) -> None:
        """Pick each live sequence's next token and queue what the next pass feeds."""

        rt = self.rt
        constrained = [i for i, s in enumerate(live) if s.matcher is not None]
        if constrained:
            bitmask = rt.bitmask[:len(live)]
            bitmask.fill_(-1)
            for i in constrained:
                s = live[i]
                s.matcher.fill_bitmask(bitmask, i)  # type: ignore[union-attr]
                if s.ctrl_mask is not None:
                    bitmask[i].bitwise_and_(s.ctrl_mask)
            rt.apply_mask(logits, bitmask)
        for i, s in enumerate(live):
            if s.request.output is None or s.request.output.kind != "json":
                continue
            if s.ws_run >= self.cfg.max_whitespace and len(rt.ws_ids):
                # runaway-whitespace guard: no more whitespace unless nothing else fits
                self._hold_back(s, logits[i], rt.ws_ids)
            if s.number is not None and len(rt.digit_ids):
                room = s.number.room()
                if room is not None:
                    # runaway-number guard: no token may carry the number past the digits
                    # its type holds (a multi-digit token counts all its digits)
                    self._hold_back(s, logits[i], rt.digit_ids[rt.digit_runs > room])
                    if room <= NUMBER_LOOKAHEAD and s.matcher is not None:
                        self._hold_back_dead_ends(s, logits[i], room)
            # what the required members not begun yet are owed (tokens, members)
            owed = s.cursor.owed() if s.cursor is not None and self.cfg.budget_wrap_up \
                else (0, 0)
            wrapping = self._wrapping_up(s, owed[0])
            if s.items is not None:
                # item guard: an array whose item repeats an earlier one ends there, and near
                # the end of the budget every array ends as soon as it may
                closers = s.items.held(repeats=self.cfg.repeated_items_end, wrap_up=wrapping)
                if closers == "" and "" in rt.item_starts:
                    self._hold_back(s, logits[i], rt.item_starts[""])  # no "," after the item
                elif closers:
                    # the item is open (a string, an object): holding back '",' would only
                    # make it longer; a token that ends it and goes on ends the array instead
                    s.end_array = closers
            if wrapping and s.cursor is not None:
                self._wrap_up_members(s, logits[i])
            if self._cut_string(s, *owed):
                # the members still to come are owed the tokens left: end the string here
                # (the tokens that go on inside it are held back)
                self._hold_back(s, logits[i], rt.string_inner_ids)
                s.stats["string_cuts"] = s.stats.get("string_cuts", 0) + 1
            if s.repeat is not None:
                held = s.repeat.held()
                if held:
                    import torch

                    # loop guard: no token that would make the string repeat itself again
                    self._hold_back(s, logits[i], torch.tensor(sorted(held), dtype=torch.long))
        greedy = logits.argmax(-1).tolist()
        now = time.perf_counter()
        for i, s in enumerate(live):
            sp = s.request.sampling
            tok = greedy[i] if s.generator is None else sample(logits[i], sp.temperature,
                                                               sp.top_p, s.generator)
            if s.ttft is None:
                s.ttft = now - s.start
            if s.matcher is not None and logits[i, tok].item() == float("-inf"):
                raise BackendError(f"the grammar allows no token here: {s.matcher.error()}",
                                   "local")
            origin = "m"
            if s.end_array is not None:  # (a token the grammar accepts, checked there)
                chosen, tok = tok, self._end_array(s, tok, s.end_array)
                origin = "m" if tok == chosen else "g"
                s.end_array = None
            self._advance(s, tok, origin)

    @staticmethod
    def _hold_back(s: Seq, row: torch.Tensor, ids: torch.Tensor) -> None:
        import torch

        saved = row[ids].clone()
        row[ids] = float("-inf")
        if torch.isfinite(row).any():
            s.stats["guarded_steps"] += 1
        else:
            row[ids] = saved

    def _hold_back_dead_ends(self, s: Seq, row: torch.Tensor, room: int) -> None:
        """Hold back each allowed all-digit token after which the number could not end
        within the digits left (issue 24 B19: ``multipleOf: 5`` took an integer to 22)."""
        import torch

        m = s.matcher
        assert m is not None
        dead = []
        for tok, n in self.rt.only_digits:
            if n > room or row[tok].item() == float("-inf"):
                continue
            ahead = m.fork()
            if not ahead.consume(tok) or not self._closable(ahead, room - n):
                dead.append(tok)
        if dead:
            self._hold_back(s, row, torch.tensor(dead, dtype=torch.long))

    def _closable(self, m: Matcher, room: int) -> bool:
        """Can the number ``m`` is inside end within ``room`` more one-digit tokens?"""
        if m.is_accepting() or any(m.accepts(t) for t in self.rt.number_ends):
            return True
        if room <= 0:
            return False
        for tok, n in self.rt.only_digits:
            if n == 1:
                ahead = m.fork()
                if ahead.consume(tok) and self._closable(ahead, room - 1):
                    return True
        return False

    def _answer_guards(self, seq: Seq) -> None:
        """The number and loop guards and the closing cursor of a JSON answer (from its first
        byte)."""
        output = seq.request.output
        if output is None or output.kind != "json":
            return
        if self.cfg.max_number_digits:
            seq.number = NumberGuard(self.cfg.max_number_digits)
        if self.cfg.max_string_repeat:
            seq.repeat = RepeatGuard(self.cfg.max_string_repeat)
        if self.cfg.repeated_items_end or self.cfg.budget_wrap_up:
            seq.items = ItemGuard()
        if self.cfg.budget_closing:
            seq.cursor = JsonCursor(output.json_schema,
                                    spaced=seq.request.whitespace == "spaced")

    def closing_path(self, m: Matcher, cursor: JsonCursor | None, limit: int,
                     answer: JsonCursor | None = None, *, thinking: bool = False,
                     search: int | None = None) -> list[int] | None:
        """The shortest known path from ``m``'s state to a complete answer within ``limit``
        tokens: the schema's minimal completion (:mod:`structgen.constrain.closing`) when
        the grammar accepts it, else a walk of the grammar itself, of at most ``search``
        tokens when given. While a reasoning answer's think block is open (``thinking``)
        the path first ends it (``</think>``), then completes the answer from its start
        (``answer``: a fresh cursor, JSON only): a model that thinks until the budget runs
        out still answers."""
        if limit < 0:
            return None
        if thinking:
            close = self.rt.tok.encode(THINK_CLOSE)
            ahead = m.fork()
            if len(close) > limit or not ahead.consume_all(close):
                return None
            forced = ahead.forced_tokens()
            cursor = None
            if answer is not None:  # the answer's start, as far as the grammar forced it
                cursor = answer.copy()
                cursor.feed(self.rt.text(forced))
            used = len(close) + len(forced)
            rest = self.closing_path(ahead, cursor, limit - used,
                                     search=None if search is None else search - used)
            return None if rest is None else [*close, *forced, *rest]
        if cursor is not None:
            text = cursor.completion()
            if text is not None:
                ids = self.rt.tok.encode(text) if text else []
                if len(ids) <= limit and m.completes_with(ids):
                    return ids
        return m.closing_path(limit if search is None else min(limit, search))

    def _end_array(self, s: Seq, tok: int, closers: str) -> int:
        """``tok`` if it does not end the array's current item and start another; else the
        first token of the same text with the array ended there (``.",`` becomes ``."]``),
        as the tokenizer writes that text with what may follow it (``"],`` rather than
        ``"]`` then ``,``; ``}`` then ``],`` rather than ``}]`` then ``,``:
        benchmarks/token_seams.py). A first token that stops short of the ``]`` (``}``)
        closes the item, and the guard ends the array at the next step."""
        if tok not in self.rt.item_start_sets.get(closers, ()):
            return tok
        text = self.rt.token_bytes[tok].partition(b",")[0].decode("utf-8", errors="replace")
        ended = text.rstrip() + "]"
        for then in (",", "}", "]", ""):
            ids = self.rt.tok.encode(ended + then)
            if ids and (ended + then).encode().startswith(self.rt.token_bytes[ids[0]]) \
                    and (s.matcher is None or s.matcher.accepts(ids[0])):
                s.stats["guarded_steps"] += 1
                return ids[0]
        return tok

    def _wrapping_up(self, s: Seq, owed: int = 0) -> bool:
        """Whether the tokens left are within ``[local] budget_wrap_up`` plus what the
        required members not begun yet are ``owed`` of what the closing path needs: then
        arrays take no new item and objects no optional member, so the budget goes to the
        members after them, written by the model, rather than to closing's minimal values."""
        if not self.cfg.budget_wrap_up or s.close_cost is None:
            return False
        left = s.request.sampling.max_tokens - len(s.out_ids)
        return left - s.close_cost <= self.cfg.budget_wrap_up + owed

    def _wrap_up_members(self, s: Seq, row: torch.Tensor) -> None:
        """While wrapping up, no container takes more than it must: an object starts no
        optional member (it ends, or writes the required ones it lacks) and an array just
        opened takes no first item (where ``minItems`` allows). Otherwise an optional
        member begun late (a reflection's ``critique`` tree) took the budget of the required
        members after it (``next_action``, ``score``), which closing then gave ``"a"``
        and ``0``."""
        import torch

        rt, cur = self.rt, s.cursor
        frame = cur.open_frame()
        if frame is None:
            return
        if frame.kind == "array":
            if frame.state == "value_or_end" and cur.lexeme == "":
                self._hold_back(s, row, rt.not_array_end_ids)  # "[" then "]" at once
            return
        optional = cur.optional_keys(frame)
        if not optional:
            return
        if frame.state == "comma_or_end" and cur.lexeme == "":
            if not cur.missing_keys(frame):  # nothing required is left: end it, no ","
                self._hold_back(s, row, rt.comma_ids)
            return
        if frame.state not in ("key_or_end", "key") or cur.lexeme not in ("", "key"):
            return
        held = []
        for tok in torch.isfinite(row).nonzero().flatten().tolist():
            text = rt.token_bytes[tok].decode("utf-8", errors="replace")
            if cur.lexeme == "":
                text = text.lstrip(" \t\n\r")
                if not text.startswith('"'):
                    continue
                text = text[1:]
            name, ended, _ = text.partition('"')
            name = cur.buf + name
            fits = [k for k in optional | cur.missing_keys(frame)
                    if (k == name if ended else k.startswith(name))]
            if fits and all(k in optional for k in fits):
                held.append(tok)
        if held:
            self._hold_back(s, row, torch.tensor(held, dtype=torch.long))

    def _cut_string(self, s: Seq, owed: int, members: int) -> bool:
        """Whether the string value being written must end now: the tokens left, less what
        the closing path needs, are no more than the ``members`` required members still to
        come are ``owed`` (``JsonCursor.owed``), and the string has had its own share (what a string is
        owed, or an equal part of the tokens free when they cannot hold every reserve).
        Without this a long string (a cause that loops, a rationale that rambles) took the
        budget of the members after it, and closing gave those its minimal values:
        ``"fix_steps": ["a"], "confidence": 0``."""
        if not self.cfg.budget_wrap_up or s.cursor is None or s.close_cost is None \
                or not s.cursor.in_string_value():
            return False
        free = s.request.sampling.max_tokens - len(s.out_ids) - s.close_cost
        if owed <= 0 or free > owed:
            return False
        # a budget too small for every reserve is shared: this string, too, gets its part
        # of what is free (never less than a string is owed, when the budget holds that)
        share = min(RESERVE_STRING, (free + s.string_run) // (members + 1))
        return s.string_run >= share

    def _budget_close(self, s: Seq, tok: int) -> bool:
        """Take the closing path instead of ``tok`` when, after ``tok``, no completion would
        fit in the tokens left. Returns True when the sequence was closed."""
        m = s.matcher
        if m is None or not self.cfg.budget_closing or not m.supports_closing:
            return False
        remaining = s.request.sampling.max_tokens - len(s.out_ids)
        s.close_steps += 1
        refresh = s.close_steps % CLOSE_REFRESH == 0
        output = s.request.output
        answer = JsonCursor(output.json_schema, spaced=s.request.whitespace == "spaced") \
            if s.thinking and output is not None and output.kind == "json" else None
        if s.close_peak is not None and remaining > s.close_peak + CLOSE_SEARCH:
            # far from the end: whatever the cost, it fits; follow it now and then
            if refresh:
                known = self.closing_path(m, s.cursor, remaining, answer, thinking=s.thinking,
                                          search=s.close_peak + CLOSE_WINDOW)
                if known is not None:
                    self._cost(s, len(known))
            return False
        if s.close_cost is not None and remaining > s.close_cost + CLOSE_WINDOW \
                and not refresh:
            return False
        if s.close_cost is None and s.close_peak is not None and remaining > CLOSE_MARGIN \
                and not refresh:
            return False  # no completion was found last time: look again now and then
        # the walks look no further than the horizon (the first check sets it)
        search = (s.close_peak or 0) + CLOSE_SEARCH + CLOSE_WINDOW
        ahead = m.fork()
        cost: int | None = None
        if ahead.consume(tok):
            cost = 1
            if not ahead.is_finished():
                forced = ahead.forced_tokens()
                cursor = None
                if s.cursor is not None:
                    cursor = s.cursor.copy()
                    cursor.feed(self.rt.text([tok, *forced]))
                # a looser limit than the budget: over-budget is a verdict, not-found is not
                after = self.closing_path(ahead, cursor, remaining + CLOSE_WINDOW, answer,
                                          thinking=s.thinking, search=search)
                cost = None if after is None else 1 + len(forced) + len(after)
            if cost is not None and cost <= remaining:
                self._cost(s, cost)
                return False
        path = self.closing_path(m, s.cursor, remaining, answer, thinking=s.thinking,
                                 search=search)
        if path is None:  # no completion fits at all: decode on (the answer will be cut)
            s.close_cost = None
            s.close_peak = s.close_peak or 0
            return False
        if cost is None and len(path) < remaining - CLOSE_MARGIN:
            # no known way to finish after this token, but time is left: take it, look again
            self._cost(s, len(path))
            return False
        if not m.consume_all(path):
            raise BackendError(f"the grammar rejected its own closing path: {m.error()}",
                               "local")
        s.out_ids.extend(path)
        s.origins.extend("c" * len(path))
        s.stats["closing_tokens"] += len(path)
        s.finish = "stop"
        if s.on_text is not None:
            self._emit(s)
        return True

    @staticmethod
    def _cost(s: Seq, cost: int) -> None:
        s.close_cost = cost
        s.close_peak = max(s.close_peak or 0, cost)

    def _advance(self, s: Seq, tok: int, origin: str = "m") -> None:
        rt = self.rt
        if tok in rt.eos_ids:
            s.finish = "stop"
            return
        if self._budget_close(s, tok):
            return
        m = s.matcher
        if m is not None and not m.consume(tok):
            raise BackendError(f"the grammar rejected token {tok}: {m.error()}", "local")
        s.out_ids.append(tok)
        s.origins.append(origin)
        self._track(s, tok)
        s.pending = [tok]
        if self.closing.is_set():
            s.finish = "closed"
            return
        if s.future.cancelled():  # its stream was closed: stop decoding it, free its slot
            s.finish = "cancelled"
            return
        if s.request.deadline is not None and time.monotonic() > s.request.deadline:
            s.finish = "timeout"
            return
        if m is not None and m.is_finished():
            s.finish = "stop"
            return
        if len(s.out_ids) >= s.request.sampling.max_tokens:
            s.finish = "length"
            return
        if m is None and s.request.sampling.stop and self._hit_stop(s):
            s.finish = "stop"
            return
        if m is not None:
            forced = m.forced_tokens()
            if forced:
                s.out_ids.extend(forced)
                s.origins.extend("f" * len(forced))
                s.pending.extend(forced)
                s.stats["ff_tokens"] += len(forced)
                for t in forced:
                    self._track(s, t)
                if m.is_finished():
                    s.finish = "stop"
                elif len(s.out_ids) >= s.request.sampling.max_tokens:
                    s.finish = "length"
        if s.thinking and s.finish is None and len(s.out_ids) >= self._think_limit(s):
            self._end_thinking(s)
        if s.on_text is not None:
            self._emit(s)

    def _think_limit(self, s: Seq) -> int:
        """Tokens a reasoning answer's think block may take: ``[local] think_tokens``, else
        half of ``max_tokens`` (the answer keeps the rest)."""
        return self.cfg.think_tokens or max(1, s.request.sampling.max_tokens // 2)

    def _end_thinking(self, s: Seq) -> None:
        """Write ``</think>`` for a think block that reached its limit: the answer (and its
        guards) start here, whatever the model would have thought next."""
        m = s.matcher
        close = self.rt.tok.encode(THINK_CLOSE)
        if m is None or not m.fork().consume_all(close) or not m.consume_all(close):
            return  # the grammar cannot end it here; budget closing still will
        forced = m.forced_tokens()
        s.out_ids.extend([*close, *forced])
        s.origins.extend("t" * len(close) + "f" * len(forced))
        s.pending.extend([*close, *forced])
        s.stats["think_cut_tokens"] = len(close)
        for t in [*close, *forced]:
            self._track(s, t)
        if m.is_finished():
            s.finish = "stop"
        elif len(s.out_ids) >= s.request.sampling.max_tokens:
            s.finish = "length"

    def _emit(self, s: Seq) -> None:
        """Stream the bytes of tokens produced since the last call (whole characters only)."""
        chunk = s.utf8.decode(b"".join(self.rt.token_bytes[i] for i in s.out_ids[s.emitted:]))
        s.emitted = len(s.out_ids)
        if chunk and s.on_text is not None:
            s.on_text(chunk)

    def _track(self, s: Seq, tok: int) -> None:
        b = self.rt.token_bytes[tok]
        if not b:
            return
        if s.thinking:
            s.think_tail = (s.think_tail + b.decode("utf-8", errors="replace"))[-64:]
            end = s.think_tail.find(THINK_CLOSE)
            if end < 0:
                return
            s.thinking = False  # the answer starts: its guards from here on
            self._answer_guards(s)
            b = s.think_tail[end + len(THINK_CLOSE):].lstrip("\n").encode()
        stripped = b.rstrip(b" \t\n\r")
        s.ws_run = s.ws_run + len(b) if not stripped else len(b) - len(stripped)
        if s.number is not None:
            s.number.feed(b)
        if s.repeat is not None:
            s.repeat.feed(tok, b)
        if s.items is not None:
            s.items.feed(b.decode("utf-8", errors="replace"))
        if s.cursor is not None:
            s.cursor.feed(b.decode("utf-8", errors="replace"))
            s.string_run = s.string_run + 1 if s.cursor.in_string_value() else 0

    def _hit_stop(self, s: Seq) -> bool:
        text = self.rt.text(s.out_ids)
        for stop in s.request.sampling.stop:
            pos = text.find(stop)
            if pos >= 0:
                s.stop_at_char = pos
                return True
        return False

    def _finish(self, s: Seq) -> None:
        if s.future.done():
            return
        if s.finish in ("timeout", "closed"):
            fail(s, BackendTimeout("deadline passed while decoding", "local")
                 if s.finish == "timeout" else
                 BackendUnavailable("the local backend was shut down mid-request", "local"))
            return
        text = self.rt.text(s.out_ids)
        if s.stop_at_char is not None:
            text = text[:s.stop_at_char]
        reasoning = None
        if s.request.reasoning and s.matcher is not None:
            head, sep, tail = text.partition(THINK_CLOSE)
            if sep:
                reasoning = head.removeprefix(THINK_OPEN)
                text = tail.lstrip("\n")
        stats: dict[str, Any] = dict(s.stats)
        stats["generated_tokens"] = len(s.out_ids)
        stats["token_ids"] = list(s.out_ids)
        stats["token_origins"] = "".join(s.origins)
        stats["engine"] = self.cfg.engine if s.matcher is not None else "none"
        stats["runtime"] = self.rt.kind
        stats["finish_reason"] = s.finish or "stop"
        if s.finish == "length" and s.matcher is not None:
            try:
                need = self.shortest_answer(s.request)
            except Exception:  # a hint for an error message: never a reason to fail
                need = None
            if need is not None:
                stats["shortest_answer_tokens"] = need
        result = GenerationResult(
            text=text, backend="local", model=self.rt.name, finish_reason=s.finish or "stop",
            reasoning_text=reasoning, prompt_tokens=len(s.prompt_ids),
            completion_tokens=len(s.out_ids), latency_s=time.perf_counter() - s.start,
            ttft_s=s.ttft, constrained=s.matcher is not None, stats=stats,
            post_enforced=s.matcher.post_enforced if s.matcher is not None else ())
        if not _settle(s.future.set_result, result):
            return  # its stream was closed meanwhile
        if s.on_text is not None:
            self._emit(s)
            tail = s.utf8.decode(b"", final=True)
            if tail:
                s.on_text(tail)
            s.on_text(None)
