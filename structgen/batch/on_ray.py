"""``structgen batch IN.jsonl -o OUT.jsonl --ray [ADDRESS]``: the job's lines on Ray actors.

Warmup's executor (:mod:`structgen.warmup.on_ray`: Ray Data actors, one Engine each, the
shared Redis result cache) runs the lines; only the driver reads the input and writes the
output, so the output and resume guarantees are those of one machine
(:mod:`structgen.batch.job`)::

    driver: read the file, skip what the output holds, write the malformed lines' errors
         → the rest to the actors as plain JSON (custom_id, line, body or compact line:
           data, no code; a compact line's module:Class is imported on the actor only from
           the modules allowed on the driver)
         → each actor parses its lines again, answers them through its Engine and returns
           the finished output lines → the driver appends each (once: a batch Ray retried
           after a lost actor may come back twice, the second copy is dropped)

An actor killed mid-batch loses only answers not yet written; Ray retries its batch, and
answers that reached the Redis cache come back as cache hits.

With ``shards=True`` (``--shards``) the output is a directory and each batch's actor writes
that batch's lines itself, as one shard; only counts come back to the driver
(:mod:`structgen.batch.shards`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from structgen.batch import BatchSummary, ProgressFn, default_concurrency, run_one
from structgen.batch.job import (
    JobLine,
    JobSummary,
    LineReader,
    Output,
    ResultFile,
    answer_line,
    parse_compact,
    start_job,
    wire_request,
)
from structgen.batch.shards import ShardDir, commit_shard
from structgen.engine import Engine
from structgen.errors import ExecutorError, StructgenError
from structgen.warmup.on_ray import (
    EngineActor,
    RayOptions,
    _check_options,
    _worker_config,
    ray_stream,
)

__all__ = ["RayOptions", "run_job_on_ray"]


def run_job_on_ray(engine: Engine, lines: list[JobLine], output: Path, *,
                   concurrency: int | None = None, on_progress: ProgressFn | None = None,
                   options: RayOptions | None = None, model: str | None = None,
                   shards: bool = False) -> JobSummary:
    """:func:`structgen.batch.job.run_job` on Ray (``concurrency`` in flight per actor);
    with ``shards``, ``output`` is a directory the actors write shards into."""
    opts = options or RayOptions()
    _check_options(engine, opts)
    out: Output = ShardDir(output) if shards else ResultFile(output)
    try:
        summary, runnable = start_job(out, lines, on_progress)
        by_line = {item.line: item for item in runnable}
        if by_line:
            tasks = [json.dumps({"line": item.line, "custom_id": item.custom_id,
                                 "body": item.body, "compact": item.compact},
                                ensure_ascii=False) for item in runnable]
            kwargs = {"config": _worker_config(engine),
                      "allow_modules": list(opts.allow_modules), "concurrency": (default_concurrency(engine) if concurrency is None
                                      else max(1, concurrency)),
                      "model": model,
                      "shards": {"path": str(output.resolve()), "run": out.run}
                      if isinstance(out, ShardDir) else None}
            with ray_stream(_BatchActor, tasks, kwargs, opts) as raws:
                for raw in raws:
                    answer = json.loads(raw)
                    if by_line.pop(answer["line"], None) is None:
                        continue  # a retried batch that came back twice
                    if "out" in answer:  # else an actor wrote it, in a shard
                        out.write(answer["out"])
                    summary.count(**answer["counts"])
                    if on_progress is not None:
                        on_progress(summary)
        for item in by_line.values():  # Ray finished without them (should not happen)
            error = ExecutorError("the Ray job ended without a result for this line")
            out.write(answer_line(item, error))
            summary.add(error)
    finally:
        out.close()
    return summary


class _BatchActor(EngineActor):
    """Batch lines in (bodies or compact lines), output lines back."""

    def __init__(self, config: dict[str, Any], allow_modules: list[str], concurrency: int,
                 model: str | None, shards: dict[str, str] | None = None) -> None:
        super().__init__(config, concurrency)
        self.model = model
        self.shards = shards
        # a compact line's module:Class only from the modules the driver's user allowed
        self.reader = LineReader("compact", model, self.engine.config, Path("."),
                                 tuple(allow_modules), {})

    def __call__(self, batch: Any) -> dict[str, list[str]]:
        results = super().__call__(batch)
        if self.shards is None:
            return results
        answers = [json.loads(raw) for raw in results["result"]]
        commit_shard(Path(self.shards["path"]), self.shards["run"],
                     [a["line"] for a in answers], [a.pop("out") for a in answers])
        return {"result": [json.dumps(a) for a in answers]}

    async def answer(self, task: dict[str, Any]) -> str:
        item = JobLine(task["line"], task["custom_id"])
        try:
            if task.get("compact") is not None:
                parse_compact(item, task["compact"], self.reader)
            else:
                item.request = wire_request(task["body"], self.model)
            assert item.request is not None
            result = await run_one(self.engine, item.request)
        except StructgenError as exc:  # parsed on the driver, so not expected here
            result = exc
        counts = BatchSummary(total=1)
        counts.add(result)
        return json.dumps({"line": item.line, "out": answer_line(item, result), "counts": {
            "valid": counts.valid == 1, "repaired": counts.repaired == 1,
            "cached": counts.cache_hits == 1, "prompt_tokens": counts.prompt_tokens,
            "completion_tokens": counts.completion_tokens}}, ensure_ascii=False)
