"""The contract between the decode loop and a model runtime (llama.cpp or transformers).

A runtime owns a loaded model and everything derived from it: the tokenizer's view for the
grammar engines (:class:`~structgen.constrain.TokenizerData`), the raw bytes of every token,
the prompt template, and the model's memory (KV cache, with reuse of shared prompt
prefixes). The decoder (``decoder.py``) never sees any of that memory: it asks the runtime
to :meth:`Runtime.begin` a batch of sequences and then to :meth:`Batch.step` them, each
step feeding every live sequence's pending tokens (the sampled one plus the tokens the
grammar forced, in one pass) and returning one row of logits per sequence.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import importlib
import importlib.util
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from structgen.backends.base import GenerationRequest, GenerationResult
from structgen.constrain.base import GrammarConstraint, Matcher, create_constraint
from structgen.messages import ToolArguments, hermes_messages, template_messages
from structgen.schema.toolset import PROMPT_DETAILS, offered, with_tools_prompt

if TYPE_CHECKING:
    import torch

    from structgen.config import LocalConfig
    from structgen.constrain.base import TokenizerData
    from structgen.constrain.grammar_cache import GrammarCache

WHITESPACE_BYTES = frozenset(b" \t\n\r")
# Bytes JSON never allows raw (RFC 8259: control characters must be escaped in strings);
# the free "any" layout still needs tab, LF and CR between tokens.
JSON_FORBIDDEN_BYTES = {"compact": frozenset(range(0x20)), "spaced": frozenset(range(0x20)),
                        "any": frozenset(range(0x20)) - frozenset(b"\t\n\r")}


@dataclass
class Seq:
    """One request in flight inside the worker."""

    request: GenerationRequest
    future: concurrent.futures.Future[GenerationResult]
    start: float
    prompt_ids: list[int] = field(default_factory=list)
    matcher: Matcher | None = None
    generator: torch.Generator | None = None
    out_ids: list[int] = field(default_factory=list)
    # where each token of out_ids came from, a letter each (ORIGINS in decoder.py)
    origins: list[str] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)
    ws_run: int = 0
    number: Any = None  # the JSON lexer state of the number guard (guards.NumberGuard)
    repeat: Any = None  # the loop guard of the string being written (guards.RepeatGuard)
    items: Any = None  # the arrays of a JSON answer and their items (guards.ItemGuard)
    # the closing characters after which the array ends instead of taking another item
    # (guards.ItemGuard.held), for the token chosen this step; None: no such end
    end_array: str | None = None
    close_cost: int | None = None  # tokens of the last computed closing path
    close_peak: int | None = None  # the longest closing path seen (None: not looked yet)
    close_steps: int = 0  # budget checks so far (every CLOSE_REFRESH-th one refreshes)
    cursor: Any = None  # where a JSON answer stands in its schema (constrain.closing)
    string_run: int = 0  # tokens of the string value being written (0: not in one)
    thinking: bool = False  # a reasoning answer's think block is still open
    think_tail: str = ""  # the last characters of it (to see "</think>" arrive)
    ctrl_mask: torch.Tensor | None = None  # allowed-token row ANDed into the grammar mask
    on_text: Callable[[str | None], None] | None = None  # streaming: chunk, then None
    emitted: int = 0  # tokens already streamed
    utf8: Any = None  # incremental decoder for streamed chunks
    finish: str | None = None
    ttft: float | None = None
    stop_at_char: int | None = None  # where a stop string begins in the text (cut there)
    # continuous batching: prompt tokens still to feed (chunked prefill); while any are
    # left the sequence has no logits to decode from
    prefill: list[int] = field(default_factory=list)
    set_up: bool = False  # prompt tokenized, matcher and guards made (decoder.setup)
    # draft tokens (drafts.py): fed after ``pending`` in the next pass, which returns their
    # logits too (``draft_logits``: the row after each of them); ``unfed``: how many
    # positions at the end of the sequence's memory hold drafts that were not taken (the
    # next step drops them)
    lookup: Any = None
    draft: list[int] = field(default_factory=list)
    draft_logits: torch.Tensor | None = None
    unfed: int = 0
    stats: dict[str, int] = field(default_factory=lambda: {
        "forward_passes": 0, "ff_tokens": 0, "prefill_tokens": 0,
        "prefix_cache_hit_tokens": 0, "batch_size": 1, "closing_tokens": 0,
        "guarded_steps": 0})


class Batch(ABC):
    """Sequences decoding together: the runtime's memory for them lives here.

    A batch that ``admits`` takes new sequences between steps (continuous batching):
    ``add`` gives a sequence its memory and queues its prompt, which later ``step`` calls
    feed in chunks beside the other sequences' decode tokens."""

    admits: bool = False
    # whether ``step`` feeds a sequence's ``draft`` after its pending tokens and sets its
    # ``draft_logits``, and drops the ``unfed`` positions first
    drafts: bool = False

    @abstractmethod
    def step(self, live: list[Seq], fast_forward: bool) -> torch.Tensor:
        """Feed each live sequence's ``pending`` tokens; one row of logits per sequence.

        ``fast_forward=False`` feeds one token per pass (the reference path that the
        single pass must reproduce exactly under greedy decoding)."""

    @abstractmethod
    def keep(self, indices: list[int]) -> None:
        """Only the sequences at ``indices`` (of the last call's ``live``) go on."""

    def add(self, seq: Seq) -> None:
        """Give ``seq`` (set up, prompt tokenized) its memory; ``step`` prefills it."""
        raise NotImplementedError(f"{type(self).__name__} does not admit sequences")

    def close(self) -> None:  # noqa: B027 - most batches hold nothing to free
        """Free what the batch holds (called once, when every sequence is done)."""


class Runtime(ABC):
    """A loaded model with everything derived from it (tokenizer data, engines, caches)."""

    kind: str = "base"
    name: str
    ref: str
    vocab_size: int
    eos_ids: frozenset[int]
    tok: TokenizerData
    token_bytes: list[bytes]
    load_s: float = 0.0  # how long loading the model took (reported apart from requests)

    def __init__(self, cfg: LocalConfig, grammar_cache: GrammarCache) -> None:
        self.cfg = cfg
        self.grammar_cache = grammar_cache
        self.engines: dict[str, GrammarConstraint] = {}
        self._ctrl_masks: dict[str, Any] = {}
        self.forward_passes = 0

    def _derive(self) -> None:
        """Tables computed once from the token bytes (call at the end of ``__init__``)."""
        import torch

        self.ws_ids = torch.tensor(
            [i for i, b in enumerate(self.token_bytes) if b and set(b) <= WHITESPACE_BYTES],
            dtype=torch.long)
        # tokens that begin with a digit, and how many digits they begin with: what the
        # number guard holds back when a number has no room for that many more
        leading = [len(b) - len(b.lstrip(b"0123456789")) for b in self.token_bytes]
        self.digit_ids = torch.tensor([i for i, n in enumerate(leading) if n],
                                      dtype=torch.long)
        self.digit_runs = torch.tensor([leading[i] for i in self.digit_ids.tolist()],
                                       dtype=torch.long)
        # tokens of digits only, and the single-byte tokens that can end a JSON number:
        # how the number guard looks ahead near its bound (decoder.Decoder._closable)
        self.only_digits = [(i, len(b)) for i, b in enumerate(self.token_bytes)
                            if b and b.isdigit()]
        self.number_ends = [i for i, b in enumerate(self.token_bytes)
                            if b in (b",", b"}", b"]", b" ", b"\n")]
        # tokens that end what is open and start a next item: closing characters, then a
        # ",", by those closing characters (whitespace left out; "": a "," first), string
        # text before a closing quote allowed ('.",' is '"'). What the item guard holds
        # back after (or at the end of) an array item.
        ends: dict[str, list[int]] = {}
        for i, b in enumerate(self.token_bytes):
            head, comma, _ = b.partition(b",")
            quote = head.find(b'"')
            text, closers = (b"", head) if quote < 0 else (head[:quote], head[quote:])
            closers = closers.translate(None, b" \t\n\r")
            if comma and b"\\" not in text and not closers.strip(b'"]}') \
                    and (not text or closers[:1] == b'"'):
                ends.setdefault(closers.decode(), []).append(i)
        self.item_starts = {k: torch.tensor(v, dtype=torch.long) for k, v in ends.items()}
        # tokens that cannot end a JSON string (no '"' before any backslash): what a string
        # value that must end now holds back (decoder.Decoder._cut_string)
        self.string_inner_ids = torch.tensor(
            [i for i, b in enumerate(self.token_bytes) if b'"' not in b.partition(b"\\")[0]],
            dtype=torch.long)
        self.item_start_sets = {k: frozenset(v) for k, v in ends.items()}
        # what wrap-up holds back (decoder.Decoder._wrap_up_members): the tokens that start
        # another member of an object (a ","), and those that start an item of an array
        # just opened (whatever does not end it: "]")
        lead = [b.lstrip(b" \t\n\r")[:1] for b in self.token_bytes]
        self.comma_ids = torch.tensor([i for i, c in enumerate(lead) if c == b","],
                                      dtype=torch.long)
        self.not_array_end_ids = torch.tensor([i for i, c in enumerate(lead) if c != b"]"],
                                              dtype=torch.long)
        self.bitmask = torch.full((self.cfg.max_batch, (self.vocab_size + 31) // 32), -1,
                                  dtype=torch.int32)
        self.apply_mask = mask_applier()

    def engine(self, name: str) -> GrammarConstraint:
        if name not in self.engines:
            self.engines[name] = create_constraint(
                name, self.tok, grammar_cache=self.grammar_cache,
                compile_timeout_s=self.cfg.compile_timeout_s)
        return self.engines[name]

    def json_ctrl_mask(self, whitespace: str) -> torch.Tensor:
        """Bitmask row allowing every token without a byte JSON forbids raw (built once)."""
        import torch

        mask = self._ctrl_masks.get(whitespace)
        if mask is None:
            forbidden = JSON_FORBIDDEN_BYTES.get(whitespace, JSON_FORBIDDEN_BYTES["any"])
            allowed = torch.tensor([not forbidden.intersection(b) for b in self.token_bytes],
                                   dtype=torch.bool)
            words = (self.vocab_size + 31) // 32
            bits = torch.zeros(words * 32, dtype=torch.int64)
            bits[:self.vocab_size] = allowed.long()
            weights = torch.tensor([1 << i for i in range(32)], dtype=torch.int64)
            packed = (bits.view(words, 32) * weights).sum(1)
            # reinterpret the low 32 bits as int32 (bit 31 set -> negative)
            mask = torch.where(packed >= 1 << 31, packed - (1 << 32), packed).to(torch.int32)
            self._ctrl_masks[whitespace] = mask
        return mask

    def text(self, ids: list[int]) -> str:
        return b"".join(self.token_bytes[i] for i in ids).decode("utf-8", errors="replace")

    # how many tokens the model's context holds (prompt and answer)
    context_tokens: int = 1 << 30

    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        """The request's messages through the model's chat template, as token ids. A tool
        turn whose tools, written into the prompt, leave no room for the answer shows less
        of each tool (:data:`~structgen.schema.toolset.PROMPT_DETAILS`: without
        descriptions, then without types, then names only; the grammar holds the full
        schemas whatever the prompt shows)."""
        for detail in PROMPT_DETAILS:
            ids = self.render_ids(request, detail)
            if request.tools is None \
                    or len(ids) + request.sampling.max_tokens <= self.context_tokens:
                break
        return ids

    @abstractmethod
    def render_ids(self, request: GenerationRequest, detail: str) -> list[int]:
        """The request's messages through the model's chat template, as token ids, with
        ``detail`` of each tool in a tools prompt (:func:`chat_messages`)."""

    def answer_room(self, prompt_ids: list[int]) -> int | None:
        """The most tokens an answer to ``prompt_ids`` can hold in this sequence's own
        memory, when that bounds it (None: the batch's shared memory does, ``fits``)."""
        return None

    def fits(self, live: list[Seq], seq: Seq) -> bool:
        """Whether ``seq`` can decode beside ``live`` without running out of memory (a
        sequence alone always may: its own prompt is checked when it is tokenized)."""
        return True

    @abstractmethod
    def begin(self, seqs: list[Seq]) -> tuple[Batch, torch.Tensor]:
        """Prefill every sequence (reusing cached prompt prefixes): the batch and one row
        of logits per sequence. Records ``prefill_tokens``/``prefix_cache_hit_tokens``."""

    def close(self) -> None:  # noqa: B027 - torch frees its model by itself
        """Free the model (called when the backend shuts down)."""


def chat_messages(request: GenerationRequest, template: str | None,
                  tool_arguments: ToolArguments | None = None, detail: str = "signatures",
                  think_prompt: str = ""
                  ) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """(the messages, the ``tools`` to render them with) for a chat template.

    A reasoning request gets ``think_prompt`` when the template has no ``<think>``.

    Earlier tool calls and results go to the template as they are when it renders them
    (``tool_arguments``, as :func:`structgen.messages.tool_arguments` found), else as text
    in the Hermes layout (:func:`structgen.messages.hermes_messages`), as the model is asked
    to write its calls. A tool turn's tools go to the template when it reads a ``tools``
    variable (Qwen, Hermes, Llama 3.x templates); otherwise (SmolLM2's, the tiny test
    model's) they are written into the system prompt in the Hermes layout
    (:func:`with_tools_prompt`), whose ``<tool_call>`` tag is the trigger the ``"auto"``
    grammar waits for, one line per tool (``detail``: how much of each, see
    :func:`~structgen.schema.toolset.tools_prompt`)."""
    messages = template_messages(request.messages, tool_arguments) if tool_arguments \
        else hermes_messages(request.messages)
    if request.reasoning and not (template and "<think>" in template):
        messages = with_think_prompt(messages, think_prompt)
    turn = request.tools
    if turn is None:
        return messages, None
    if template and "tools" in template:  # the template's own rendering; a named choice
        return messages, dataclasses.replace(turn, tools=offered(turn)).openai_tools()
    return with_tools_prompt(messages, turn, detail), None


def with_think_prompt(messages: list[dict[str, Any]], prompt: str) -> list[dict[str, Any]]:
    """``messages`` with ``prompt`` (``[local] think_prompt``) at the end of the system
    message (a new system message when there is none)."""
    if not prompt:
        return messages
    if messages and messages[0]["role"] == "system":
        return [{**messages[0], "content": f"{messages[0]['content']}\n\n{prompt}"},
                *messages[1:]]
    return [{"role": "system", "content": prompt}, *messages]


def reusable_prefix(cache: OrderedDict[tuple[int, ...], Any],
                    ids: list[int]) -> tuple[Any, int]:
    """(the cached entry sharing the longest prefix with ``ids``, how many of its positions
    to reuse), or ``(None, 0)``; the entry becomes the most recently used. At least one
    prompt token is always left to run, since its logits start the answer."""
    best_key, best = None, 0
    for key in cache:
        n = common_prefix(key, ids)
        if n > best:
            best_key, best = key, n
    use = min(best, len(ids) - 1)
    if best_key is None or use <= 0:
        return None, 0
    cache.move_to_end(best_key)
    return cache[best_key], use


def common_prefix(a: tuple[int, ...] | list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def mask_applier() -> Any:
    """The bitmask → logits kernel: XGrammar's CPU kernel, or a torch fallback."""
    if importlib.util.find_spec("xgrammar") is not None:
        import xgrammar as xgr

        def apply_xgr(logits: torch.Tensor, bitmask: torch.Tensor) -> None:
            xgr.apply_token_bitmask_inplace(logits, bitmask, vocab_size=logits.shape[1])

        return apply_xgr
    import torch

    bits = torch.tensor([1 << i for i in range(31)] + [-(1 << 31)], dtype=torch.int32)

    def apply_torch(logits: torch.Tensor, bitmask: torch.Tensor) -> None:
        allowed = (bitmask.unsqueeze(-1) & bits) != 0
        allowed = allowed.view(bitmask.shape[0], -1)[:, :logits.shape[1]]
        logits.masked_fill_(~allowed, float("-inf"))

    return apply_torch
