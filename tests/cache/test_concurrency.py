"""Four processes hammering one cache at once: no lost writes, no corruption, no crash."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from structgen.cache import ResultCache, open_result_cache
from structgen.config import CacheConfig, Config
from structgen.engine import Engine

ROOT = Path(__file__).resolve().parents[2]
WORKERS, N, SHARED = 4, 150, 10

SCHEMA = {"type": "object", "properties": {"w": {"type": "integer"}, "i": {"type": "integer"},
                                           "pad": {"type": "string"}},
          "required": ["w", "i", "pad"]}

# Each worker writes N own entries and rewrites SHARED common ones, reading back as it goes
# (its own entries must always be there and intact; shared ones from any writer).
WORKER = r"""
import json, sys
from structgen.cache import ResultCache, open_result_cache
from structgen.config import CacheConfig, Config
from structgen.engine import Engine
from structgen.types import StructuredResult
cfg = CacheConfig.model_validate(json.loads(sys.argv[1]))
w, n, shared = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
schema = json.loads(sys.argv[5])
engine = Engine(Config(cache=cfg))
cache = engine.cache
bad = 0
def req(prompt):
    return engine.build_request(prompt, schema)
for i in range(n):
    for prompt, value in ((f"w{w}-{i}", {"w": w, "i": i, "pad": "x" * (i % 50) * 40}),
                          (f"shared-{i % shared}", {"w": w, "i": i % shared, "pad": ""})):
        r = req(prompt)
        k = cache.key(r)
        cache.put(k, r, StructuredResult(value=value, raw_text=json.dumps(value),
                                         backend="local", model="m"))
        hit = cache.get(k, r.output)
        if hit is None or hit.value["i"] != value["i"]:
            bad += 1
    if i % 10 == 0:  # re-read an older own entry
        r = req(f"w{w}-{i // 2}")
        hit = cache.get(cache.key(r), r.output)
        if hit is None or hit.value != {"w": w, "i": i // 2, "pad": "x" * ((i // 2) % 50) * 40}:
            bad += 1
print(json.dumps({"bad": bad, "dropped": cache.dropped, "errors": cache.errors,
                  "hits": cache.hits}))
engine.close()
"""


def test_four_processes_one_cache(cache_config: CacheConfig) -> None:
    procs = [subprocess.Popen(
        [sys.executable, "-c", WORKER, cache_config.model_dump_json(), str(w), str(N),
         str(SHARED), json.dumps(SCHEMA)], cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True) for w in range(WORKERS)]
    reports = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        reports.append(json.loads(out.strip().splitlines()[-1]))
    for r in reports:
        assert r == {**r, "bad": 0, "dropped": 0, "errors": 0}
    expected_hits = sum(r["hits"] for r in reports)
    assert expected_hits == WORKERS * (2 * N + N // 10)

    engine = Engine(Config(cache=cache_config))
    cache = engine.cache
    assert isinstance(cache, ResultCache)
    stats = cache.stats()
    assert stats["entries"] == WORKERS * N + SHARED
    assert stats["hits"] == expected_hits  # every process's buffered counters arrived
    for w in range(WORKERS):
        for i in range(N):
            r = engine.build_request(f"w{w}-{i}", SCHEMA)
            hit = cache.get(cache.key(r), r.output)  # type: ignore[arg-type]
            assert hit is not None and hit.value == {"w": w, "i": i,
                                                     "pad": "x" * (i % 50) * 40}
    for s in range(SHARED):
        r = engine.build_request(f"shared-{s}", SCHEMA)
        hit = cache.get(cache.key(r), r.output)  # type: ignore[arg-type]
        assert hit is not None and hit.value["i"] == s and hit.value["w"] in range(WORKERS)
    assert cache.dropped == 0
    assert len(list(cache.export())) == WORKERS * N + SHARED
    engine.close()


def test_reopen_sees_other_process_writes(cache_config: CacheConfig) -> None:
    """A long-lived cache object sees entries another process wrote after it opened."""
    reader = open_result_cache(cache_config)
    assert isinstance(reader, ResultCache)
    subprocess.run([sys.executable, "-c", WORKER, cache_config.model_dump_json(), "9", "3",
                    "1", json.dumps(SCHEMA)], cwd=ROOT, check=True, capture_output=True)
    engine = Engine(Config(cache=cache_config))
    r = engine.build_request("w9-2", SCHEMA)
    hit = reader.get(reader.key(r), r.output)  # type: ignore[arg-type]
    assert hit is not None and hit.value["i"] == 2
    reader.close()
    engine.close()
