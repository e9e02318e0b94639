"""`structgen batch --ray` on the real two-node Ray cluster and a real redis-server (the
fixtures of tests/cache/test_warmup_ray.py: Ray actors are thin clients of the vLLM
wire-format stand-in, so the test times Ray and Redis, not a model): the driver killed and
resumed, and a node killed under a running batch."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.batch.test_batch_file import MALFORMED, read_out
from tests.batch.test_batch_file import read_out as read_out_file
from tests.cache.conftest import redis_url  # noqa: F401 (a fixture)
from tests.cache.test_warmup_ray import (  # noqa: F401 (fixtures)
    ENV,
    SCHEMA,
    Cluster,
    _ray_start,
    _stop,
    _wait_started,
    cached_keys,
    ray_cluster,
    server,
    setup,
    workers_of,
)
from tests.servers.wire import VLLMWireServer

pytestmark = [pytest.mark.redis, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
N = 200


def write_job(path: Path) -> Path:
    lines = [json.dumps({"custom_id": f"r{i}", "method": "POST",
                         "url": "/v1/chat/completions", "body": {
                             "messages": [{"role": "user", "content": f"request {i}"}],
                             "response_format": {"type": "json_schema", "json_schema": {
                                 "name": "x", "schema": SCHEMA}},
                             "max_tokens": 32, "temperature": 0}}) for i in range(N)]
    # not JSON, no custom_id, and r0 again
    path.write_text("\n".join([*lines, *MALFORMED[:2], lines[0]]) + "\n")
    return path


def batch(s: dict[str, Any], src: Path, out: Path, address: str) -> list[str]:
    return [sys.executable, "-m", "structgen.cli", "batch", str(src), "-o", str(out),
            "--ray", address, "--config", str(s["config"]), "--no-progress",
            "--ray-actors", "2", "--batch-size", "10", "--max-line-bytes", "4096"]


def test_ray_batch_killed_then_resumed_answers_each_line_once(
        ray_cluster: Cluster, setup: dict[str, Any]) -> None:  # noqa: F811
    s = setup
    src = write_job(s["tmp"] / "in.jsonl")
    out = s["tmp"] / "out.jsonl"
    proc = subprocess.Popen(batch(s, src, out, ray_cluster.address), cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + 240
    while len(read_out(out)) < 30:
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]  # type: ignore[union-attr]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver (its Ray workers live on the nodes)
    proc.wait()
    first = read_out(out)
    assert len(first) < N + 3

    again = subprocess.run(batch(s, src, out, ray_cluster.address), cwd=ROOT, env=ENV,
                           capture_output=True, text=True, timeout=300)
    # the 3 malformed lines' errors went out first, in the killed run: none left to fail
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{N + 3} lines: {len(first)} already done, 0 invalid" in again.stdout
    lines = read_out(out)
    assert lines[:len(first)] == first
    ids = [x["custom_id"] for x in lines if x["error"] is None]
    assert sorted(ids) == sorted(f"r{i}" for i in range(N))  # each exactly once
    assert len(lines) == N + 3
    for line in lines:
        if line["error"] is None:
            value = json.loads(line["response"]["body"]["choices"][0]["message"]["content"])
            assert value["kind"] in {"a", "b", "c"}
    assert len(cached_keys(s["redis"])) == N  # the actors filled the shared cache


@pytest.mark.parametrize("shards", [False, True], ids=["one-file", "shards"])
def test_a_node_killed_under_a_running_batch(
        ray_cluster: Cluster, setup: dict[str, Any],  # noqa: F811
        server: VLLMWireServer, shards: bool) -> None:  # noqa: F811
    """A third node joins, one of three actors runs on it, and the whole node (raylet and
    workers) is killed mid-run; a replacement node joins, as an autoscaler would start one.
    Ray restarts the lost actor there and retries its batches: the batch finishes, and every
    custom_id (OpenAI lines and compact lines alike) is in the output exactly once, in one
    file or (--shards) over the shards the actors wrote, a retried batch's included."""
    s = setup
    read_out = read_shards if shards else read_out_file
    server.delay_s = 0.05  # the batch runs for seconds: long enough to kill a node in it
    src = s["tmp"] / "in.jsonl"
    compact = [json.dumps({"id": f"c{i}", "prompt": f"compact {i}", "schema": SCHEMA,
                           "max_tokens": 32}) for i in range(40)]
    src.write_text(write_job(s["tmp"] / "openai.jsonl").read_text() + "\n".join(compact)
                   + "\n")
    out = s["tmp"] / ("shards" if shards else "out.jsonl")
    nodes = []
    try:
        victim = _ray_start([f"--address={ray_cluster.address}"], s["tmp"] / "victim.log")
        nodes.append(victim)
        _wait_started(victim, s["tmp"] / "victim.log")
        # three one-CPU actors on three one-CPU nodes: one of them on the victim
        cmd = [*batch(s, src, out, ray_cluster.address), "-j", "1",
               *(["--shards"] if shards else [])]
        cmd[cmd.index("--ray-actors") + 1] = "3"
        cmd[cmd.index("--batch-size") + 1] = "5"
        proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + 240
        while len(read_out(out)) < 40 or not [
                w for w in workers_of(victim) if "_BatchActor" in " ".join(w.cmdline())]:
            assert proc.poll() is None, proc.communicate()[1].decode()[-3000:]
            assert time.monotonic() < deadline, "no actor ever ran on the victim node"
            time.sleep(0.02)
        before = len(read_out(out))
        for worker in workers_of(victim):  # in process groups of their own
            worker.kill()
        os.killpg(victim.pid, signal.SIGKILL)  # its raylet, agents and the rest
        victim.wait()
        assert before < N + 3 + len(compact), "the batch ended before the node was killed"
        spare = _ray_start([f"--address={ray_cluster.address}"], s["tmp"] / "spare.log")
        nodes.append(spare)
        _wait_started(spare, s["tmp"] / "spare.log")
        stdout, err = proc.communicate(timeout=300)
        assert proc.returncode == 1, err.decode()[-3000:]  # 1: the 3 malformed lines
        assert f"{N + 40} valid (0 repaired), 3 failed" in stdout.decode(), stdout.decode()
    finally:
        _stop(*nodes)
    lines = read_out(out)
    assert len(lines) == N + 3 + len(compact)
    answered = [x["custom_id"] if "response" in x else x["id"] for x in lines
                if x["error"] is None]
    assert sorted(answered) == sorted([f"r{i}" for i in range(N)]
                                      + [f"c{i}" for i in range(40)])  # each exactly once
    for line in lines:
        if line["error"] is None and "value" in line:  # a compact line's answer
            assert line["value"]["kind"] in {"a", "b", "c"}
    assert len(cached_keys(s["redis"])) == N + len(compact)


def read_shards(path: Path) -> list[dict[str, Any]]:
    return [x for part in sorted(path.glob("part-*.jsonl")) for x in read_out(part)]


def test_shards_killed_then_resumed_answer_each_line_once(
        ray_cluster: Cluster, setup: dict[str, Any]) -> None:  # noqa: F811
    """--shards: the actors write the answers into the directory themselves, a shard per
    Ray batch; the driver killed mid-run and run again: each custom_id once over all the
    shards, none of them torn, and the driver received no answer text."""
    s = setup
    # no fault is injected here: a request the stand-in drops (a connection reset in a
    # long CI run) is retried, so a line that failed means a batch bug, not a hiccup
    config = s["config"].read_text()
    assert "retries = 0" in config
    s["config"].write_text(config.replace("retries = 0", "retries = 2"))
    src = write_job(s["tmp"] / "in.jsonl")
    out = s["tmp"] / "shards"
    cmd = [*batch(s, src, out, ray_cluster.address), "--shards"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 240
    while len(read_shards(out)) < 30:
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]  # type: ignore[union-attr]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = read_shards(out)
    assert len(first) < N + 3

    again = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    ids = [f"r{i}" for i in range(N)]
    # An actor of the killed run may still commit its batch until the new run moves the
    # fence, so the new run can find more done than was on disk when the driver died.
    done = re.search(rf"{N + 3} lines: (\d+) already done, 0 invalid; (\d+)/", again.stdout)
    assert done, again.stdout
    assert int(done[1]) >= len(first) and int(done[1]) + int(done[2]) == N + 3
    lines = read_shards(out)
    assert len(lines) == N + 3
    failed = [x for x in lines if x["error"] is not None and x["custom_id"] in ids
              and x["error"]["code"] != "duplicate_custom_id"]
    assert not failed, (failed, again.stderr[-3000:])
    assert sorted(x["custom_id"] for x in lines if x["error"] is None) == sorted(
        ids)  # each exactly once
    errors = read_out(out / "part-driver.jsonl")  # the malformed lines, by the driver
    assert len(errors) == 3 and all(x["error"] for x in errors)
    shard_files = [p for p in out.glob("part-*.jsonl") if p.name != "part-driver.jsonl"]
    assert len(shard_files) >= N // 10  # --batch-size 10: a shard per Ray batch
    for part in shard_files:  # whole lines only: a shard is renamed into place, whole
        text = part.read_text()
        assert text.endswith("\n") and len(read_out(part)) == len(text.splitlines())
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]
    for line in lines:
        if line["error"] is None:
            value = json.loads(line["response"]["body"]["choices"][0]["message"]["content"])
            assert value["kind"] in {"a", "b", "c"}
    assert len(cached_keys(s["redis"])) == N


def test_shards_need_ray(setup: dict[str, Any]) -> None:  # noqa: F811
    s = setup
    src = write_job(s["tmp"] / "in.jsonl")
    cmd = batch(s, src, s["tmp"] / "shards", "x")
    cmd = [c for c in cmd if c not in ("--ray", "x")] + ["--shards"]
    run = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "--shards is for --ray jobs" in run.stderr
