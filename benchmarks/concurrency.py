"""Many agents on one CPU box: structgen's continuous batching against its static batching and
llama.cpp's own server, same GGUF, same prompts, greedy.

    .venv/bin/python benchmarks/concurrency.py --llama-server PATH/TO/llama-server
    .venv/bin/python benchmarks/concurrency.py --systems a,b --requests 8 --concurrency 1,4
                                                    # a smoke run without the peer

Systems, each in a process of its own (its peak RSS is its own):

(a) structgen embedded, continuous batching (``[local] batching = "continuous"``):
    ``LocalBackend.agenerate``, in-process;
(b) the same code with ``[local] batching = "static"`` (the default): a batch decodes to
    its last answer before the next starts;
(c) llama.cpp's ``llama-server -np 4 -c 8192`` (parallel slots with continuous batching,
    what Ollama serves with), ``response_format`` json_schema over its OpenAI API, streamed
    so time to first token is measured. Build it from the ``vendor/llama.cpp`` tree of the
    llama-cpp-python sdist (``cmake -B build -DLLAMA_BUILD_SERVER=ON -DLLAMA_CURL=OFF``,
    ``cmake --build build --target llama-server``); not part of CI.
(d), (e) (a) and (b) with ``[local] kv_cache = "per_sequence"``: a KV stream per sequence,
    so each row of a step attends over its own cells only (``--systems a,b,d,e``).

Workload: the agent requests of ``embedded.py`` (intent, debugger, reflection; the schema in
the system prompt, no examples), cycled, at most 160 tokens each, greedy. Load: closed loop
(C clients, each sending its next request when the last is answered) at each
``--concurrency``, and open loop (Poisson arrivals, seeded) at each ``--rates`` (requests/s).
Answers are checked with ``structgen.validate.validate_text``: the backend's raw text, no
repair, in every system.

Writes results/concurrency.md, .json and .png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from _common import machine_line, pct  # noqa: E402

import structgen  # noqa: E402,F401 (its OpenMP spin, before any OpenMP library loads)

RESULTS = ROOT / "benchmarks" / "results"
LABELS = {"a": "structgen embedded, continuous batching",
          "b": "structgen embedded, static batching",
          "c": "llama.cpp llama-server -np 4, response_format json_schema",
          "d": "structgen embedded, continuous batching, a KV stream per sequence",
          "e": "structgen embedded, static batching, a KV stream per sequence"}
MAX_TOKENS = 160
SLOTS = 4  # llama-server's -np, and structgen's max_batch for a like-for-like box


def cases() -> list[Any]:
    from embedded import agent_cases

    return [c for c in agent_cases(None) if c.group == "agents"]


# Systems ------------------------------------------------------------------------------
class Structgen:
    def __init__(self, batching: str, decode_threads: int | None = None,
                 kv_cache: str = "unified") -> None:
        from structgen.backends.local import LocalBackend
        from structgen.config import Config
        from structgen.engine import Engine

        cfg = Config()
        cfg.cache.backend = "none"
        cfg.local.batching = batching  # type: ignore[assignment]
        cfg.local.max_batch = SLOTS
        cfg.local.kv_cache = kv_cache  # type: ignore[assignment]
        # unset, each process measures it (1 or 2 threads) once: under load that pick flips
        # from run to run, and a 2-thread pick makes every decode step wait on barriers
        cfg.local.decode_threads = decode_threads
        self.backend = LocalBackend(cfg)
        self.engine = Engine(cfg, backends={"local": self.backend})

    async def call(self, case: Any) -> dict[str, Any]:
        from embedded import check

        req = self.engine.build_request(case.messages, case.output, max_tokens=MAX_TOKENS)
        start = time.perf_counter()
        r = await self.backend.agenerate(req)
        return {"latency": time.perf_counter() - start, "ttft": r.ttft_s,
                "tokens": r.completion_tokens, "valid": check(r.text, case)}

    def close(self) -> None:
        self.backend.shutdown()


class LlamaServer:
    def __init__(self, binary: str) -> None:
        import httpx

        from structgen.backends.local.models import smollm2_gguf_path

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [binary, "-m", str(smollm2_gguf_path()), "-np", str(SLOTS), "-c", "8192",
             "-t", "2", "--host", "127.0.0.1", "--port", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            # the peer as its users run it: OpenMP's own default (spinning threads), not
            # the short spin structgen sets for itself
            env={k: v for k, v in os.environ.items()
                 if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")})
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise RuntimeError("llama-server did not start")
        self.client = httpx.AsyncClient(timeout=600)

    async def call(self, case: Any) -> dict[str, Any]:
        from embedded import check

        body = {"messages": case.messages, "max_tokens": MAX_TOKENS, "temperature": 0,
                "stream": True, "stream_options": {"include_usage": True},
                "response_format": {"type": "json_schema",
                                    "json_schema": {"name": "answer", "schema": case.schema}}}
        start = time.perf_counter()
        ttft, text, tokens = None, "", 0
        async with self.client.stream("POST", f"{self.url}/v1/chat/completions",
                                      json=body) as resp:
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                for choice in chunk.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content") or ""
                    if piece and ttft is None:
                        ttft = time.perf_counter() - start
                    text += piece
                if chunk.get("usage"):
                    tokens = chunk["usage"].get("completion_tokens", 0)
        return {"latency": time.perf_counter() - start, "ttft": ttft, "tokens": tokens,
                "valid": check(text, case)}

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


# Load ---------------------------------------------------------------------------------
async def closed_loop(system: Any, work: list[Any], n: int, clients: int) -> list[dict]:
    out: list[dict] = []
    next_i = iter(range(n))

    async def client() -> None:
        for i in next_i:
            out.append(await _one(system, work[i % len(work)]))

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return _with_wall(out, time.perf_counter() - start)


async def open_loop(system: Any, work: list[Any], n: int, rate: float) -> list[dict]:
    rng = random.Random(0)
    start = time.perf_counter()
    tasks, at = [], 0.0
    for i in range(n):
        await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
        tasks.append(asyncio.create_task(_one(system, work[i % len(work)])))
        at += rng.expovariate(rate)
    out = list(await asyncio.gather(*tasks))
    return _with_wall(out, time.perf_counter() - start)


async def _one(system: Any, case: Any) -> dict[str, Any]:
    try:
        return await system.call(case)
    except Exception as exc:  # a failed request is a row, not the end of the run
        return {"latency": float("nan"), "ttft": None, "tokens": 0, "valid": False,
                "error": f"{type(exc).__name__}: {exc}"[:200]}


def _with_wall(rows: list[dict], wall: float) -> list[dict]:
    for r in rows:
        r["wall"] = wall
    return rows


def summarize(rows: list[dict]) -> dict[str, Any]:
    ok = [r for r in rows if r["latency"] == r["latency"]]
    lat = [r["latency"] for r in ok]
    ttft = [r["ttft"] for r in ok if r["ttft"] is not None]
    wall = rows[0]["wall"] if rows else float("nan")
    return {"n": len(rows), "valid": sum(r["valid"] for r in rows),
            "errors": len(rows) - len(ok), "req_s": len(ok) / wall,
            "tok_s": sum(r["tokens"] for r in ok) / wall, "p50": pct(lat, 50),
            "p99": pct(lat, 99), "ttft_p50": pct(ttft, 50)}


def worker(system_id: str, args: argparse.Namespace) -> dict[str, Any]:
    work = cases()
    system: Any = (LlamaServer(args.llama_server) if system_id == "c"
                   else Structgen("continuous" if system_id in "ad" else "static",
                                  args.decode_threads,
                                  "per_sequence" if system_id in "de" else "unified"))
    try:
        # load the model, compile every schema's grammar and compute every system prompt once,
        # in each system alike, so the first load point does not time cold starts
        for case in work:
            asyncio.run(_one(system, case))
        points: dict[str, Any] = {}
        for c in args.concurrency:
            points[f"closed-{c}"] = summarize(asyncio.run(
                closed_loop(system, work, args.requests, c)))
        for rate in args.rates:
            points[f"open-{rate:g}"] = summarize(asyncio.run(
                open_loop(system, work, args.requests, rate)))
        rss = system.peak_rss_mb() if system_id == "c" else \
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return {"points": points, "peak_rss_mb": rss}
    finally:
        system.close()


# Report -------------------------------------------------------------------------------
def write(results: dict[str, Any], args: argparse.Namespace, load: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(results, indent=1))
    lines = [f"# {args.name}: continuous batching under load", "",
             f"Machine: {machine_line()}. Load average before the run: {load}.", "",
             f"Workload: {len(cases())} agent requests (intent, debugger, reflection; schema in "
             f"the system prompt), cycled, {args.requests} per point, max_tokens "
             f"{MAX_TOKENS}, greedy; {SLOTS} slots in every system. Generated by "
             f"`benchmarks/concurrency.py`; {args.rounds} round(s), the systems taking "
             "turns (rN: round N).", ""]
    for sid, res in results.items():
        lines.append(f"- ({sid}) {LABELS[sid]}: peak RSS {res['peak_rss_mb']:.0f} MB")
    lines += ["", "| load | system | valid | errors | req/s | tok/s | p50 s | p99 s | "
              "TTFT p50 s |", "|---|---|---|---|---|---|---|---|---|"]
    keys = list(next(iter(results.values()))["points"])
    for key in keys:
        for sid, res in results.items():
            p = res["points"][key]
            lines.append(f"| {key} | ({sid}) | {p['valid']}/{p['n']} | {p['errors']} | "
                         f"{p['req_s']:.2f} | {p['tok_s']:.1f} | {p['p50']:.2f} | "
                         f"{p['p99']:.2f} | {p['ttft_p50']:.2f} |")
    lines += ["", "## Against the targets", ""]
    for key in keys:
        row = {sid: res["points"][key] for sid, res in results.items()}
        parts = []
        if "a" in row and "b" in row:
            parts.append(f"p99 (a)/(b) = {row['a']['p99'] / row['b']['p99']:.2f} "
                         "(target <= 0.5 at the highest sustainable rate)")
        if "d" in row and "e" in row:
            parts.append(f"p99 (d)/(e) = {row['d']['p99'] / row['e']['p99']:.2f}")
        if "d" in row and "b" in row:
            parts.append(f"p99 (d)/(b) = {row['d']['p99'] / row['b']['p99']:.2f}")
        if "a" in row and "d" in row:
            parts.append(f"req/s (d)/(a) = {row['d']['req_s'] / row['a']['req_s']:.2f}")
        if "a" in row and "c" in row:
            parts.append(f"req/s (a)/(c) = {row['a']['req_s'] / row['c']['req_s']:.2f} "
                         "(target >= 1.5 at 16 concurrent)")
            parts.append(f"valid (a) {row['a']['valid']} vs (c) {row['c']['valid']}")
        lines.append(f"- {key}: " + "; ".join(parts))
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for sid, res in results.items():
            pts = res["points"]
            axes[0].plot(keys, [pts[k]["req_s"] for k in keys], marker="o", label=f"({sid})")
            axes[1].plot(keys, [pts[k]["p99"] for k in keys], marker="o", label=f"({sid})")
        axes[0].set_title("requests/s")
        axes[1].set_title("p99 latency (s)")
        for ax in axes:
            ax.tick_params(axis="x", rotation=30)
            ax.legend()
        fig.tight_layout()
        fig.savefig(RESULTS / f"{args.name}.png", dpi=90)
    except ImportError:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--systems", default=None,
                    help="default: a,b and c when --llama-server is given")
    ap.add_argument("--llama-server", default=None, help="path to llama-server, for (c)")
    ap.add_argument("--requests", type=int, default=24, help="requests per load point")
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--rates", default="", help="open-loop arrival rates, requests/s")
    ap.add_argument("--name", default="concurrency")
    ap.add_argument("--decode-threads", type=int, default=None,
                    help="[local] decode_threads for (a) and (b); default: each measures it")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run the systems this many times, taking turns")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c]
    args.rates = [float(r) for r in args.rates.split(",") if r]
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return
    systems = [s for s in (args.systems or ("a,b,c" if args.llama_server else "a,b"))
               .split(",") if s]
    if "c" in systems and not args.llama_server:
        ap.error("(c) needs --llama-server")
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    results: dict[str, Any] = {sid: {"points": {}, "peak_rss_mb": 0.0} for sid in systems}
    for r in range(args.rounds):
        # the systems take turns, in reverse order every other round, so a load that comes
        # and goes on a shared machine falls on each alike
        for sid in systems if r % 2 == 0 else systems[::-1]:
            cmd = [sys.executable, __file__, "--worker", sid, "--requests",
                   str(args.requests), "--concurrency", ",".join(map(str, args.concurrency)),
                   "--rates", ",".join(map(str, args.rates))]
            if args.decode_threads:
                cmd += ["--decode-threads", str(args.decode_threads)]
            if args.llama_server:
                cmd += ["--llama-server", args.llama_server]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            res = json.loads(out.strip().splitlines()[-1])
            suffix = f" r{r + 1}" if args.rounds > 1 else ""
            results[sid]["points"].update({k + suffix: v for k, v in res["points"].items()})
            results[sid]["peak_rss_mb"] = max(results[sid]["peak_rss_mb"], res["peak_rss_mb"])
            print(sid, r + 1, json.dumps(res["points"]), flush=True)
    write(results, args, load)


if __name__ == "__main__":
    main()
