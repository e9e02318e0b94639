"""The embedded backend: a Hugging Face causal LM on the CPU, with its own decode loop.

One worker thread owns the model. ``agenerate`` calls from any number of asyncio tasks are
queued; the worker gathers what is waiting (up to ``[local] max_batch``) and decodes those
sequences together, one forward pass per step for the whole batch, each with its own
grammar matcher. Per step and sequence:

    fill bitmask (grammar engine) → mask logits → greedy / seeded top-p sample
    → consume token → forced tokens (fast-forward) → feed token + forced tokens in ONE pass

Prompts are prefilled against a small LRU of KV caches keyed by token prefix, so a long
system prompt shared by many requests is computed once.
"""

from __future__ import annotations

import asyncio
import atexit
import codecs
import concurrent.futures
import importlib
import importlib.util
import inspect
import queue
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from structgen.backends.base import BackendBase, Capabilities, GenerationRequest, GenerationResult
from structgen.constrain.base import (
    ENGINES,
    ConstraintOptions,
    GrammarConstraint,
    Matcher,
    TokenizerData,
    create_constraint,
)
from structgen.errors import BackendError, BackendTimeout, BackendUnavailable, StructgenError
from structgen.grammar_cache import default_grammar_cache

if TYPE_CHECKING:
    import torch

    from structgen.config import Config, LocalConfig
    from structgen.grammar_cache import GrammarCache

WHITESPACE_BYTES = frozenset(b" \t\n\r")
# Bytes JSON never allows raw (RFC 8259: control characters must be escaped in strings);
# "any" whitespace mode still needs tab, LF and CR between tokens.
JSON_FORBIDDEN_BYTES = {"compact": frozenset(range(0x20)),
                        "any": frozenset(range(0x20)) - frozenset(b"\t\n\r")}
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
GATHER_WINDOW_S = 0.005  # how long the worker waits for concurrent requests to join a batch


def _engine_class(engine: str) -> type[GrammarConstraint]:
    module_name, _, cls_name = ENGINES[engine].partition(":")
    return getattr(importlib.import_module(module_name), cls_name)


@dataclass
class _Seq:
    """One request in flight inside the worker."""

    request: GenerationRequest
    future: concurrent.futures.Future[GenerationResult]
    start: float
    prompt_ids: list[int] = field(default_factory=list)
    matcher: Matcher | None = None
    generator: torch.Generator | None = None
    out_ids: list[int] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)
    ws_run: int = 0
    ctrl_mask: torch.Tensor | None = None  # allowed-token row ANDed into the grammar mask
    on_text: Callable[[str | None], None] | None = None  # streaming: chunk, then None
    emitted: int = 0  # tokens already streamed
    utf8: Any = None  # incremental decoder for streamed chunks
    finish: str | None = None
    ttft: float | None = None
    stats: dict[str, int] = field(default_factory=lambda: {
        "forward_passes": 0, "ff_tokens": 0, "prefill_tokens": 0,
        "prefix_cache_hit_tokens": 0, "batch_size": 1})


class _Runtime:
    """A loaded model with everything derived from it (tokenizer data, engines, caches)."""

    def __init__(self, ref: str, cfg: LocalConfig, grammar_cache: GrammarCache) -> None:
        import torch

        from structgen.models import load_model

        self.cfg = cfg
        self.grammar_cache = grammar_cache
        self.model, self.tokenizer, self.ref = load_model(
            ref if ref != "default" else None, cache_dir=cfg.model_cache_dir, dtype=cfg.dtype,
            device=cfg.device)
        self.name = self.ref.rstrip("/").rsplit("/", 1)[-1]
        self.vocab_size = int(self.model.get_output_embeddings().weight.shape[0])
        eos = self.model.generation_config.eos_token_id
        eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in eos_ids:
            eos_ids.append(self.tokenizer.eos_token_id)
        if not eos_ids:
            raise BackendUnavailable(f"model {self.ref} has no end-of-sequence token", "local")
        self.eos_ids = frozenset(eos_ids)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None \
            else eos_ids[0]
        self.tok = TokenizerData(self.tokenizer, self.vocab_size, tuple(eos_ids))
        self.token_bytes = self.tok.token_bytes()
        self.engines: dict[str, GrammarConstraint] = {}
        self.ws_ids = torch.tensor(
            [i for i, b in enumerate(self.token_bytes) if b and set(b) <= WHITESPACE_BYTES],
            dtype=torch.long)
        self.bitmask = torch.full((cfg.max_batch, (self.vocab_size + 31) // 32), -1,
                                  dtype=torch.int32)
        self.prefix_cache: OrderedDict[tuple[int, ...], Any] = OrderedDict()
        self._ctrl_masks: dict[str, torch.Tensor] = {}
        params = inspect.signature(self.model.forward).parameters
        # transformers 5.x renamed past_key_values to cache
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        self.forward_passes = 0
        self._apply_mask = _mask_applier()

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

    # Prompt ---------------------------------------------------------------------------
    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        messages = [dict(m) for m in request.messages]
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                      add_generation_prompt=True)
        else:  # a base model: plain concatenation
            text = "\n\n".join(str(m["content"]) for m in messages) + "\n"
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    # KV cache helpers -------------------------------------------------------------------
    def new_cache(self) -> Any:
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    def copy_cache(self, cache: Any, length: int) -> Any:
        """A copy of the first ``length`` positions of a batch-of-1 cache."""
        out = self.new_cache()
        for i, layer in enumerate(cache.layers):
            out.update(layer.keys[:, :, :length].clone(), layer.values[:, :, :length].clone(), i)
        return out

    def forward(self, input_ids: torch.Tensor, cache: Any, attention_mask: Any = None,
                position_ids: Any = None) -> torch.Tensor:
        self.forward_passes += 1
        kwargs = {self.cache_kw: cache}
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids, use_cache=True, logits_to_keep=1, **kwargs)
        return out.logits[:, -1, :].float()

    def prefill(self, seq: _Seq) -> tuple[Any, torch.Tensor]:
        """KV cache + last logits for the prompt, reusing the longest cached prefix."""
        import torch

        ids = seq.prompt_ids
        best_key, best = None, 0
        for key in self.prefix_cache:
            n = _common_prefix(key, ids)
            if n > best:
                best_key, best = key, n
        use = min(best, len(ids) - 1)  # at least one token must run to get logits
        if best_key is not None and use > 0:
            self.prefix_cache.move_to_end(best_key)
            cache = self.copy_cache(self.prefix_cache[best_key], use)
        else:
            use, cache = 0, self.new_cache()
        logits = self.forward(torch.tensor([ids[use:]]), cache)
        seq.stats["prefill_tokens"] = len(ids) - use
        seq.stats["prefix_cache_hit_tokens"] = use
        seq.stats["forward_passes"] += 1
        if self.cfg.prefix_cache_entries > 0:
            self.prefix_cache[tuple(ids)] = self.copy_cache(cache, len(ids))
            self.prefix_cache.move_to_end(tuple(ids))
            while len(self.prefix_cache) > self.cfg.prefix_cache_entries:
                self.prefix_cache.popitem(last=False)
        return cache, logits


def _common_prefix(a: tuple[int, ...], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _mask_applier() -> Any:
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


class LocalBackend(BackendBase):
    """In-process constrained decoding on the CPU (the default backend).

    >>> backend = LocalBackend(Config())  # doctest: +SKIP
    >>> backend.generate(engine.build_request("Fix app.py", Intent)).text  # doctest: +SKIP
    """

    name = "local"

    def __init__(self, config: Config) -> None:
        self.config = config
        self.cfg = config.local
        self._runtimes: dict[str, _Runtime] = {}
        self._queue: queue.Queue[_Seq | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        # set while shutting down: the worker ends sequences in flight instead of finishing
        # them, so interpreter exit never waits on (or kills) a thread inside torch
        self._closing = threading.Event()
        atexit.register(_shutdown_at_exit, weakref.ref(self))

    # Protocol -------------------------------------------------------------------------
    def capabilities(self) -> Capabilities:
        engine = _engine_class(self.cfg.engine)
        kinds = {"json", "regex", "choice", "grammar"}
        notes = list(engine.notes)
        if engine.name == "outlines":
            kinds.discard("grammar")
        return Capabilities(
            output_kinds=frozenset(kinds),  # type: ignore[arg-type]
            json_keywords=engine.json_keywords, streaming=True,
            reasoning=engine.supports_reasoning, batching=True, notes=tuple(notes))

    async def agenerate(self, request: GenerationRequest) -> GenerationResult:
        future: concurrent.futures.Future[GenerationResult] = concurrent.futures.Future()
        self._ensure_worker()
        self._queue.put(_Seq(request, future, time.perf_counter()))
        return await asyncio.wrap_future(future)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[str]:
        """Yield text chunks as the worker produces tokens (fast-forwarded runs arrive as one
        chunk). Reasoning and stop-string requests are post-processed once the text is
        complete, so they arrive as one chunk at the end."""
        if request.reasoning or (request.output is None and request.sampling.stop):
            result = await self.agenerate(request)
            yield result.text
            return
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[str | None] = asyncio.Queue()

        def push(chunk: str | None) -> None:
            loop.call_soon_threadsafe(chunks.put_nowait, chunk)

        future: concurrent.futures.Future[GenerationResult] = concurrent.futures.Future()
        seq = _Seq(request, future, time.perf_counter(), on_text=push,
                   utf8=codecs.getincrementaldecoder("utf-8")(errors="replace"))
        self._ensure_worker()
        self._queue.put(seq)
        while (chunk := await chunks.get()) is not None:
            yield chunk
        await asyncio.wrap_future(future)  # raises the request's error, if any

    async def health(self) -> bool:
        try:
            await asyncio.to_thread(self.runtime, None)
        except StructgenError:
            return False
        return True

    async def aclose(self) -> None:
        await asyncio.to_thread(self.shutdown)

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Stop the worker: requests in flight fail with BackendUnavailable."""
        worker = self._worker
        if worker is not None and worker.is_alive():
            self._closing.set()
            self._queue.put(None)
            worker.join(timeout_s)
        self._worker = None

    # Model ------------------------------------------------------------------------------
    def runtime(self, model: str | None) -> _Runtime:
        """Load (once) the model a request asks for; ``None`` = the configured default."""
        ref = model or self.cfg.model or "default"
        with self._load_lock:
            if ref not in self._runtimes:
                if importlib.util.find_spec("torch") is None or \
                        importlib.util.find_spec("transformers") is None:
                    raise BackendUnavailable(
                        "the embedded backend needs torch and transformers: "
                        "pip install 'structgen[local]'", self.name)
                import torch

                if self.cfg.threads:
                    torch.set_num_threads(self.cfg.threads)
                else:
                    # more than 4 intra-op threads only add synchronisation cost for
                    # a small model decoding one token per step
                    torch.set_num_threads(min(4, torch.get_num_threads()))
                self._runtimes[ref] = _Runtime(ref, self.cfg,
                                               default_grammar_cache(self.config.cache))
            return self._runtimes[ref]

    @property
    def forward_passes(self) -> int:
        """Forward passes run so far, over all models (for tests and benchmarks)."""
        return sum(rt.forward_passes for rt in self._runtimes.values())

    # Worker -------------------------------------------------------------------------------
    def _ensure_worker(self) -> None:
        with self._lock:
            if self._worker is None or not self._worker.is_alive():
                self._closing.clear()
                self._worker = threading.Thread(target=self._work, name="structgen-local",
                                                daemon=True)
                self._worker.start()

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < self.cfg.max_batch:
                try:
                    nxt = self._queue.get(timeout=GATHER_WINDOW_S)
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            groups: dict[str | None, list[_Seq]] = {}
            for seq in batch:
                groups.setdefault(seq.request.model or self.cfg.model, []).append(seq)
            for model, seqs in groups.items():
                self._run_group(model, seqs)
            if stop:
                return

    def _run_group(self, model: str | None, seqs: list[_Seq]) -> None:
        try:
            rt = self.runtime(model)
        except BaseException as exc:
            for seq in seqs:
                _fail(seq, exc)
            return
        try:
            _Decoder(rt, self.cfg, self._closing).run(seqs)
        except BaseException as exc:  # never leave a caller waiting
            for seq in seqs:
                _fail(seq, exc)


def _shutdown_at_exit(ref: weakref.ref[LocalBackend]) -> None:
    backend = ref()
    if backend is not None:
        backend.shutdown(timeout_s=5.0)


def _fail(seq: _Seq, exc: BaseException) -> None:
    if seq.future.done():
        return
    if not isinstance(exc, StructgenError):
        exc = BackendError(f"{type(exc).__name__}: {exc}", "local")
    seq.future.set_exception(exc)
    if seq.on_text is not None:
        seq.on_text(None)


class _Decoder:
    """Decodes one batch of sequences to completion."""

    def __init__(self, rt: _Runtime, cfg: LocalConfig, closing: threading.Event) -> None:
        self.rt = rt
        self.cfg = cfg
        self.closing = closing

    def setup(self, seq: _Seq) -> None:
        import torch

        req = seq.request
        seq.prompt_ids = self.rt.prompt_ids(req)
        if req.output is not None:
            options = ConstraintOptions(whitespace=req.whitespace or self.cfg.whitespace,
                                        max_whitespace=self.cfg.max_whitespace,
                                        reasoning=req.reasoning)
            engine = self.rt.engine(self.cfg.engine)
            seq.matcher = engine.matcher(req.output, options)
            if seq.matcher.relaxed:
                seq.stats["relaxed"] = list(seq.matcher.relaxed)  # type: ignore[assignment]
            if req.output.kind == "json" and not engine.forbids_json_control_chars:
                seq.ctrl_mask = self.rt.json_ctrl_mask(options.whitespace)
        if req.sampling.temperature > 0:
            seq.generator = torch.Generator()
            seq.generator.manual_seed(req.sampling.seed if req.sampling.seed is not None
                                      else int(time.time_ns() % (2**63)))

    def run(self, seqs: list[_Seq]) -> None:
        import torch

        with torch.inference_mode():
            self._run(seqs)

    def _run(self, seqs: list[_Seq]) -> None:
        import torch

        rt = self.rt
        live: list[_Seq] = []
        caches: list[Any] = []
        rows: list[torch.Tensor] = []
        for seq in seqs:
            try:
                self.setup(seq)
                cache, logits = rt.prefill(seq)
            except BaseException as exc:
                _fail(seq, exc)
                continue
            live.append(seq)
            caches.append(cache)
            rows.append(logits)
        if not live:
            return
        for seq in live:
            seq.stats["batch_size"] = len(live)
        cache, mask, valid = self._merge(caches)
        logits = torch.cat(rows, 0)
        while True:
            self._choose(live, logits)
            keep = [i for i, s in enumerate(live) if s.finish is None]
            for s in live:
                if s.finish is not None:
                    self._finish(s)
            if not keep:
                return
            if len(keep) < len(live):
                idx = torch.tensor(keep)
                cache.batch_select_indices(idx)
                if mask is not None:
                    mask, valid = mask[idx], valid[idx]
                live = [live[i] for i in keep]
            logits, mask, valid = self._step(live, cache, mask, valid)

    def _merge(self, caches: list[Any]) -> tuple[Any, Any, Any]:
        """One batch cache from per-sequence caches, left-padded, with its attention mask."""
        import torch
        import torch.nn.functional as F

        if len(caches) == 1:
            return caches[0], None, None
        lengths = [c.get_seq_length() for c in caches]
        longest = max(lengths)
        merged = self.rt.new_cache()
        for layer in range(len(caches[0].layers)):
            ks = [F.pad(c.layers[layer].keys, (0, 0, longest - n, 0))
                  for c, n in zip(caches, lengths, strict=True)]
            vs = [F.pad(c.layers[layer].values, (0, 0, longest - n, 0))
                  for c, n in zip(caches, lengths, strict=True)]
            merged.update(torch.cat(ks, 0), torch.cat(vs, 0), layer)
        mask = torch.zeros((len(caches), longest), dtype=torch.long)
        for i, n in enumerate(lengths):
            mask[i, longest - n:] = 1
        return merged, mask, torch.tensor(lengths)

    def _choose(self, live: list[_Seq], logits: torch.Tensor) -> None:
        """Pick each live sequence's next token and queue what the next pass feeds."""
        import torch

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
            rt._apply_mask(logits, bitmask)
        for i, s in enumerate(live):
            if s.ws_run >= self.cfg.max_whitespace and s.request.output is not None \
                    and s.request.output.kind == "json" and len(rt.ws_ids):
                # runaway-whitespace guard: no more whitespace tokens unless nothing else fits
                saved = logits[i, rt.ws_ids].clone()
                logits[i, rt.ws_ids] = float("-inf")
                if not torch.isfinite(logits[i]).any():
                    logits[i, rt.ws_ids] = saved
        greedy = logits.argmax(-1).tolist()
        now = time.perf_counter()
        for i, s in enumerate(live):
            sp = s.request.sampling
            tok = greedy[i] if s.generator is None else _sample(logits[i], sp.temperature,
                                                                 sp.top_p, s.generator)
            if s.ttft is None:
                s.ttft = now - s.start
            if s.matcher is not None and logits[i, tok].item() == float("-inf"):
                raise BackendError(f"the grammar allows no token here: {s.matcher.error()}",
                                   "local")
            self._advance(s, tok)

    def _advance(self, s: _Seq, tok: int) -> None:
        rt = self.rt
        if tok in rt.eos_ids:
            s.finish = "stop"
            return
        m = s.matcher
        if m is not None and not m.consume(tok):
            raise BackendError(f"the grammar rejected token {tok}: {m.error()}", "local")
        s.out_ids.append(tok)
        self._track_whitespace(s, tok)
        s.pending = [tok]
        if self.closing.is_set():
            s.finish = "closed"
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
                s.pending.extend(forced)
                s.stats["ff_tokens"] += len(forced)
                for t in forced:
                    self._track_whitespace(s, t)
                if m.is_finished():
                    s.finish = "stop"
                elif len(s.out_ids) >= s.request.sampling.max_tokens:
                    s.finish = "length"
        if s.on_text is not None:
            self._emit(s)

    def _emit(self, s: _Seq) -> None:
        """Stream the bytes of tokens produced since the last call (whole characters only)."""
        chunk = s.utf8.decode(b"".join(self.rt.token_bytes[i] for i in s.out_ids[s.emitted:]))
        s.emitted = len(s.out_ids)
        if chunk and s.on_text is not None:
            s.on_text(chunk)

    def _track_whitespace(self, s: _Seq, tok: int) -> None:
        b = self.rt.token_bytes[tok]
        if not b:
            return
        stripped = b.rstrip(b" \t\n\r")
        s.ws_run = s.ws_run + len(b) if not stripped else len(b) - len(stripped)

    def _hit_stop(self, s: _Seq) -> bool:
        text = self._text(s.out_ids)
        for stop in s.request.sampling.stop:
            pos = text.find(stop)
            if pos >= 0:
                s.stats["stop_at_char"] = pos
                return True
        return False

    def _step(self, live: list[_Seq], cache: Any, mask: Any, valid: Any) -> tuple[Any, Any, Any]:
        """Feed every live sequence's pending tokens; returns next logits, mask, lengths."""
        import torch

        rt = self.rt
        k = max(len(s.pending) for s in live)
        if len(live) == 1 and mask is None:
            s = live[0]
            ids = s.pending
            if self.cfg.fast_forward:
                logits = rt.forward(torch.tensor([ids]), cache)
                s.stats["forward_passes"] += 1
            else:
                for t in ids:  # one token per pass: the reference path fast-forward beats
                    logits = rt.forward(torch.tensor([[t]]), cache)
                    s.stats["forward_passes"] += 1
            return logits, None, None
        b = len(live)
        input_ids = torch.full((b, k), rt.pad_id, dtype=torch.long)
        new_mask = torch.zeros((b, k), dtype=torch.long)
        positions = torch.zeros((b, k), dtype=torch.long)
        for i, s in enumerate(live):
            n = len(s.pending)
            input_ids[i, k - n:] = torch.tensor(s.pending)
            new_mask[i, k - n:] = 1
            start = int(valid[i])
            positions[i, k - n:] = torch.arange(start, start + n)
            s.stats["forward_passes"] += 1 if self.cfg.fast_forward else n
        if mask is None:  # a batch that started as one sequence never gets here
            raise AssertionError("batched step without an attention mask")
        full = torch.cat([mask, new_mask], 1)
        if self.cfg.fast_forward:
            logits = rt.forward(input_ids, cache, full, positions)
        else:
            base = mask.shape[1]
            for j in range(k):
                logits = rt.forward(input_ids[:, j:j + 1], cache, full[:, :base + j + 1],
                                    positions[:, j:j + 1])
        valid = valid + new_mask.sum(1)
        return logits, full, valid

    def _text(self, ids: list[int]) -> str:
        return b"".join(self.rt.token_bytes[i] for i in ids).decode("utf-8", errors="replace")

    def _finish(self, s: _Seq) -> None:
        if s.future.done():
            return
        if s.finish in ("timeout", "closed"):
            _fail(s, BackendTimeout("deadline passed while decoding", "local")
                  if s.finish == "timeout" else
                  BackendUnavailable("the local backend was shut down mid-request", "local"))
            return
        text = self._text(s.out_ids)
        if "stop_at_char" in s.stats:
            text = text[:s.stats.pop("stop_at_char")]
        reasoning = None
        if s.request.reasoning and s.matcher is not None:
            head, sep, tail = text.partition(THINK_CLOSE)
            if sep:
                reasoning = head.removeprefix(THINK_OPEN)
                text = tail.lstrip("\n")
        stats: dict[str, Any] = dict(s.stats)
        stats["generated_tokens"] = len(s.out_ids)
        stats["engine"] = self.cfg.engine if s.matcher is not None else "none"
        stats["finish_reason"] = s.finish or "stop"
        s.future.set_result(GenerationResult(
            text=text, backend="local", model=self.rt.name, finish_reason=s.finish or "stop",
            reasoning_text=reasoning, prompt_tokens=len(s.prompt_ids),
            completion_tokens=len(s.out_ids), latency_s=time.perf_counter() - s.start,
            ttft_s=s.ttft, constrained=s.matcher is not None, stats=stats))
        if s.on_text is not None:
            self._emit(s)
            tail = s.utf8.decode(b"", final=True)
            if tail:
                s.on_text(tail)
            s.on_text(None)


def _sample(logits: torch.Tensor, temperature: float, top_p: float,
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
