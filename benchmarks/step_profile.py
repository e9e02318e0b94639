"""Where a continuous-batching decode step's time goes (embedded backend, llama.cpp).

    nice -n 10 .venv/bin/python benchmarks/step_profile.py [--requests 16] [--max-batch 8]
        [--agents intent] [--max-tokens 160] [--cprofile out.prof]

Sends ``--requests`` agent requests at once (the schema in the system prompt, greedy) to one
``LocalBackend`` and times, over every decode step of the run, the parts of a step:

- ``llama_decode``: the forward passes (``LlamaCppRuntime._decode``);
- ``feed other``: the rest of ``LlamaCppRuntime.feed`` (batch packing, logits copy);
- ``step other``: the rest of ``_LlamaBatch.step`` (prefill planning, bookkeeping);
- ``masks``: the grammar engine's bitmasks (``Decoder._masks``);
- ``mask apply``: bitmask onto the logits;
- ``guards+argmax``: the whitespace/number guards, argmax / sampling;
- ``advance``: consuming the token, budget closing, fast-forward (``Decoder._advance``);
- ``finish``: results of the sequences that ended.

Prints a table (ms per step, share of the step) and the mean live sequences per step.
The timers wrap methods, so they add a few microseconds a call; the shares are what matters.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("STRUCTGEN_ALLOW_MISSING_SERVICES", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

TIMES: collections.Counter[str] = collections.Counter()
# the worker thread's CPU time: on a loaded machine, what a part costs rather than how long
# it waited for a core (a call on 1 llama.cpp thread runs on the worker thread itself)
CPU: collections.Counter[str] = collections.Counter()
CALLS: collections.Counter[str] = collections.Counter()
# llama_decode calls: tokens, threads, seconds, worker CPU seconds
CALLS_LOG: list[tuple[int, int, float, float]] = []


def timed(cls: Any, name: str, label: str) -> None:
    """Wrap ``cls.name`` so its wall time adds to ``TIMES[label]`` (when it exists)."""
    fn = getattr(cls, name, None)
    if fn is None:
        return

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start, cpu = time.perf_counter(), time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            TIMES[label] += time.perf_counter() - start
            CPU[label] += time.thread_time() - cpu
            CALLS[label] += 1

    setattr(cls, name, wrapper)


def instrument() -> None:
    from structgen.backends.local import decoder, llamacpp_runtime, runtime

    rt_cls, batch_cls = llamacpp_runtime.LlamaCppRuntime, llamacpp_runtime._LlamaBatch
    timed(rt_cls, "_decode", "llama_decode")
    orig_decode = rt_cls._decode

    def decode(self: Any) -> None:
        n = int(self.batch.n_tokens)
        start, cpu = time.perf_counter(), time.thread_time()
        orig_decode(self)
        CALLS_LOG.append((n, self._threads_now, time.perf_counter() - start,
                          time.thread_time() - cpu))

    rt_cls._decode = decode  # type: ignore[method-assign]
    timed(rt_cls, "feed", "feed")
    timed(batch_cls, "step", "step")
    dec = decoder.Decoder
    timed(dec, "_choose", "choose")
    if hasattr(dec, "_masks"):
        timed(dec, "_masks", "masks")
    else:  # the grammar engines' calls, one per sequence
        from structgen.constrain.llguidance import LLGuidanceMatcher

        timed(LLGuidanceMatcher, "fill_bitmask", "masks")
    applier = runtime.mask_applier

    def timed_applier() -> Any:
        apply = applier()

        def apply_timed(*a: Any) -> None:
            start, cpu = time.perf_counter(), time.thread_time()
            apply(*a)
            TIMES["mask apply"] += time.perf_counter() - start
            CPU["mask apply"] += time.thread_time() - cpu

        return apply_timed

    runtime.mask_applier = timed_applier
    timed(dec, "_advance", "advance")
    timed(dec, "_budget_close", "budget close")
    timed(dec, "_finish", "finish")
    timed(dec, "_admit", "admit")
    # one live-count sample per step
    orig_step = batch_cls.step

    def step(self: Any, live: list[Any], fast_forward: bool) -> Any:
        decoding = sum(1 for s in live if not s.prefill)
        if decoding:
            CALLS["decode steps"] += 1
            CALLS["live sum"] += decoding
        return orig_step(self, live, fast_forward)

    batch_cls.step = step  # type: ignore[method-assign]


def restore_each(backend: Any) -> Callable[[], None]:
    """A cached prompt prefix is restored into every sequence, also when a live sequence
    holds it (the behaviour before ``_LlamaBatch._held``)."""
    from structgen.backends.local.llamacpp_runtime import _LlamaBatch

    held = _LlamaBatch._held
    _LlamaBatch._held = lambda self, prompt: 0  # type: ignore[method-assign]
    return lambda: setattr(_LlamaBatch, "_held", held)


MODES: dict[str, Callable[[Any], Callable[[], None]]] = {"restore-each": restore_each}


async def run(args: argparse.Namespace) -> None:
    from embedded import agent_cases

    from structgen.backends.local import LocalBackend
    from structgen.config import Config
    from structgen.engine import Engine

    cfg = Config()
    cfg.cache.backend = "none"
    cfg.local.max_batch = args.max_batch
    cfg.local.batching = "continuous"
    if args.decode_threads:
        cfg.local.decode_threads = args.decode_threads
    backend = LocalBackend(cfg)
    engine = Engine(cfg, backends={"local": backend})
    agents = tuple(args.agents.split(","))
    work = [c for c in agent_cases(None)
            if c.group == "agents" and c.id.startswith(agents)]
    reqs = [engine.build_request(c.messages, c.output, max_tokens=args.max_tokens)
            for c in work]
    await backend.agenerate(reqs[0])  # load the model, compile the grammars
    for r in reqs[1:len(work)]:
        await backend.agenerate(r)
    for mode in args.modes.split(","):
        undo = MODES[mode](backend) if mode != "current" else (lambda: None)
        TIMES.clear()
        CPU.clear()
        CALLS.clear()
        CALLS_LOG.clear()
        start = time.perf_counter()
        results = await asyncio.gather(*(backend.agenerate(reqs[i % len(reqs)])
                                         for i in range(args.requests)))
        wall = time.perf_counter() - start
        print(f"\n## mode {mode} (load average {os.getloadavg()[0]:.1f})")
        report(wall, results)
        decode_calls()
        undo()
    backend.shutdown()


def report(wall: float, results: list[Any]) -> None:
    steps = max(CALLS["decode steps"], 1)
    rows = parts(TIMES)
    cpu_rows = dict(parts(CPU))
    total = sum(v for _, v in rows)
    cpu_total = sum(cpu_rows.values())
    tokens = sum(r.completion_tokens for r in results)
    print(f"wall {wall:.2f} s, {len(results)} requests, {len(results) / wall:.3f} req/s, "
          f"{tokens} tokens, {tokens / wall:.1f} tok/s")
    print(f"decode steps {steps}, mean live decoding {CALLS['live sum'] / steps:.2f}, "
          f"llama_decode calls {CALLS['llama_decode']}")
    print(f"timed {total:.2f} s of {wall:.2f} s wall")
    for key in ("prefill_tokens", "prefix_cache_hit_tokens", "prefix_shared_tokens"):
        print(f"{key}: {sum(r.stats.get(key, 0) for r in results)}")
    print("| part | wall ms/step | share | worker CPU ms/step |")
    print("|---|---|---|---|")
    for name, v in rows:
        print(f"| {name} | {1000 * v / steps:.2f} | {100 * v / total:.1f}% | "
              f"{1000 * cpu_rows[name] / steps:.2f} |")
    print(f"| total | {1000 * total / steps:.2f} | | {1000 * cpu_total / steps:.2f} |")


def parts(t: collections.Counter[str]) -> list[tuple[str, float]]:
    return [
        ("llama_decode", t["llama_decode"]),
        ("feed other (pack, logits copy)", t["feed"] - t["llama_decode"]),
        ("step other", t["step"] - t["feed"]),
        ("masks", t["masks"]),
        ("mask apply", t["mask apply"]),
        ("guards+argmax", t["choose"] - t["masks"] - t["mask apply"] - t["advance"]),
        ("advance (consume, ff)", t["advance"] - t["budget close"]),
        ("budget close", t["budget close"]),
        ("finish", t["finish"]),
        ("admit", t["admit"]),
    ]


def decode_calls() -> None:
    print("llama_decode calls by tokens in the batch:")
    buckets: dict[tuple[int, int], list[tuple[float, float]]] = collections.defaultdict(list)
    for n, threads, sec, cpu in CALLS_LOG:
        size = next(b for b in (1, 4, 8, 16, 32, 64, 128, 256, 512, 10**9) if n <= b)
        buckets[(size, threads)].append((sec, cpu))
    for (size, threads), secs in sorted(buckets.items()):
        wall = sum(w for w, _ in secs)
        cpu = sum(c for _, c in secs)
        print(f"  tokens <={size:<4} threads {threads}: {len(secs):4d} calls, wall "
              f"{1000 * wall / len(secs):7.2f} ms, worker CPU {1000 * cpu / len(secs):7.2f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=160)
    ap.add_argument("--agents", default="intent")
    ap.add_argument("--decode-threads", type=int, default=None)
    ap.add_argument("--cprofile", default=None, help="also cProfile the worker thread")
    ap.add_argument("--modes", default="current",
                    help="rounds, in order: current (the code as it is), "
                         + ", ".join(MODES))
    args = ap.parse_args()
    instrument()
    if args.cprofile:
        import cProfile

        from structgen.backends.local import backend as backend_mod

        orig = backend_mod.LocalBackend._work
        prof = cProfile.Profile()

        def work(self: Any) -> None:
            prof.enable()
            try:
                orig(self)
            finally:
                prof.disable()
                prof.dump_stats(args.cprofile)

        backend_mod.LocalBackend._work = work  # type: ignore[method-assign]
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
