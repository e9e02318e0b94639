"""`structgen warmup --ray` on a real two-node Ray cluster and a real redis-server.

The cluster (a head and a second node, one CPU each, on 127.0.0.1) is started once for
the module and stopped by process group at teardown; its temp dir is under the test's
tmp. The backend is the vLLM wire-format stand-in (tests/servers/wire.py) on 127.0.0.1,
answering every request in a few milliseconds, so the tests time Ray and Redis, not a
model. Every Ray actor is a thin HTTP client of it, as it would be of a server fleet.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis

from structgen.cache import ENTRY_PREFIX
from structgen.config import Config
from structgen.engine import Engine
from structgen.errors import ConfigError, ExecutorError
from structgen.warmup import RayOptions, read_items, run_warmup
from tests.cache.conftest import free_port
from tests.servers.wire import VLLMWireServer

pytestmark = pytest.mark.redis  # the cluster tests are also slow; the refusals are not

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = {"type": "object", "properties": {"kind": {"enum": ["a", "b", "c"]},
                                           "n": {"type": "integer"}},
          "required": ["kind", "n"], "additionalProperties": False}
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
REDIS_DB = 3  # the session's redis-server; the other cache tests use db 0


@dataclass
class Cluster:
    address: str
    head: subprocess.Popen[bytes]
    node: subprocess.Popen[bytes]

    def node_workers(self) -> list[psutil.Process]:
        """The second node's Ray worker processes (its actors), not its raylet or agents."""
        return workers_of(self.node)


def workers_of(start: subprocess.Popen[bytes]) -> list[psutil.Process]:
    """Worker processes of the node that ``start`` runs: children of its raylet (a raylet
    starts workers in process groups of their own, so they are found by parent)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if os.getpgid(proc.pid) != start.pid or "raylet/raylet" not in " ".join(
                    proc.info["cmdline"] or []):
                continue
            for child in proc.children():
                title = " ".join(child.cmdline())
                if title.startswith("ray::") and "Agent" not in title:
                    found.append(child)
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    return found


def _wait_for_no_actor(cluster: Cluster, name: str, timeout_s: float = 120) -> None:
    """Until no worker process of either node runs an actor of class ``name``."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive = []
        for proc in workers_of(cluster.head) + cluster.node_workers():
            with contextlib.suppress(psutil.Error):
                if name in " ".join(proc.cmdline()):
                    alive.append(proc.pid)
        if not alive:
            return
        assert time.monotonic() < deadline, f"{name} actors still running: {alive}"
        time.sleep(0.2)


def _ray_start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    # --block keeps `ray start` in the foreground; in a session of its own, every process
    # of that node (raylet, GCS, workers) shares its process group, so teardown can end
    # exactly these processes (`ray stop` would end every Ray on the machine).
    exe = Path(sys.executable).parent / "ray"
    return subprocess.Popen([str(exe), "start", "--block", "--node-ip-address=127.0.0.1",
                             "--num-cpus=1", "--disable-usage-stats", *args],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, env=ENV,
                            start_new_session=True)


def _wait_started(proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while b"Ray runtime started" not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"ray start failed:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)


def _stop(*procs: subprocess.Popen[bytes]) -> None:
    """End each node's process group (SIGTERM, then SIGKILL), then any worker left over."""
    workers = [w for proc in procs for w in workers_of(proc)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
        deadline = time.monotonic() + 5
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
        if all(proc.poll() is not None for proc in procs):
            break
    for worker in workers:  # they die with their raylet; these are the ones that did not
        with contextlib.suppress(psutil.Error):
            worker.kill()


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("ray")
    port = free_port()
    head = _ray_start(["--head", f"--port={port}", "--include-dashboard=false",
                       f"--temp-dir={tmp / 't'}"], tmp / "head.log")
    node = None
    try:
        _wait_started(head, tmp / "head.log")
        node = _ray_start([f"--address=127.0.0.1:{port}"], tmp / "node.log")
        _wait_started(node, tmp / "node.log")
        yield Cluster(f"127.0.0.1:{port}", head, node)
    finally:
        _stop(*([node] if node is not None else []), head)


@pytest.fixture(scope="module")
def server() -> Iterator[VLLMWireServer]:
    with VLLMWireServer() as s:
        yield s


@pytest.fixture
def setup(tmp_path: Path, redis_url: str, server: VLLMWireServer) -> dict[str, Any]:
    server.reset()
    url = redis_url.rsplit("/", 1)[0] + f"/{REDIS_DB}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    config = tmp_path / "config.toml"
    config.write_text(
        f'[llm_backend]\nprovider = "vllm"\nfallback = ["vllm"]\n\n'
        f'[vllm]\nbase_url = "{server.base_url}"\nmodel = "served-model"\nretries = 0\n\n'
        f'[cache]\nbackend = "redis"\nurl = "{url}"\ngrammar_dir = "{tmp_path / "g"}"\n\n'
        # an injected failure must stay one failed item, not open the circuit for the rest
        f'[router]\nbreaker_failures = 1000\n\n[repair]\nmax_retries = 0\n\n'
        f'[metrics]\nenabled = false\n')
    yield {"config": config, "redis": client, "url": url, "tmp": tmp_path,
           "report": tmp_path / "report.jsonl"}
    client.close()


def write_items(path: Path, n: int, extra: list[str] = ()) -> Path:  # type: ignore[assignment]
    lines = [json.dumps({"id": f"q{i}", "prompt": f"request number {i}", "schema": SCHEMA,
                         "max_tokens": 32}) for i in range(n)]
    path.write_text("\n".join([*lines, *extra]) + "\n")
    return path


def warmup(s: dict[str, Any], src: Path, address: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "structgen.cli", "warmup", str(src), "--ray", address,
            "--config", str(s["config"]), "--report", str(s["report"]), "--no-progress",
            "--ray-actors", "2", *extra]


def read_report(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for x in path.read_text().split("\n")[:-1]:  # whole lines only
        try:
            out.append(json.loads(x))
        except json.JSONDecodeError:
            continue
    return out


def cached_keys(client: redis.Redis) -> set[str]:
    prefix = f"structgen:{ENTRY_PREFIX}"
    return {k.decode()[len(prefix):] for k in client.scan_iter(match=prefix + "*", count=500)}


def requests_for(server: VLLMWireServer) -> list[str]:
    """The prompt of every request the stand-in answered (one per generation)."""
    return [body["messages"][-1]["content"] for path, body in list(server.requests)
            if path == "/v1/chat/completions"]


# The tests -------------------------------------------------------------------------------
@pytest.mark.slow
def test_200_items_each_once_in_redis_and_report(ray_cluster: Cluster, setup: dict[str, Any],
                                                 server: VLLMWireServer) -> None:
    s = setup
    src = write_items(s["tmp"] / "requests.jsonl", 200)
    run = subprocess.run(warmup(s, src, ray_cluster.address, "--batch-size", "10"),
                         cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    report = read_report(s["report"])
    assert len(report) == 200
    assert sorted(r["id"] for r in report) == sorted(f"q{i}" for i in range(200))
    assert {r["status"] for r in report} == {"done"}
    assert all(r["backend"] == "vllm" and r["latency_s"] > 0 for r in report)
    assert cached_keys(s["redis"]) == {r["key"] for r in report}  # every item, once
    assert len({r["key"] for r in report}) == 200
    # computed once each: a request per item reached the backend, no more
    assert sorted(requests_for(server)) == sorted(f"request number {i}" for i in range(200))
    assert "200 done" in run.stdout


@pytest.mark.slow
def test_sigkill_one_nodes_workers_midrun(ray_cluster: Cluster, setup: dict[str, Any],
                                          server: VLLMWireServer) -> None:
    s = setup
    server.delay_s = 0.03  # long enough to kill the workers while batches are in flight
    src = write_items(s["tmp"] / "requests.jsonl", 200)
    proc = subprocess.Popen(warmup(s, src, ray_cluster.address, "--batch-size", "5",
                                   "-j", "2"),
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    killed: list[int] = []
    deadline = time.monotonic() + 240
    while not killed:
        assert proc.poll() is None, proc.communicate()[1].decode()[-3000:]
        assert time.monotonic() < deadline, "the second node never ran an actor"
        if len(read_report(s["report"])) >= 20:
            actors = [p for p in ray_cluster.node_workers()
                      if "_WarmupActor" in " ".join(p.cmdline())]
            for p in actors:
                p.send_signal(signal.SIGKILL)
                killed.append(p.pid)
        time.sleep(0.05)
    _out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-3000:]
    report = read_report(s["report"])
    assert sorted(r["id"] for r in report) == sorted(f"q{i}" for i in range(200))
    assert {r["status"] for r in report} <= {"done", "cached"}  # cached: a retried batch
    assert cached_keys(s["redis"]) == {r["key"] for r in report}
    assert len(cached_keys(s["redis"])) == 200
    # every item reached the backend; only those in flight when the actor died, again
    prompts = requests_for(server)
    assert set(prompts) == {f"request number {i}" for i in range(200)}
    assert len(prompts) - 200 <= 2 * 5


@pytest.mark.slow
def test_ctrl_c_then_resume_computes_only_the_missing(ray_cluster: Cluster,
                                                      setup: dict[str, Any],
                                                      server: VLLMWireServer) -> None:
    s = setup
    server.delay_s = 0.03
    src = write_items(s["tmp"] / "requests.jsonl", 200)
    proc = subprocess.Popen(warmup(s, src, ray_cluster.address, "--batch-size", "5"),
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while len(read_report(s["report"])) < 60:
        assert proc.poll() is None, proc.communicate()[1].decode()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()[-3000:]
    assert "interrupted" in err.decode() and "resume" in err.decode()
    first = read_report(s["report"])
    assert 60 <= len(first) < 200
    assert {r["status"] for r in first} == {"done"}
    # the interrupted job's actors are gone (Ray ends them after their driver) before the
    # cache is read: an answer one of them was still storing is then in `stored`
    _wait_for_no_actor(ray_cluster, "_WarmupActor")
    stored = cached_keys(s["redis"])
    # what the report says is done is in the cache (answers that finished after the last
    # report line are in the cache too, and the next run skips them as well)
    assert {r["key"] for r in first} <= stored
    server.reset()

    run = subprocess.run(warmup(s, src, ray_cluster.address), cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    report = read_report(s["report"])
    assert report[:len(first)] == first  # appended, never truncated
    second = report[len(first):]
    assert sorted(r["id"] for r in second) == sorted(f"q{i}" for i in range(200))
    cached = {r["key"] for r in second if r["status"] == "cached"}
    done = [r for r in second if r["status"] == "done"]
    assert cached == stored
    # skipped before anything was scheduled: the driver reported them, no worker saw them
    assert all(r["backend"] is None and r["latency_s"] is None for r in second
               if r["status"] == "cached")
    assert len(done) == 200 - len(stored)
    # only the missing items reached the backend
    assert sorted(requests_for(server)) == sorted(f"request number {r['id'][1:]}"
                                                  for r in done)
    assert len(cached_keys(s["redis"])) == 200


@pytest.mark.slow
def test_failing_backend_and_bad_lines_are_report_lines(ray_cluster: Cluster,
                                                        setup: dict[str, Any],
                                                        server: VLLMWireServer) -> None:
    s = setup
    server.fail_statuses = [500, 500, 500]
    src = write_items(s["tmp"] / "requests.jsonl", 20, extra=[
        "{not json", json.dumps({"id": "noschema", "prompt": "x"}),
        json.dumps({"id": "code", "prompt": "x", "schema": "evil.py:Model"})])
    run = subprocess.run(warmup(s, src, ray_cluster.address, "--batch-size", "4"),
                         cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stderr[-3000:]  # failures make the run exit non-zero
    report = {r["id"]: r for r in read_report(s["report"])}
    assert len(report) == 23
    failed = [r for r in report.values() if r["status"] == "failed"]
    assert len(failed) == 3 and all(r["error_type"].startswith("Backend") for r in failed)
    assert all("500" in r["error"] for r in failed)
    assert sum(r["status"] == "done" for r in report.values()) == 17  # the job went on
    assert report["line-21"]["error_type"] == "WarmupLineError"
    assert "not valid JSON" in report["line-21"]["error"]
    assert report["noschema"]["error"] == 'missing "schema"'
    assert "module 'evil.py' is not allowed" in report["code"]["error"]  # nothing imported
    assert "17 done" in run.stdout and "3 failed" in run.stdout and "3 invalid" in run.stdout


# Refused before Ray is asked for anything --------------------------------------------------
def test_disk_cache_is_refused(tmp_path: Path) -> None:
    engine = Engine(Config.from_dict({"cache": {"backend": "disk", "dir": str(tmp_path)}}))
    items = read_items(write_items(tmp_path / "r.jsonl", 2), engine)
    with pytest.raises(ConfigError, match="workers on other machines cannot see a disk cache"
                       ) as info:
        import asyncio

        asyncio.run(run_warmup(engine, items, executor="ray"))
    assert info.value.key == "cache.backend"
    engine.close()


def test_disk_cache_is_refused_on_the_cli(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[cache]\nbackend = "disk"\ndir = "{tmp_path / "c"}"\n')
    src = write_items(tmp_path / "r.jsonl", 2)
    run = subprocess.run([sys.executable, "-m", "structgen.cli", "warmup", str(src), "--ray",
                          "--config", str(config), "--no-progress"],
                         cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "ConfigError: cache.backend: warmup on Ray needs the shared Redis result cache" \
        in run.stderr
    run = subprocess.run([sys.executable, "-m", "structgen.cli", "warmup", str(src),
                          "127.0.0.1:6379", "--config", str(config), "--no-progress"],
                         cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "needs --ray" in run.stderr


@pytest.mark.parametrize("address", ["127.0.0.1:{port}", "ray://127.0.0.1:{port}"])
def test_unreachable_cluster(address: str, setup: dict[str, Any]) -> None:
    s = setup
    target = address.format(port=free_port())  # nothing listens there
    engine = Engine(Config.load(s["config"]))
    items = read_items(write_items(s["tmp"] / "r.jsonl", 3), engine)
    started = time.monotonic()
    import asyncio

    with pytest.raises(ExecutorError, match=f"cannot reach the Ray cluster at {target}"):
        asyncio.run(run_warmup(engine, items, report=s["report"], executor="ray",
                               ray=RayOptions(address=target)))
    assert time.monotonic() - started < 30  # refused at once, not after Ray's retries
    assert read_report(s["report"]) == []
    engine.close()


def test_not_an_address(setup: dict[str, Any]) -> None:
    engine = Engine(Config.load(setup["config"]))
    items = read_items(write_items(setup["tmp"] / "r.jsonl", 1), engine)
    import asyncio

    with pytest.raises(ConfigError, match="not a Ray address"):
        asyncio.run(run_warmup(engine, items, executor="ray",
                               ray=RayOptions(address="no port here")))
    engine.close()


LOCAL_SCHEMA = {"type": "object", "properties": {"kind": {"enum": ["a", "b", "c"]},
                                                 "note": {"type": "string", "maxLength": 24}},
                "required": ["kind", "note"], "additionalProperties": False}


@pytest.mark.slow
def test_local_backend_actors_load_the_model(ray_cluster: Cluster, setup: dict[str, Any],
                                             tiny_model_dir: Path) -> None:
    """The embedded backend on Ray: each actor holds the (tiny) model and answers."""
    s = setup
    s["config"].write_text(
        f'[llm_backend]\nprovider = "local"\n\n[local]\nmodel = "{tiny_model_dir}"\n'
        f'max_batch = 4\n\n[cache]\nbackend = "redis"\nurl = "{s["url"]}"\n'
        f'grammar_dir = "{s["tmp"] / "g"}"\n\n[metrics]\nenabled = false\n')
    src = s["tmp"] / "local.jsonl"
    src.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"request number {i}",
                                       "schema": LOCAL_SCHEMA, "max_tokens": 48}) + "\n"
                           for i in range(8)))
    run = subprocess.run(warmup(s, src, ray_cluster.address, "--batch-size", "4", "-j", "4"),
                         cwd=ROOT, env={**ENV, "HF_HUB_OFFLINE": "1"}, capture_output=True,
                         text=True, timeout=400)
    assert run.returncode == 0, run.stderr[-3000:]
    report = read_report(s["report"])
    assert sorted(r["id"] for r in report) == sorted(f"q{i}" for i in range(8))
    assert {(r["status"], r["backend"]) for r in report} == {("done", "local")}
    assert cached_keys(s["redis"]) == {r["key"] for r in report}
