"""A few lines of an OpenAI batch file through the embedded SmolLM2 (the default model):
schemas, JSON mode and a tool turn answered, every answer valid."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import jsonschema

from structgen.batch.job import read_job, run_job
from structgen.config import Config
from structgen.engine import Engine
from tests.batch.test_batch_file import LABEL, TOOLS, read_out

SYSTEM = {"role": "system", "content": "Answer with JSON only."}


def test_smollm_answers_a_mixed_batch(tmp_path: Path, smollm_dir: Path) -> None:
    def line(cid: str, content: str, **body: object) -> str:
        return json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
                           "body": {"messages": [SYSTEM, {"role": "user", "content": content}],
                                    "max_tokens": 48, **body}})

    src = tmp_path / "in.jsonl"
    src.write_text("\n".join([
        line("label", "Label this: the build is broken. kind is a, b or c.",
             response_format={"type": "json_schema",
                              "json_schema": {"name": "label", "schema": LABEL}}),
        line("obj", "Give an object with a field city.", response_format={"type": "json_object"}),
        line("tool", "Look up the word 'cat'.", tools=TOOLS, tool_choice="required"),
    ]) + "\n")
    config = Config()
    config.llm_backend.provider = "local"
    config.llm_backend.timeout_s = 900  # about answers, not the speed of a loaded machine
    config.cache.dir = str(tmp_path / "cache")
    config.metrics.state_file = str(tmp_path / "metrics.json")
    engine = Engine(config)
    summary = asyncio.run(run_job(engine, read_job(src), tmp_path / "out.jsonl",
                                  concurrency=3))
    engine.close()
    assert (summary.valid, summary.failed) == (3, 0)
    out = {x["custom_id"]: x["response"]["body"]["choices"][0] for x in read_out(
        tmp_path / "out.jsonl")}
    jsonschema.validate(json.loads(out["label"]["message"]["content"]), LABEL)
    assert isinstance(json.loads(out["obj"]["message"]["content"]), dict)
    (call,) = out["tool"]["message"]["tool_calls"]
    tool = next(t for t in TOOLS if t["function"]["name"] == call["function"]["name"])
    jsonschema.validate(json.loads(call["function"]["arguments"]),
                        tool["function"]["parameters"])
    assert out["tool"]["finish_reason"] == "tool_calls"
