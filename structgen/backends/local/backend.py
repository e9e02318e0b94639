"""The embedded backend: in-process constrained decoding on the CPU (the default backend).

One worker thread owns the model. ``agenerate`` calls from any number of asyncio tasks are
queued; the worker gathers what is waiting (up to ``[local] max_batch``) and decodes those
sequences together (``decoder.py``), one forward pass per step for the whole batch, each
with its own grammar matcher. The model runs on a runtime (``runtime.py``): llama.cpp for
GGUF models (the default, ``llamacpp_runtime.py``) or transformers for Hugging Face model
directories (``transformers_runtime.py``).
"""

from __future__ import annotations

import asyncio
import atexit
import codecs
import collections
import concurrent.futures
import dataclasses
import importlib.util
import logging
import queue
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from structgen.backends.base import (
    BackendBase,
    Capabilities,
    Finished,
    GenerationRequest,
    GenerationResult,
)
from structgen.backends.local.decoder import Decoder, fail
from structgen.backends.local.llamacpp_runtime import LlamaCppRuntime
from structgen.backends.local.models import is_gguf_reference
from structgen.backends.local.runtime import Runtime, Seq
from structgen.backends.local.transformers_runtime import TransformersRuntime
from structgen.constrain.base import engine_class
from structgen.constrain.grammar_cache import default_grammar_cache
from structgen.errors import BackendUnavailable, SchemaError, StructgenError
from structgen.schema.toolset import decoded_output, parse_triggered
from structgen.types import call_envelope

if TYPE_CHECKING:
    from structgen.config import Config

log = logging.getLogger(__name__)

GATHER_WINDOW_S = 0.005  # how long the worker waits for concurrent requests to join a batch


class LocalBackend(BackendBase, name="local"):
    """In-process constrained decoding on the CPU (the default backend).

    >>> backend = LocalBackend(Config())  # doctest: +SKIP
    >>> backend.generate(engine.build_request("Fix app.py", Intent)).text  # doctest: +SKIP
    """


    def __init__(self, config: Config) -> None:
        self.config = config
        self.cfg = config.local
        self._runtimes: dict[str, Runtime] = {}
        self._queue: queue.Queue[Seq | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        # set while shutting down: the worker ends sequences in flight instead of finishing
        # them, so interpreter exit never waits on (or kills) a thread inside torch
        self._closing = threading.Event()
        # seconds spent loading a model that no request has been told about yet: the next
        # batch's first request carries them (stats["model_load_s"]), so metrics keep the
        # load out of its latency
        self._load_s = 0.0
        self._loaded_at = 0.0
        atexit.register(_shutdown_at_exit, weakref.ref(self))

    # Protocol -------------------------------------------------------------------------
    def capabilities(self) -> Capabilities:
        engine = engine_class(self.cfg.engine)
        return Capabilities(
            output_kinds=engine.output_kinds, support=engine.support,
            reasoning=engine.supports_reasoning, batching=True, notes=engine.notes)

    async def agenerate(self, request: GenerationRequest) -> GenerationResult:
        future: concurrent.futures.Future[GenerationResult] = concurrent.futures.Future()
        decoded = self._triggered(request)
        self._ensure_worker()
        self._queue.put(Seq(decoded, future, time.perf_counter()))
        result = await asyncio.wrap_future(future)
        if decoded is not request:  # an "auto" tool turn: read the trigger format back
            assert request.tools is not None
            calls, result.text = parse_triggered(result.text, request.tools.parallel)
            result.tool_calls = calls
        return result

    def _triggered(self, request: GenerationRequest) -> GenerationRequest:
        """An ``"auto"`` tool turn decodes under one Lark grammar (free text, or text, the
        ``<tool_call>`` trigger, one call, ``</tool_call>``); a ``"required"`` or named one
        under its envelope schema as it is, so the call starts at once."""
        turn = request.tools
        if turn is None or turn.choice != "auto" or request.output is None:
            return request
        if self.cfg.engine != "llguidance":
            raise SchemaError("tool_choice='auto' on the embedded backend needs the "
                              "llguidance engine ([local] engine = 'llguidance'): its "
                              f"grammar is llguidance Lark, not {self.cfg.engine}'s")
        return dataclasses.replace(request, output=decoded_output(turn, request.output))

    async def stream(self, request: GenerationRequest) -> AsyncIterator[str]:
        """Yield text chunks as the worker produces tokens (fast-forwarded runs arrive as one
        chunk). Reasoning and stop-string requests are post-processed once the text is
        complete, so they arrive as one chunk at the end."""
        if request.reasoning or (request.output is None and request.sampling.stop) \
                or (request.tools is not None and request.tools.choice == "auto"):
            # an "auto" tool turn streams the envelope, known once the trigger format is read
            result = await self.agenerate(request)
            text = result.text if result.tool_calls is None or request.tools is None else \
                call_envelope(result.tool_calls, result.text, parallel=request.tools.parallel)
            yield _finished(text, result)
            return
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[str | None] = asyncio.Queue()

        def push(chunk: str | None) -> None:
            if not future.cancelled():  # a closed stream's loop may be gone already
                loop.call_soon_threadsafe(chunks.put_nowait, chunk)

        future: concurrent.futures.Future[GenerationResult] = concurrent.futures.Future()
        seq = Seq(request, future, time.perf_counter(), on_text=push,
                   utf8=codecs.getincrementaldecoder("utf-8")(errors="replace"))
        self._ensure_worker()
        self._queue.put(seq)
        try:
            while (chunk := await chunks.get()) is not None:
                yield chunk
        finally:
            # the consumer left early: the worker drops the sequence at its next token
            # (or before it starts), which frees its slot in the batch
            future.cancel()
        result = await asyncio.wrap_future(future)  # raises the request's error, if any
        yield _finished("", result)

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
            if worker.is_alive():  # still inside a forward pass: leave the model to it
                self._worker = None
                return
        self._worker = None
        with self._load_lock:
            for rt in self._runtimes.values():
                rt.close()
            self._runtimes.clear()

    # Model ------------------------------------------------------------------------------
    def runtime(self, model: str | None) -> Runtime:
        """Load (once) the model a request asks for; ``None`` = the configured default."""
        ref = _model_key(model or self.cfg.model or "default")
        with self._load_lock:
            if ref not in self._runtimes:
                if importlib.util.find_spec("torch") is None:
                    raise BackendUnavailable(
                        "the embedded backend needs torch: pip install 'structgen[local]'",
                        self.name)
                shown = ref if ref != "default" else "SmolLM2-135M-Instruct (default)"
                log.info("structgen: loading model %s for the embedded backend (first "
                         "request in this process)", shown)
                started = time.perf_counter()  # torch's import is part of the load
                import torch

                if self.cfg.threads:
                    torch.set_num_threads(self.cfg.threads)
                else:
                    # more than 4 intra-op threads only add synchronisation cost for
                    # a small model decoding one token per step
                    torch.set_num_threads(min(4, torch.get_num_threads()))
                self._runtimes[ref] = self._load(ref)
                took = time.perf_counter() - started
                self._load_s += took
                self._loaded_at = time.perf_counter()
                log.info("structgen: model %s loaded in %.1f s", shown, took)
            return self._runtimes[ref]

    def _load(self, ref: str) -> Runtime:
        """The runtime for ``ref``: llama.cpp for GGUF models unless the transformers
        runtime is configured; a Hugging Face directory or hub id always runs on
        transformers (llama.cpp reads GGUF only)."""
        cache = default_grammar_cache(self.config.cache)
        if self.cfg.runtime == "llamacpp" and is_gguf_reference(None if ref == "default"
                                                                else ref):
            return LlamaCppRuntime(ref, self.cfg, cache)
        if importlib.util.find_spec("transformers") is None:
            raise BackendUnavailable("the transformers runtime needs transformers: "
                                     "pip install 'structgen[local]'", self.name)

        return TransformersRuntime(ref, self.cfg, cache)

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
        waiting = _Waiting(self._queue, self._model_of)
        while (first := waiting.pop()) is not None:
            batch = [first]
            while len(batch) < self.cfg.max_batch:
                nxt = waiting.pop(GATHER_WINDOW_S)
                if nxt is None:
                    break
                batch.append(nxt)
            # one model per batch; the others keep their place at the head of the queue
            waiting.model = self._model_of(first)
            waiting.put_back([s for s in batch if self._model_of(s) != waiting.model])
            self._run_group(waiting.model, [s for s in batch
                                            if self._model_of(s) == waiting.model], waiting)
        waiting.fail_all(BackendUnavailable("the local backend was shut down", self.name))

    def _model_of(self, seq: Seq) -> str | None:
        return seq.request.model or self.cfg.model

    def _run_group(self, model: str | None, seqs: list[Seq], waiting: _Waiting) -> None:
        try:
            rt = self.runtime(model)
        except BaseException as exc:
            for seq in seqs:
                fail(seq, exc)
            return
        with self._load_lock:
            load_s, self._load_s = self._load_s, 0.0
            loaded_at = self._loaded_at
        if load_s:
            seqs[0].stats["model_load_s"] = round(load_s, 4)  # type: ignore[assignment]
        for seq in seqs:  # decode times (latency, TTFT) start after a load they waited for
            seq.start = max(seq.start, loaded_at)
        try:
            Decoder(rt, self.cfg, self._closing).run(seqs, waiting)
        except BaseException as exc:  # never leave a caller waiting
            for seq in [*seqs, *waiting.taken]:
                fail(seq, exc)
        waiting.taken.clear()


class _Waiting:
    """The worker's queue as the decoder sees it between steps: requests in arrival order,
    those put back (no room yet, or another model's) at the head."""

    def __init__(self, q: queue.Queue[Seq | None], model_of: Callable[[Seq], str | None]
                 ) -> None:
        self.q = q
        self.model_of = model_of
        self.head: collections.deque[Seq] = collections.deque()
        self.model: str | None = None  # the running batch's model
        self.taken: list[Seq] = []  # handed to the running batch (failed with it)
        self.stopped = False  # shut down: nothing more is handed out

    def pop(self, timeout: float | None = None) -> Seq | None:
        """The oldest request; waits ``timeout`` seconds (None: until one comes)."""
        if self.stopped:
            return None
        if self.head:
            return self.head.popleft()
        try:
            seq = self.q.get(timeout=timeout)
        except queue.Empty:
            return None
        if seq is None:
            self.stopped = True
        return seq

    def next(self) -> Seq | None:
        while not self.stopped:
            try:
                seq = self.q.get_nowait()
            except queue.Empty:
                break
            if seq is None:
                self.stopped = True
            else:
                self.head.append(seq)
        if self.stopped or not self.head or self.model_of(self.head[0]) != self.model:
            return None
        seq = self.head.popleft()
        self.taken.append(seq)
        return seq

    def put_back(self, seqs: list[Seq]) -> None:
        self.head.extendleft(reversed(seqs))
        for seq in seqs:
            if seq in self.taken:
                self.taken.remove(seq)

    def fail_all(self, exc: BaseException) -> None:
        self.stopped = True
        while True:
            try:
                seq = self.q.get_nowait()
            except queue.Empty:
                break
            if seq is not None:
                self.head.append(seq)
        while self.head:
            fail(self.head.popleft(), exc)


def _model_key(ref: str) -> str:
    """One runtime per model file, however its path is spelt (``m.gguf``, ``./m.gguf``,
    its absolute path, a symlink to it): each spelling would otherwise load it again."""
    if ref == "default" or ref.startswith("ollama:"):
        return ref
    path = Path(ref).expanduser()
    return str(path.resolve()) if path.exists() else ref


def _shutdown_at_exit(ref: weakref.ref[LocalBackend]) -> None:
    backend = ref()
    if backend is not None:
        backend.shutdown(timeout_s=5.0)


def _finished(text: str, result: GenerationResult) -> Finished:
    """The stream's last chunk: why it ended, and the call's token counts."""
    return Finished(text, result.finish_reason, result.post_enforced,
                    prompt_tokens=result.prompt_tokens,
                    completion_tokens=result.completion_tokens, model=result.model)
