"""The server's own cost → benchmarks/results/serve.md.

(a) ``structgen serve`` (a real process, the official ``openai`` client, streamed) against
(c) the same engine called in-process (``Engine.astream``), on the embedded SmolLM2 with
the intent agent's schema, result cache off, closed-loop clients at concurrency 1 and 16:
requests/s, latency p50/p99 and time to first token (the first SSE event, which the
server sends once the engine yields its first partial value; in-process: that value).

    nice -n 10 .venv/bin/python benchmarks/serve.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import openai  # noqa: E402
from _common import machine_line, pct  # noqa: E402

from schemas.intent import Intent  # noqa: E402
from structgen.config import Config  # noqa: E402
from structgen.engine import Engine  # noqa: E402
from structgen.tools.demo import SYSTEM_PROMPT  # noqa: E402
from tests.server.conftest import KEY, start_server  # noqa: E402

REQUESTS = ["Add a --verbose flag to the CLI in structgen/cli.py",
            "Why does app/db.py crash on startup?",
            "Explain what structgen/cache.py does",
            "Run the tests in tests/test_api.py",
            "Rename parse_args in cli.py to read_args",
            "The build fails in setup.py since the last merge",
            "Create a file docs/usage.md with the CLI options",
            "Refactor the retry loop in backends/http.py"]
CONFIG = ('[llm_backend]\nprovider = "local"\nfallback = ["local"]\ntimeout_s = 900\n'
          '[cache]\nbackend = "none"\n[metrics]\nenabled = false\n')
SCHEMA = Intent.model_json_schema()
MAX_TOKENS = 96
ROUNDS = 4


def messages(i: int) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": REQUESTS[i % len(REQUESTS)]}]


async def closed_loop(one: Any, concurrency: int, total: int) -> dict[str, Any]:
    """``concurrency`` clients, each sending its next request when the last is answered."""
    latencies: list[float] = []
    ttfts: list[float] = []
    counter = iter(range(total))

    async def client() -> None:
        for i in counter:
            start = time.perf_counter()
            first = await one(i)
            latencies.append(time.perf_counter() - start)
            ttfts.append(first - start)

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return {"wall": time.perf_counter() - start, "latencies": latencies, "ttfts": ttfts}


def summary(concurrency: int, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One mode's rounds at one concurrency as one row."""
    latencies = [x for r in rounds for x in r["latencies"]]
    ttfts = [x for r in rounds for x in r["ttfts"]]
    wall = sum(r["wall"] for r in rounds)
    return {"concurrency": concurrency, "requests": len(latencies),
            "rps": len(latencies) / wall, "p50_s": pct(latencies, 50),
            "p99_s": pct(latencies, 99), "ttft_p50_s": pct(ttfts, 50)}


def server_client(url: str) -> Any:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0,
                                timeout=900)

    async def one(i: int) -> float:
        first = 0.0
        text = ""
        stream = await client.chat.completions.create(
            model="structgen", messages=messages(i), max_tokens=MAX_TOKENS,  # type: ignore
            stream=True, response_format={"type": "json_schema", "json_schema": {
                "name": "Intent", "schema": SCHEMA}})
        async for chunk in stream:
            first = first or time.perf_counter()
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
        Intent.model_validate_json(text)
        return first

    return one


def engine_client(engine: Engine) -> Any:
    async def one(i: int) -> float:
        first = 0.0
        last = None
        async for item in engine.astream(messages(i), SCHEMA, max_tokens=MAX_TOKENS):
            first = first or time.perf_counter()
            last = item
        Intent.model_validate(last)
        return first

    return one


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    per_level = {1: 8, 16: 32} if args.quick else {1: 16, 16: 64}
    rows: list[dict[str, Any]] = []

    config = Config.from_dict({"llm_backend": {"provider": "local", "fallback": ["local"],
                                               "timeout_s": 900},
                               "cache": {"backend": "none"}, "metrics": {"enabled": False}})
    engine = Engine(config)
    with tempfile.TemporaryDirectory() as folder:
        served = start_server(Path(folder), CONFIG + f'[server]\napi_keys = ["{KEY}"]\n'
                                                     "max_concurrency = 64\n")
        try:
            modes = {"in-process": engine_client(engine),
                     "structgen serve": server_client(served.url)}

            async def interleaved() -> None:
                for one in modes.values():
                    await one(0)  # load the model, warm the prompt
                for c, n in per_level.items():
                    # the modes take turns, ROUNDS rounds each, the first mode alternating,
                    # so a change of load (or of the engine's pace) falls on both alike
                    done: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
                    for k in range(ROUNDS):
                        order = list(modes) if k % 2 == 0 else list(modes)[::-1]
                        for mode in order:
                            done[mode].append(await closed_loop(modes[mode], c, n // ROUNDS))
                    rows.extend({"mode": m, **summary(c, done[m])} for m in modes)
            asyncio.run(interleaved())
        finally:
            served.stop()
            engine.close()
    write(rows)


def write(rows: list[dict[str, Any]]) -> None:
    results = ROOT / "benchmarks" / "results"
    lines = ["# `structgen serve` vs the engine in-process", "",
             "Embedded SmolLM2-135M-Instruct (llama.cpp), the intent schema, result cache "
             f"off, max_tokens {MAX_TOKENS}, streamed, closed-loop clients. Target: the "
             "server within 5% of in-process.", "",
             "| mode | concurrency | requests | req/s | p50 s | p99 s | TTFT p50 s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['concurrency']} | {r['requests']} | {r['rps']:.2f} "
                     f"| {r['p50_s']:.2f} | {r['p99_s']:.2f} | {r['ttft_p50_s']:.3f} |")
    headline: dict[str, Any] = {}
    for c in sorted({r["concurrency"] for r in rows}):
        pair = {r["mode"]: r for r in rows if r["concurrency"] == c}
        if len(pair) == 2:
            ratio = pair["structgen serve"]["rps"] / pair["in-process"]["rps"]
            headline[f"serve/in-process req/s, c={c}"] = round(ratio, 3)
            lines.append(f"\nConcurrency {c}: the server's throughput is {ratio:.1%} of "
                         "in-process.")
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    lines += ["", f"The two modes took turns, {ROUNDS} rounds each at every concurrency (the "
              f"first mode alternating), so load falls on both alike; load average {load} "
              "when it finished (2 cores). TTFT is the first "
              "SSE event as the client sees it (server) vs the engine's first partial value "
              "(in-process); at concurrency 16 it includes the wait for a batch slot.",
              "", f"Machine: {machine_line()}"]
    (results / "serve.md").write_text("\n".join(lines) + "\n")
    (results / "serve.json").write_text(json.dumps(
        {"name": "serve", "result": "serve.md", "headline": headline, "rows": rows,
         "machine": machine_line()}, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
