"""The llama.cpp runtime (``[local] runtime = "llamacpp"``, the default): GGUF models on
llama.cpp's quantised CPU kernels, through llama-cpp-python's low-level C API.

structgen keeps its own decode loop on top: llama.cpp only runs forward passes. One context
holds the sequences in flight in a unified KV cache, so

- a batch is one ``llama_decode`` call carrying each live sequence's pending tokens (the
  sampled one plus the grammar's forced tokens) under its own sequence id;
- a prompt prefix shared with an earlier request (an agent's long system prompt, a chat's
  history) is not recomputed: after its prefill, a prompt's KV state is copied out to host
  memory (``llama_state_seq_get_data``, ~23 kB a token for SmolLM2-135M), and a later
  request sharing a prefix with it restores that state into its own sequence
  (``llama_state_seq_set_data``) and drops the cells past the common prefix.

Cached prompts live outside the KV cache on purpose. Kept as cells of their own (the first
design), they made every forward pass attend over them too: with a unified cache llama.cpp
computes attention over every used cell and masks the others out. Measured here with 4,000
cells of cached prompts: prefill 174 -> 128 tok/s, decode 46 -> 42 tok/s. A copy in and out
of host memory costs a few milliseconds.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import itertools
import json
import logging
import os
import sys
import threading
import time
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from structgen.backends.base import GenerationRequest
from structgen.backends.local.models import DEFAULT_MODEL_NAME, resolve_gguf
from structgen.backends.local.prefix_store import PrefixStore
from structgen.backends.local.runtime import (
    Batch,
    Runtime,
    Seq,
    chat_messages,
    common_prefix,
    reusable_prefix,
)
from structgen.constrain.base import TokenizerData
from structgen.errors import BackendError, BackendUnavailable
from structgen.messages import ToolArguments, tool_arguments

if TYPE_CHECKING:
    import torch

    from structgen.config import LocalConfig
    from structgen.constrain.grammar_cache import GrammarCache

log = logging.getLogger(__name__)
_INIT = threading.Lock()
_initialised = False
# with [local] decode_threads set, a llama_decode call of at most this many tokens runs on
# decode_threads, a longer one on threads: a prefill, or a step of several sequences at
# once. Measured on 2 cores, SmolLM2-135M, quiet, passive OpenMP waiting, 16 requests at
# max_batch 8 (benchmarks/step_profile.py): calls of 1-4 tokens took the same on 1 and 2
# threads (22.7 / 21.2 ms, 63.1 / 59.3 ms), calls of 5-8 tokens 108.9 ms on 1 and 91.6 on
# 2, of 9-16 tokens 172.5 and 136.4. Unset (the default), ThreadChooser learns each size's.
STEP_TOKENS = 4
# KV cells a sequence keeps free beyond its prompt and budget: one step's forced tokens
STEP_SLACK = 16
# A cached prompt state is restored only when it gives more than this many tokens beyond
# the prefix a live sequence already holds (which is shared instead): prefilling a few
# dozen tokens costs less than every later step attending over a second copy of the prefix
SHARE_SLACK = 32


def _llama() -> Any:
    """The llama_cpp C API, initialised once, with its log routed to Python logging."""
    global _initialised
    # (OMP_WAIT_POLICY is set in structgen/__init__.py, before any OpenMP library loads)
    try:
        import llama_cpp
    except ImportError as exc:
        raise BackendUnavailable(
            f"the llama.cpp runtime needs llama-cpp-python ({exc}); run `make install`, or "
            "set [local] runtime = \"transformers\"", "local") from None
    with _INIT:
        if not _initialised:
            # llama-cpp-python prints every llama.cpp log line unless its logger says not to
            logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
            llama_cpp.llama_backend_init()
            _initialised = True
    return llama_cpp


# Loaded models live as long as the process: grammars compiled for a model's tokenizer stay
# in the process-wide grammar cache, and llguidance's tokenizer calls back into the model's
# vocabulary, so freeing a model would leave those grammars pointing at freed memory. The
# weights are memory-mapped, so a model no runtime uses costs address space, not RAM; a
# second runtime on the same file (a reload after shutdown) starts in milliseconds.
_MODELS: dict[str, Any] = {}
_TOKENIZERS: dict[str, LlamaCppTokenizerData] = {}


def _amx_build(lc: Any) -> bool:
    """Whether this llama.cpp build runs matrix products on Intel AMX tiles."""
    info = lc.llama_print_system_info()
    return b"AMX_INT8 = 1" in (info if isinstance(info, bytes) else str(info).encode())


def _load_model(lc: Any, path: Path) -> Any:
    key = str(path.resolve())
    with _INIT:
        model = _MODELS.get(key)
        if model is None:
            params = lc.llama_model_default_params()
            if _amx_build(lc):
                # llama.cpp's AMX weight buffers crash in ggml_backend_amx_mul_mat on
                # Sapphire Rapids-class CPUs (llama.cpp#20824; here: SIGSEGV in a
                # 1,000-token prefill of SmolLM2). `make install` builds without AMX; a
                # build that has it loads weights without the extra (AMX) buffer types
                log.warning("this llama.cpp build uses AMX, which crashes on some CPUs "
                            "(llama.cpp#20824): loading %s without AMX weight buffers", path)
                params.use_extra_bufts = False
            model = lc.llama_model_load_from_file(key.encode(), params)
            if not model:
                raise BackendUnavailable(f"llama.cpp could not load {path} (a GGUF of an "
                                         "architecture this llama.cpp build does not know, or "
                                         "a damaged file)", "local")
            _MODELS[key] = model
    return model


def _tokenizer_data(lc: Any, model: Any, vocab: Any, vocab_size: int,
                    eos: tuple[int, ...]) -> LlamaCppTokenizerData:
    key = f"{ctypes.cast(model, ctypes.c_void_p).value}"
    with _INIT:
        tok = _TOKENIZERS.get(key)
        if tok is None:
            tok = _TOKENIZERS[key] = LlamaCppTokenizerData(lc, vocab, vocab_size, eos)
    return tok


class LlamaCppTokenizerData(TokenizerData):
    """The tokenizer as llama.cpp has it (from the GGUF), for every grammar engine."""

    def __init__(self, lc: Any, vocab: Any, vocab_size: int, eos: tuple[int, ...]) -> None:
        super().__init__(None, vocab_size, eos)
        self._lc = lc
        self._vocab = vocab

    def ll_tokenizer(self) -> Any:
        cached = getattr(self, "_ll", None)
        if cached is None:
            from llguidance.llamacpp import lltokenizer_from_vocab

            with warnings.catch_warnings():  # the helper calls a since-renamed llama_cpp API
                warnings.simplefilter("ignore", DeprecationWarning)
                cached = lltokenizer_from_vocab(self._vocab, n_vocab=self.vocab_size,
                                                eos_token=list(self.eos_token_ids))
            self._ll = cached
        return cached

    def encode(self, text: str) -> list[int]:
        return tokenize(self._lc, self._vocab, text.encode(), add_special=False,
                        parse_special=False)

    def xgr_tokenizer_info(self) -> Any:
        import xgrammar as xgr

        return xgr.TokenizerInfo(self.token_bytes(), vocab_type=xgr.VocabType.RAW,
                                 vocab_size=self.vocab_size,
                                 stop_token_ids=list(self.eos_token_ids))

    @property
    def hash(self) -> str:
        """Identity of the vocabulary (every token's bytes, the end tokens) for the
        grammar-cache key: two GGUFs with one tokenizer share compiled grammars."""
        cached = getattr(self, "_hash", None)
        if cached is None:
            h = hashlib.sha256(b"\0".join(self.token_bytes()))
            h.update(json.dumps([self.vocab_size, list(self.eos_token_ids)]).encode())
            cached = self._hash = "gguf-" + h.hexdigest()[:20]
        return cached


def tokenize(lc: Any, vocab: Any, data: bytes, *, add_special: bool,
             parse_special: bool) -> list[int]:
    n_max = len(data) + 16
    buf = (lc.llama_token * n_max)()
    n = lc.llama_tokenize(vocab, data, len(data), buf, n_max, add_special, parse_special)
    if n < 0:  # the buffer was too small: -n is the size needed
        n_max = -n
        buf = (lc.llama_token * n_max)()
        n = lc.llama_tokenize(vocab, data, len(data), buf, n_max, add_special, parse_special)
    if n < 0:
        raise BackendError("llama.cpp could not tokenize the prompt", "local")
    return list(buf[:n])


class ThreadChooser:
    """The thread count (1 or ``many``) for each ``llama_decode`` call, learned from the
    calls themselves: per call size (1 token, 2-4, 5-16, 17-64, more), the time per token
    each count took lately (an exponential average), and the faster one is used. The other
    is tried again every :attr:`EXPLORE` calls of that size, so a load that comes or goes
    moves the choice within a few seconds.

    Why learned, and per size: with OpenMP threads that spin briefly at their barriers
    (``GOMP_SPINCOUNT``, structgen/__init__.py), SmolLM2-135M on 2 idle cores steps one
    token in 11 ms on 2 threads and 15.5 on 1; with one busy process beside it 2 threads
    took 21-28 ms and 1 thread 15.6 (a thread waits for its preempted partner), and under
    passive waiting a one-token step is no faster on 2. Long calls (a prefill) gain from
    the second thread in all of these. No fixed split is right on every machine and load.
    """

    BOUNDS = (1, 4, 16, 64)  # a call of more tokens than the last bound is the last size
    EXPLORE = 32  # calls of one size between tries of the slower count
    ALPHA = 0.4  # weight of the newest time in the average

    def __init__(self, many: int) -> None:
        self.many = many
        self.per_token: dict[tuple[int, int], float] = {}  # (size, threads) -> seconds
        self.calls = [0] * (len(self.BOUNDS) + 1)
        self.tried: dict[tuple[int, int], int] = {}  # (size, threads) -> call number

    def size(self, tokens: int) -> int:
        return next((i for i, bound in enumerate(self.BOUNDS) if tokens <= bound),
                    len(self.BOUNDS))

    def pick(self, tokens: int) -> int:
        """The thread count for a call of ``tokens`` tokens."""
        if self.many <= 1:
            return 1
        size = self.size(tokens)
        self.calls[size] += 1
        counts = (self.many, 1)
        for n in counts:  # each count measured once first
            if (size, n) not in self.per_token:
                return n
        best = min(counts, key=lambda n: self.per_token[size, n])
        other = 1 if best == self.many else self.many
        if self.calls[size] - self.tried.get((size, other), 0) >= self.EXPLORE:
            return other
        return best

    def record(self, tokens: int, threads: int, seconds: float) -> None:
        """What a call of ``tokens`` tokens on ``threads`` threads took."""
        if self.many <= 1:
            return
        key = (self.size(tokens), threads)
        t = seconds / max(1, tokens)
        old = self.per_token.get(key)
        self.per_token[key] = t if old is None else old + self.ALPHA * (t - old)
        self.tried[key] = self.calls[key[0]]


class LlamaCppRuntime(Runtime):
    kind = "llamacpp"

    def __init__(self, ref: str, cfg: LocalConfig, grammar_cache: GrammarCache) -> None:
        super().__init__(cfg, grammar_cache)
        lc = self.lc = _llama()
        start = time.perf_counter()
        path = resolve_gguf(None if ref == "default" else ref)
        self.ref = str(path)
        self.model = _load_model(lc, path)
        self.vocab = lc.llama_model_get_vocab(self.model)
        self.vocab_size = int(lc.llama_vocab_n_tokens(self.vocab))
        if ref == "default":
            self.name = DEFAULT_MODEL_NAME
        elif ref.startswith("ollama:"):
            self.name = ref
        else:
            self.name = _meta(lc, self.model, "general.name") or path.stem
        self.n_seq = cfg.max_batch
        # per_sequence: a KV stream of its own for each sequence id, so a row attends
        # over its own cells only (a unified cache makes each row of a step attend over
        # every cell in use: beside 3 other 650-token prompts, a one-token step took 22
        # ms against 13 alone); a prefix another live sequence holds is then copied with
        # its stream instead of shared
        self.streams = cfg.kv_cache == "per_sequence"
        cparams = lc.llama_context_default_params()
        cparams.n_ctx = cfg.context_size
        cparams.n_batch = cparams.n_ubatch = 512
        cparams.n_seq_max = self.n_seq
        threads = cfg.threads or max(1, min(os.cpu_count() or 1, 8))
        cparams.n_threads = cparams.n_threads_batch = threads
        cparams.kv_unified = not self.streams
        # llama.cpp's default is "auto", which turns flash attention on for the CPU: slower
        # decoding here (docs/embedded.md), and off in llama-cpp-python and Ollama alike
        cparams.flash_attn_type = (lc.LLAMA_FLASH_ATTN_TYPE_ENABLED if cfg.flash_attn
                                   else lc.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        self.flash_attn_type = int(cparams.flash_attn_type)
        cparams.no_perf = True
        self.ctx = lc.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise BackendUnavailable(f"llama.cpp could not create a context for {path} "
                                     f"(context_size={cfg.context_size})", "local")
        self.mem = lc.llama_get_memory(self.ctx)
        # the cells one sequence may use: all of them, or its stream's
        self.context_tokens = int(lc.llama_n_ctx_seq(self.ctx)) if self.streams \
            else cfg.context_size
        self.n_batch = int(cparams.n_batch)
        self.batch = lc.llama_batch_init(self.n_batch, 0, 1)
        self.threads = self._threads_now = threads
        eos = [t for t in range(self.vocab_size) if lc.llama_vocab_is_eog(self.vocab, t)]
        if not eos:
            raise BackendUnavailable(f"model {path} has no end-of-generation token", "local")
        self.eos_ids = frozenset(eos)
        self.bos = int(lc.llama_vocab_bos(self.vocab))
        self.add_bos = bool(lc.llama_vocab_get_add_bos(self.vocab)) and self.bos >= 0
        template = lc.llama_model_chat_template(self.model, None)
        self.template = template.decode("utf-8", errors="replace") if template else None
        self.tok = _tokenizer_data(lc, self.model, self.vocab, self.vocab_size, tuple(eos))
        self.token_bytes = self.tok.token_bytes()
        self.free_ids = list(range(cfg.max_batch))
        # prompt tokens -> that prompt's KV state (llama_state_seq_get_data), LRU
        self.prefix_cache: OrderedDict[tuple[int, ...], ctypes.Array[ctypes.c_uint8]] = \
            OrderedDict()
        self.prefix_cache_bytes = 0
        self.store = self._prefix_store(path)
        self._derive()
        # a decode step's threads when set ([local] decode_threads: calls of at most
        # STEP_TOKENS tokens on it, longer ones on `threads`); unset, every call's count
        # is learned from the calls (ThreadChooser)
        self.decode_threads: int | None = cfg.decode_threads
        self.chooser = ThreadChooser(threads)
        self.load_s = time.perf_counter() - start

    def _prefix_store(self, path: Path) -> PrefixStore | None:
        """The disk layer of the prefix cache (``[local] prefix_cache_disk_mb``), in a
        directory of its own for this model file, llama.cpp build and state layout."""
        cfg = self.cfg
        if cfg.prefix_cache_disk_mb <= 0 or cfg.prefix_cache_entries <= 0 \
                or cfg.prefix_cache_mb <= 0:
            return None
        st = path.stat()
        ident = json.dumps([str(path.resolve()), st.st_size, st.st_mtime_ns,
                            self.lc.__version__, self.flash_attn_type]
                           + (["per_sequence"] if self.streams else []))
        root = Path(cfg.prefix_cache_dir).expanduser() if cfg.prefix_cache_dir else \
            Path.home() / ".cache" / "structgen" / "prefix-kv"
        return PrefixStore(root / hashlib.sha256(ident.encode()).hexdigest()[:20],
                           cfg.prefix_cache_disk_mb << 20)

    # Prompt ---------------------------------------------------------------------------
    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        ids = super().prompt_ids(request)
        if len(ids) >= self.context_tokens:  # could never decode: say so now
            raise BackendError(f"the prompt has {len(ids)} tokens: more than llama.cpp's "
                               f"context holds with an answer ({self._cells_setting()})",
                               "local")
        return ids

    def render_ids(self, request: GenerationRequest, detail: str) -> list[int]:
        messages, tools = chat_messages(request, self.template, self.tool_arguments,
                                        detail, self.cfg.think_prompt)
        if self.template:
            text = self.render(messages, tools)
        else:  # a base model: plain concatenation
            text = "\n\n".join(str(m["content"]) for m in messages) + "\n"
        data = text.encode()
        bos_in_text = self.bos >= 0 and text.startswith(self._piece(self.bos) or "\0")
        return tokenize(self.lc, self.vocab, data, add_special=self.add_bos and not bos_in_text,
                        parse_special=True)

    def render(self, messages: list[dict[str, Any]],
               tools: list[dict[str, Any]] | None = None) -> str:
        """``messages`` through the model's chat template, ready for the answer."""
        assert self.template is not None
        return render_chat_template(self.template, messages, self._piece(self.bos),
                                    self._piece(next(iter(sorted(self.eos_ids)))), tools=tools)

    @functools.cached_property
    def tool_arguments(self) -> ToolArguments | None:
        """How the model's chat template takes earlier tool calls' arguments (None: it
        does not render tool calls and results)."""
        return tool_arguments(self.render) if self.template is not None else None

    def _piece(self, token: int) -> str:
        if token < 0:
            return ""
        buf = ctypes.create_string_buffer(256)
        n = self.lc.llama_token_to_piece(self.vocab, token, buf, 256, 0, True)
        return buf.raw[:max(n, 0)].decode("utf-8", errors="replace")

    # Forward passes ----------------------------------------------------------------------
    def feed(self, items: list[tuple[int, list[int], int]],
             outs: list[int] | None = None) -> torch.Tensor:
        """Run ``(seq_id, tokens, first_position)`` items; logits of each item's last token,
        or of its last ``outs[i]`` tokens (rows in item order, positions in order).

        Items are packed into as few ``llama_decode`` calls as the batch size allows."""
        import numpy as np
        import torch

        lc, b = self.lc, self.batch
        outs = outs or [1] * len(items)
        first = list(itertools.accumulate(outs, initial=0))
        out = torch.empty((first[-1], self.vocab_size), dtype=torch.float32)
        # (output row or -1, seq id, token, position)
        flat = [(first[i] + j - (len(toks) - n) if j >= len(toks) - n else -1, sid, tok,
                 pos + j)
                for i, ((sid, toks, pos), n) in enumerate(zip(items, outs, strict=True))
                for j, tok in enumerate(toks)]
        for start in range(0, len(flat), self.n_batch):
            chunk = flat[start:start + self.n_batch]
            for k, (row, sid, tok, pos) in enumerate(chunk):
                b.token[k] = tok
                b.pos[k] = pos
                b.n_seq_id[k] = 1
                b.seq_id[k][0] = sid
                b.logits[k] = row >= 0
            b.n_tokens = len(chunk)
            self._decode()
            for k, (row, _, _, _) in enumerate(chunk):
                if row >= 0:
                    ptr = lc.llama_get_logits_ith(self.ctx, k)
                    out[row].copy_(torch.from_numpy(
                        np.ctypeslib.as_array(ptr, shape=(self.vocab_size,))))
        return out

    def _set_threads(self, n: int) -> None:
        if n != self._threads_now:
            self.lc.llama_set_n_threads(self.ctx, n, n)
            self._threads_now = n

    def _decode(self) -> None:
        self.forward_passes += 1
        tokens = int(self.batch.n_tokens)
        if self.decode_threads is not None:  # a fixed split ([local] decode_threads)
            self._set_threads(self.decode_threads if tokens <= STEP_TOKENS else self.threads)
        else:
            self._set_threads(self.chooser.pick(tokens))
        start = time.perf_counter()
        rc = self.lc.llama_decode(self.ctx, self.batch)
        if self.decode_threads is None and rc == 0:
            self.chooser.record(tokens, self._threads_now, time.perf_counter() - start)
        if rc != 0:
            raise BackendError(
                "llama.cpp has no room left in its KV cache for this batch "
                f"({self._cells_setting()})" if rc == 1 else f"llama_decode failed ({rc})",
                "local")

    def _cells_setting(self) -> str:
        cfg = self.cfg
        if self.streams:
            return (f"{self.context_tokens} tokens a sequence: [local] context_size="
                    f"{cfg.context_size} over max_batch={cfg.max_batch} KV streams, "
                    'kv_cache = "per_sequence"')
        return f"[local] context_size={cfg.context_size} tokens over all sequences in flight"

    def begin(self, seqs: list[Seq]) -> tuple[Batch, torch.Tensor]:
        """Prefill ``seqs`` as one batch whose prompts all join at once: with no token to
        wait for, each step feeds every prompt in full, and a prompt prefix that several
        share (an agent's system prompt) is computed once (``_LlamaBatch.step``)."""
        import torch

        batch = _LlamaBatch(self)
        logits = torch.empty((len(seqs), self.vocab_size), dtype=torch.float32)
        try:
            for seq in seqs:
                batch.add(seq)
            while any(s.prefill for s in seqs):
                prefilling = [i for i, s in enumerate(seqs) if s.prefill]
                rows = batch.step(seqs, fast_forward=True)
                for i in prefilling:
                    if not seqs[i].prefill:
                        logits[i] = rows[i]
        except BaseException:
            batch.close()
            raise
        return batch, logits

    def _claim(self, seq: Seq, shared: int = 0) -> tuple[int, int]:
        """A free sequence id for ``seq``, holding the longest cached prefix of its prompt
        (memory, then disk); returns the id and how many prompt tokens it already holds.

        ``shared``: prompt tokens a live sequence of the batch holds, whose KV cells
        ``seq`` will share instead (``_LlamaBatch._share``). A cached state is then
        restored only when it gives more than :data:`SHARE_SLACK` tokens beyond them: a
        restored prefix is a second copy of those cells, and every later decode step of
        the batch attends over all the cells in use (a unified cache), so 8 agent
        requests that each restored their ~580-token system prompt made every step
        attend over ~4,000 more cells than sharing it does."""
        sid = self.free_ids.pop()
        self.lc.llama_memory_seq_rm(self.mem, sid, -1, -1)
        ids = seq.prompt_ids
        floor = shared + SHARE_SLACK if shared else 0
        try:
            state, use = reusable_prefix(self.prefix_cache, ids)
            if use <= floor:
                state, use = None, 0
            from_disk = self._from_store(ids, max(use, floor))
            if from_disk is not None:
                state, use, disk_key = from_disk
                seq.stats["prefix_disk_hit_tokens"] = use
            if state is not None and not self._restore(state, sid, use):
                use = 0
                if from_disk is not None:  # refused once, refused every time: drop it
                    self._drop_prefix(disk_key)
        except BaseException:
            self.release(sid)
            raise
        seq.stats["prefill_tokens"] = len(ids) - use
        seq.stats["prefix_cache_hit_tokens"] = use
        return sid, use

    def answer_room(self, prompt_ids: list[int]) -> int | None:
        """Per-sequence KV streams: what the sequence's stream holds after its prompt (so
        a long answer is closed there, not the whole batch failed by a full stream)."""
        return self.context_tokens - len(prompt_ids) - STEP_SLACK if self.streams else None

    def fits(self, live: list[Seq], seq: Seq) -> bool:
        """Room for ``seq`` beside ``live`` when each may use its whole token budget, so
        a running sequence never meets a full cache: the others wait for room."""
        if not live:
            return True
        if self.streams:  # each in a stream of its own
            return len(live) < self.n_seq
        return len(live) < self.n_seq and sum(map(self.kv_cells, live)) \
            + self.kv_cells(seq) <= self.cfg.context_size

    def kv_cells(self, seq: Seq) -> int:
        """KV cells ``seq`` may come to hold: its prompt, its token budget and the few
        forced tokens a last step can add past it."""
        return len(seq.prompt_ids) + seq.request.sampling.max_tokens + STEP_SLACK

    def _from_store(self, ids: list[int], use: int
                    ) -> tuple[ctypes.Array[ctypes.c_uint8], int, tuple[int, ...]] | None:
        """A state from disk sharing more of ``ids`` than ``use`` tokens (what memory has),
        put into the memory cache too; None when the disk has nothing better."""
        if self.store is None:
            return None
        while True:  # a damaged entry is deleted on reading: then the next best
            key, n = self.store.best(ids)
            n = min(n, len(ids) - 1)
            if key is None or n <= use:
                return None
            data = self.store.read(key)
            if data is not None:
                break
        state = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        self._keep(key, state)
        return state, n, key

    def _drop_prefix(self, key: tuple[int, ...]) -> None:
        """Forget a stored prompt state llama.cpp would not restore (memory and disk)."""
        dropped = self.prefix_cache.pop(key, None)
        if dropped is not None:
            self.prefix_cache_bytes -= len(dropped)
        if self.store is not None:
            self.store.discard(key)

    def _restore(self, state: ctypes.Array[ctypes.c_uint8], sid: int, use: int) -> bool:
        """Put a cached prompt's KV state into ``sid`` and keep its first ``use`` positions."""
        lc = self.lc
        if not lc.llama_state_seq_set_data(self.ctx, state, len(state), sid):
            lc.llama_memory_seq_rm(self.mem, sid, -1, -1)  # no room: prefill it all
            return False
        lc.llama_memory_seq_rm(self.mem, sid, use, -1)
        return True

    def _remember(self, ids: tuple[int, ...], sid: int) -> None:
        """Copy a prompt's KV state (``sid`` holds exactly the prompt) to host memory, LRU
        within ``[local] prefix_cache_entries`` and ``prefix_cache_mb``."""
        cfg, lc = self.cfg, self.lc
        if cfg.prefix_cache_entries <= 0 or cfg.prefix_cache_mb <= 0:
            return
        if ids in self.prefix_cache:
            self.prefix_cache.move_to_end(ids)
            return
        size = int(lc.llama_state_seq_get_size(self.ctx, sid))
        limit = cfg.prefix_cache_mb << 20
        if size <= 0 or size > limit:
            return
        state = (ctypes.c_uint8 * size)()
        if int(lc.llama_state_seq_get_data(self.ctx, state, size, sid)) != size:
            return
        self._keep(ids, state)
        if self.store is not None:
            self.store.write_later(ids, bytes(state))

    def _keep(self, ids: tuple[int, ...], state: ctypes.Array[ctypes.c_uint8]) -> None:
        """Add a state to the memory cache, LRU within its entry and byte limits."""
        if ids in self.prefix_cache:
            self.prefix_cache.move_to_end(ids)
            return
        self.prefix_cache[ids] = state
        self.prefix_cache_bytes += len(state)
        while (len(self.prefix_cache) > self.cfg.prefix_cache_entries
               or self.prefix_cache_bytes > self.cfg.prefix_cache_mb << 20):
            _, old = self.prefix_cache.popitem(last=False)
            self.prefix_cache_bytes -= len(old)

    def release(self, sid: int) -> None:
        self.lc.llama_memory_seq_rm(self.mem, sid, -1, -1)
        self.free_ids.append(sid)

    def close(self) -> None:
        lc = self.lc
        if getattr(self, "ctx", None):
            lc.llama_batch_free(self.batch)
            lc.llama_free(self.ctx)
            self.ctx = None


class _LlamaBatch(Batch):
    """Sequences in one llama.cpp context, each under its own sequence id (one KV cache
    shared cell by cell: ``kv_unified``)."""

    admits = True
    drafts = True

    def __init__(self, rt: LlamaCppRuntime) -> None:
        self.rt = rt
        self.sids: list[int] = []
        self.n_past: list[int] = []  # positions each sequence's KV cells hold
        self.prompts: list[list[int]] = []

    def add(self, seq: Seq) -> None:
        sid, use = self.rt._claim(seq, self._held(seq.prompt_ids))
        self.sids.append(sid)
        self.n_past.append(use)
        self.prompts.append(seq.prompt_ids)
        seq.prefill = seq.prompt_ids[use:]

    def keep(self, indices: list[int]) -> None:
        kept = set(indices)
        for i, sid in enumerate(self.sids):
            if i not in kept:
                self.rt.release(sid)
        self.sids = [self.sids[i] for i in indices]
        self.n_past = [self.n_past[i] for i in indices]
        self.prompts = [self.prompts[i] for i in indices]

    def _prefill_items(self, live: list[Seq]) -> list[tuple[int, list[int], int]]:
        """This step's prompt chunks, first come first served: ``[local] prefill_chunk``
        tokens in all while some sequence decodes (a long prompt joins without stalling
        the others' next token), every prompt in full while none does.

        A prompt prefix that another live sequence holds is shared, not computed again
        (its cells gain this sequence's id), and a prompt waits while an earlier one is
        still computing the prefix they share: a system prompt common to several requests
        is prefilled once, however they arrive."""
        budget = self.rt.cfg.prefill_chunk if any(not s.prefill for s in live) \
            else sys.maxsize
        items = []
        for k, s in enumerate(live):
            if not s.prefill:
                continue
            self._share(k, live)
            if budget <= 0 or self._behind(k, live):
                continue
            chunk = s.prefill[:budget]
            budget -= len(chunk)
            items.append((k, chunk, self.n_past[k]))
        return items

    def _held(self, prompt: list[int]) -> int:
        """The longest prefix of ``prompt`` that a sequence of the batch holds in its KV
        cells now (at least one prompt token is left to run: its logits)."""
        best = 0
        for t, other in enumerate(self.prompts):
            held = min(self.n_past[t], len(other), len(prompt) - 1)
            if held > best:
                best = max(best, min(common_prefix(other, prompt), held))
        return best

    def _common(self, t: int, k: int) -> int:
        """Prompt positions sequence ``k`` can take from sequence ``t`` once ``t`` holds
        them (at least one of ``k``'s prompt tokens is left to run: its logits)."""
        return min(common_prefix(self.prompts[t], self.prompts[k]), len(self.prompts[k]) - 1)

    def _share(self, k: int, live: list[Seq]) -> None:
        """Give sequence ``k`` the longest prefix of its prompt another sequence holds."""
        src, best = -1, self.n_past[k]
        for t in range(len(live)):
            held = min(self.n_past[t], len(self.prompts[t]))
            if t != k and held > best:
                n = min(self._common(t, k), held)
                if n > best:
                    src, best = t, n
        if src < 0:
            return
        rt, s = self.rt, live[k]
        if rt.streams:  # llama.cpp copies whole streams: take src's, keep what k shares
            rt.lc.llama_memory_seq_cp(rt.mem, self.sids[src], self.sids[k], -1, -1)
            rt.lc.llama_memory_seq_rm(rt.mem, self.sids[k], best, -1)
        else:  # the cells gain k's id
            rt.lc.llama_memory_seq_cp(rt.mem, self.sids[src], self.sids[k], self.n_past[k],
                                      best)
        shared = best - self.n_past[k]
        self.n_past[k] = best
        s.prefill = self.prompts[k][best:]
        s.stats["prefill_tokens"] -= shared
        s.stats["prefix_shared_tokens"] = s.stats.get("prefix_shared_tokens", 0) + shared

    def _behind(self, k: int, live: list[Seq]) -> bool:
        """Whether an earlier sequence is still prefilling a prefix ``k`` will share."""
        return any(live[t].prefill and self._common(t, k) > self.n_past[k]
                   for t in range(k))

    def step(self, live: list[Seq], fast_forward: bool) -> torch.Tensor:
        import torch

        rt = self.rt
        logits = torch.zeros((len(live), rt.vocab_size), dtype=torch.float32)
        for i, s in enumerate(live):
            if s.unfed:  # drafts the last step fed and the decoder did not take
                self.n_past[i] -= s.unfed
                rt.lc.llama_memory_seq_rm(rt.mem, self.sids[i], self.n_past[i], -1)
                s.unfed = 0
        prefill = self._prefill_items(live)
        decoding = [i for i, s in enumerate(live) if not s.prefill]
        fed = [len(live[i].pending) if not live[i].prefill else 0 for i in range(len(live))]
        if fast_forward:
            items = [(i, live[i].pending + live[i].draft, self.n_past[i]) for i in decoding] \
                + prefill
            outs = [1 + len(live[i].draft) for i in decoding] + [1] * len(prefill)
            for i in decoding:
                live[i].stats["forward_passes"] += 1
                fed[i] += len(live[i].draft)
            rows = rt.feed([(self.sids[i], toks, pos) for i, toks, pos in items], outs)
            at = 0
            for (i, _, _), n in zip(items, outs, strict=True):
                logits[i] = rows[at]
                if n > 1:
                    live[i].draft_logits = rows[at + 1:at + n]
                at += n
        else:  # one token per pass: the reference path fast-forward must reproduce
            if prefill:
                rows = rt.feed([(self.sids[i], toks, pos) for i, toks, pos in prefill])
                for r, (i, _, _) in enumerate(prefill):
                    logits[i] = rows[r]
            for j in range(max((fed[i] for i in decoding), default=0)):
                part_of = [i for i in decoding if j < fed[i]]
                part = rt.feed([(self.sids[i], [live[i].pending[j]], self.n_past[i] + j)
                                for i in part_of])
                for r, i in enumerate(part_of):
                    logits[i] = part[r]
                    live[i].stats["forward_passes"] += 1
        for i, toks, _ in prefill:
            s = live[i]
            fed[i] = len(toks)
            s.prefill = s.prefill[len(toks):]
            s.stats["forward_passes"] += 1
            if not s.prefill:  # the whole prompt is in: keep its state for reuse
                rt._remember(tuple(s.prompt_ids), self.sids[i])
        self.n_past = [n + k for n, k in zip(self.n_past, fed, strict=True)]
        return logits

    def close(self) -> None:
        for sid in self.sids:
            self.rt.release(sid)
        self.sids = []


def _meta(lc: Any, model: Any, key: str) -> str | None:
    buf = ctypes.create_string_buffer(512)
    n = lc.llama_model_meta_val_str(model, key.encode(), buf, 512)
    return buf.value.decode("utf-8", errors="replace") if n >= 0 else None


# A chat template comes with the model file (untrusted): its rendering is bounded in output,
# in steps (calls, attribute and item reads, loop iterations, * and **) and in time, so a
# template such as nested range(100000) loops or 'x' * 10**9 fails instead of holding the
# only decoding thread (or the memory) after its request timed out.
TEMPLATE_MAX_CHARS = 4 << 20
TEMPLATE_MAX_STEPS = 2_000_000
TEMPLATE_MAX_S = 5.0
_render = threading.local()


def render_chat_template(template: str, messages: list[dict[str, Any]], bos: str,
                         eos: str, tools: list[dict[str, Any]] | None = None) -> str:
    """The model's chat template (Jinja, from the GGUF) in a sandbox: a model file is
    untrusted input, and its template must not reach Python objects or the file system,
    nor render past :data:`TEMPLATE_MAX_CHARS`, ``_STEPS`` or ``_S`` (BackendError)."""
    from jinja2 import TemplateError

    _render.steps = 0
    _render.deadline = time.monotonic() + TEMPLATE_MAX_S
    parts: list[str] = []
    size = 0
    try:
        for part in _compiled_template(template).generate(
                messages=messages, add_generation_prompt=True, bos_token=bos, eos_token=eos,
                tools=tools):
            size += len(part)
            if size > TEMPLATE_MAX_CHARS:
                raise TemplateError(f"it renders past {TEMPLATE_MAX_CHARS} characters")
            _template_step()
            parts.append(part)
    except TemplateError as exc:
        raise BackendError(f"the model's chat template failed: {exc}", "local") from None
    finally:
        _render.deadline = None
    return "".join(parts)


def _template_step() -> None:
    """Count one step of the template being rendered on this thread; TemplateError past
    the step or time limit."""
    from jinja2 import TemplateError

    deadline = getattr(_render, "deadline", None)
    if deadline is None:
        return
    _render.steps += 1
    if _render.steps > TEMPLATE_MAX_STEPS:
        raise TemplateError(f"it takes more than {TEMPLATE_MAX_STEPS} steps to render")
    if _render.steps % 1024 == 0 and time.monotonic() > deadline:
        raise TemplateError(f"it takes more than {TEMPLATE_MAX_S:.0f} s to render")


@functools.lru_cache(maxsize=16)
def _compiled_template(template: str) -> Any:
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment, safe_range

    class BoundedEnvironment(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**"})

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
            _template_step()
            return super().call(__context, __obj, *args, **kwargs)

        def getattr(self, obj: Any, attribute: str) -> Any:
            _template_step()
            return super().getattr(obj, attribute)

        def getitem(self, obj: Any, argument: Any) -> Any:
            _template_step()
            return super().getitem(obj, argument)

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            _template_step()
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, str | list | tuple) and isinstance(n, int) \
                            and len(seq) * n > TEMPLATE_MAX_CHARS:
                        raise TemplateError(f"a repetition of {len(seq) * n} items")
            if operator == "**" and isinstance(right, int) and abs(right) > 64:
                raise TemplateError(f"a power of {right}")
            return super().call_binop(context, operator, left, right)

    def bounded_range(*args: int) -> Any:
        for i in safe_range(*args):
            _template_step()
            yield i

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    def tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
               separators: Any = None, sort_keys: bool = False) -> str:
        # Hugging Face's tojson, whose arguments templates use (Jinja's own takes indent
        # only); its text goes into the prompt as it is, not HTML-escaped
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent,
                          separators=separators, sort_keys=sort_keys)

    env = BoundedEnvironment(trim_blocks=True, lstrip_blocks=True,
                             extensions=["jinja2.ext.loopcontrols"])
    env.globals["range"] = bounded_range
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: time.strftime(fmt)
    env.filters["tojson"] = tojson
    try:
        return env.from_string(template)
    except TemplateError as exc:
        raise BackendError(f"the model's chat template does not compile: {exc}",
                           "local") from None
