"""`structgen batch` on OpenAI batch files, on the tiny model: answers, error lines for
malformed lines, exactly once across a SIGKILL, the result cache, the progress bar."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from typer.testing import CliRunner

from structgen.batch.job import ResultFile, read_job
from structgen.cli import app
from structgen.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
LABEL = {"type": "object", "properties": {"kind": {"enum": ["a", "b", "c"]},
                                          "note": {"type": "string", "maxLength": 12}},
         "required": ["kind", "note"], "additionalProperties": False}
COUNT = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0,
                                                "maximum": 99}},
         "required": ["n"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "find a word",
                                           "parameters": {"type": "object", "properties": {
                                               "word": {"type": "string", "maxLength": 8}},
                                               "required": ["word"],
                                               "additionalProperties": False}}},
         {"type": "function", "function": {"name": "stop", "parameters": {
             "type": "object", "properties": {}}}}]


def request(i: int) -> dict[str, Any]:
    """Line i of a mixed batch: two schemas, JSON mode, tools, vLLM-style plain lines."""
    body: dict[str, Any] = {"model": "gpt-4o-mini", "max_tokens": 40, "temperature": 0,
                            "messages": [{"role": "developer", "content": "be brief"},
                                         {"role": "user", "content": f"request {i}"}]}
    if i % 4 == 0:
        body["response_format"] = {"type": "json_schema",
                                   "json_schema": {"name": "label", "schema": LABEL}}
    elif i % 4 == 1:
        body["response_format"] = {"type": "json_schema",
                                   "json_schema": {"name": "count", "schema": COUNT,
                                                   "strict": True}}
        body["messages"][1]["content"] = [{"type": "text", "text": f"count {i}"}]
    elif i % 4 == 2:
        body["tools"], body["tool_choice"] = TOOLS, "required"
    else:
        body["response_format"] = {"type": "json_object"}
        body["seed"] = i
    return {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": body}


MALFORMED = [
    "{not json",
    json.dumps({"method": "POST", "url": "/v1/chat/completions", "body": {}}),  # no custom_id
    json.dumps({**request(0), "custom_id": "req-0"}),  # duplicate
    json.dumps({**request(1), "custom_id": "emb", "url": "/v1/embeddings"}),
    json.dumps({"custom_id": "badschema", "url": "/v1/chat/completions", "body": {
        "messages": [{"role": "user", "content": "x"}], "response_format": {
            "type": "json_schema", "json_schema": {"name": "x", "schema": {
                "type": "object", "properties": 3}}}}}),
    json.dumps({**request(2), "custom_id": "n2", "body": {**request(2)["body"], "n": 2}}),
    json.dumps({"custom_id": "huge", "url": "/v1/chat/completions",
                "body": {"messages": [{"role": "user", "content": "x" * 5000}]}}),
    json.dumps({"custom_id": "notool", "url": "/v1/chat/completions", "body": {
        "messages": [{"role": "user", "content": "x"}], "tools": TOOLS,
        "tool_choice": {"type": "function", "function": {"name": "nope"}}}}),
]
BAD_CODES = {"badschema": "invalid_request", "emb": "invalid_request", "n2": "invalid_request",
             "notool": "invalid_request"}


@pytest.fixture
def job(tmp_path: Path, tiny_model_dir: Path) -> dict[str, Path]:
    config = tmp_path / "config.toml"
    config.write_text(f'[llm_backend]\nprovider = "local"\n\n[local]\nmodel = "{tiny_model_dir}"\n'
                      f'max_batch = 4\n\n[cache]\ndir = "{tmp_path / "cache"}"\n'
                      f'grammar_dir = "{tmp_path / "grammars"}"\n\n[metrics]\n'
                      f'state_file = "{tmp_path / "metrics.json"}"\n')
    return {"config": config, "dir": tmp_path}


def write_input(path: Path, n: int, malformed: list[str] = MALFORMED) -> Path:
    lines = [json.dumps(request(i)) for i in range(n)]
    for k, bad in enumerate(malformed):  # spread among the good lines
        lines.insert(min(len(lines), 1 + 3 * k), bad)
    path.write_text("\n".join(lines) + "\n")
    return path


def batch_cmd(s: dict[str, Path], src: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "structgen.cli", "batch", str(src), "-o", str(out),
            "--config", str(s["config"]), "--max-line-bytes", "4096", *extra]


def read_out(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().split("\n")[:-1]]  # whole lines only


def check_answer(line: dict[str, Any]) -> None:
    i = int(line["custom_id"].split("-")[1])
    assert line["error"] is None and line["response"]["status_code"] == 200
    body = line["response"]["body"]
    assert body["object"] == "chat.completion" and body["usage"]["completion_tokens"] >= 0
    choice = body["choices"][0]
    if i % 4 == 2:
        assert choice["finish_reason"] == "tool_calls"
        (call,) = choice["message"]["tool_calls"]
        assert call["type"] == "function" and call["function"]["name"] in {"lookup", "stop"}
        tool = next(t for t in TOOLS if t["function"]["name"] == call["function"]["name"])
        jsonschema.validate(json.loads(call["function"]["arguments"]),
                            tool["function"]["parameters"])
    else:
        value = json.loads(choice["message"]["content"])
        schema = {0: LABEL, 1: COUNT, 3: {"type": "object"}}[i % 4]
        jsonschema.validate(value, schema)


def test_malformed_lines_are_error_lines_not_crashes(tmp_path: Path) -> None:
    lines = read_job(write_input(tmp_path / "in.jsonl", 4), max_line_bytes=4096)
    errors = {(x.custom_id, x.line): str(x.error) for x in lines if x.error is not None}
    assert len(errors) == 6
    text = "\n".join(errors.values())
    for needle in ("not valid JSON", 'missing "custom_id"', "used by an earlier line",
                   "unsupported url '/v1/embeddings'", "n=2 is not supported",
                   "longer than 4096 bytes"):
        assert needle in text, needle
    # a bad schema or tool_choice is a typed error when its request is built (an error line
    # then, see test_batch_job_answers_each_line_once_and_resumes_after_sigkill)
    assert {x.custom_id for x in lines if x.error is None} == {
        "req-0", "req-1", "req-2", "req-3", "badschema", "notool"}


def test_result_file_cuts_a_torn_line_and_knows_what_is_done(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    whole = [{"custom_id": "a", "error": None, "response": {}},
             {"custom_id": None, "error": {"code": "invalid_request", "line": 7}},
             {"custom_id": "b", "error": {"code": "duplicate_custom_id", "line": 9}},
             {"custom_id": "c", "error": {"code": "backend_error", "line": 3}}]
    text = "".join(json.dumps(x) + "\n" for x in whole)
    out.write_text(text + '{"custom_id": "d", "err')  # killed in the middle of a write
    f = ResultFile(out)
    assert out.read_text() == text
    assert f.done_ids == {"a", "c"} and f.done_lines == {7, 9}
    f.write({"custom_id": "d", "error": None})
    with pytest.raises(ConfigError, match="another structgen batch is writing"):
        ResultFile(out)  # a second job on the same output, while the first runs
    f.close()
    ResultFile(out).close()  # the first has ended
    assert read_out(out)[-1]["custom_id"] == "d"
    (tmp_path / "other.jsonl").write_text('{"id": "q1", "prompt": "x"}\n')
    with pytest.raises(Exception, match="not a batch result line"):
        ResultFile(tmp_path / "other.jsonl")


N = 24


@pytest.mark.slow
def test_batch_job_answers_each_line_once_and_resumes_after_sigkill(
        job: dict[str, Path]) -> None:
    src = write_input(job["dir"] / "in.jsonl", N)
    out = job["dir"] / "out.jsonl"
    proc = subprocess.Popen(batch_cmd(job, src, out, "--concurrency", "2", "--no-progress"),
                            cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    # the 6 malformed lines are written first; kill once a few answers are in as well
    while len(read_out(out)) < 12:
        assert proc.poll() is None, proc.stderr.read().decode()  # type: ignore[union-attr]
        assert time.monotonic() < deadline
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    first = read_out(out)
    assert 12 <= len(first) < N + len(MALFORMED)

    again = subprocess.run(batch_cmd(job, src, out, "--concurrency", "4", "--no-progress"),
                           cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert again.returncode == 1, again.stderr  # the malformed lines are failures
    lines = read_out(out)
    assert lines[:len(first)] == first  # appended to, never rewritten
    assert len(lines) == N + len(MALFORMED)
    by_id: dict[Any, list[dict[str, Any]]] = {}
    for line in lines:
        key = line["custom_id"] if line["custom_id"] and not (
            line["error"] and line["error"]["code"] == "duplicate_custom_id") \
            else f"line {line['error']['line']}"
        by_id.setdefault(key, []).append(line)
    assert all(len(v) == 1 for v in by_id.values()), "a line answered twice"
    for i in range(N):
        check_answer(by_id[f"req-{i}"][0])
    for custom_id, code in BAD_CODES.items():
        assert by_id[custom_id][0]["error"]["code"] == code
    assert by_id["badschema"][0]["error"]["type"] == "SchemaError"
    assert by_id["notool"][0]["error"]["type"] == "ToolError"
    assert {k for k in by_id if k.startswith("line ")} == {  # type: ignore[union-attr]
        f"line {n}" for n in (2, 5, 8, 20)}  # bad JSON, no custom_id, req-0 again, too long
    assert f"{N + len(MALFORMED)} lines: {len(first)} already done" in again.stdout

    # a batch fills the result cache: the same requests into a new file are all hits
    # (in process from here: the subprocesses above were for the kill)
    fresh = CliRunner().invoke(app, batch_cmd(job, src, job["dir"] / "again.jsonl")[3:])
    assert f"{N} valid (0 repaired), {len(MALFORMED)} failed, {N} cache hits" in fresh.stdout
    # and a finished job run again does nothing
    done = CliRunner().invoke(app, batch_cmd(job, src, out)[3:])
    assert f"{N + len(MALFORMED)} lines: {N + len(MALFORMED)} already done" in done.stdout
    assert read_out(out) == lines


def test_progress_bar_and_summary(job: dict[str, Path]) -> None:
    src = write_input(job["dir"] / "in.jsonl", 4, MALFORMED[:1])
    out = job["dir"] / "out.jsonl"
    result = CliRunner().invoke(app, ["batch", str(src), "-o", str(out), "--config",
                                      str(job["config"]), "--progress", "-j", "2"])
    assert result.exit_code == 1, result.output  # the bad JSON line
    bar = result.stderr
    for piece in ("batch", "5/5", "4 valid", "1 failed", "req/s", "ETA", "0:00:"):
        assert piece in bar, (piece, bar)
    assert "\x1b[" in bar  # drawn as on a terminal, though stderr is not one
    summary = result.stdout
    assert "5 lines: 0 already done, 1 invalid; 5/5 in" in summary
    assert "4 valid (0 repaired), 1 failed, 0 cache hits" in summary
    assert "prompt + " in summary and "completion tokens" in summary
    assert len(read_out(out)) == 5
    quiet = CliRunner().invoke(app, ["batch", str(src), "-o", str(job["dir"] / "b.jsonl"),
                                     "--config", str(job["config"])])
    assert "req/s" not in quiet.stderr  # no terminal, no bar
    assert "4 valid (0 repaired), 1 failed, 4 cache hits" in quiet.stdout


# vLLM's examples/offline_inference/openai_batch/openai_example_batch.jsonl, as it is
VLLM_EXAMPLE = [
    {"custom_id": "request-1", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": "meta-llama/Meta-Llama-3-8B-Instruct",
              "messages": [{"role": "system", "content": "You are a helpful assistant."},
                           {"role": "user", "content": "Hello world!"}],
              "max_completion_tokens": 1000}},
    {"custom_id": "request-2", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": "meta-llama/Meta-Llama-3-8B-Instruct",
              "messages": [{"role": "system", "content": "You are an unhelpful assistant."},
                           {"role": "user", "content": "Hello world!"}],
              "max_completion_tokens": 1000}},
]


def test_a_vllm_run_batch_file_runs_unchanged(job: dict[str, Path]) -> None:
    src = job["dir"] / "vllm.jsonl"
    src.write_text("".join(json.dumps(x) + "\n" for x in VLLM_EXAMPLE))
    out = job["dir"] / "out.jsonl"
    result = CliRunner().invoke(app, ["batch", str(src), "-o", str(out), "--config",
                                      str(job["config"])])
    assert result.exit_code == 0, result.output
    lines = read_out(out)
    assert sorted(x["custom_id"] for x in lines) == ["request-1", "request-2"]
    for line in lines:
        body = line["response"]["body"]
        message = body["choices"][0]["message"]
        assert line["error"] is None and message["role"] == "assistant"
        assert isinstance(message["content"], str)  # plain text: no response_format
        assert body["choices"][0]["finish_reason"] in {"stop", "length"}
        assert 0 < body["usage"]["completion_tokens"] <= 1000


def test_the_readme_batch_file_examples_run(job: dict[str, Path]) -> None:
    readme = (ROOT / "README.md").read_text()
    openai, compact = (b.split("```", 1)[0] for b in readme.split("```jsonl\n")[1:3])
    src = job["dir"] / "in.jsonl"
    src.write_text(openai + compact)  # the two formats in one file, as the README says
    out = job["dir"] / "out.jsonl"
    result = CliRunner().invoke(app, ["batch", str(src), "-o", str(out), "--config",
                                      str(job["config"])])
    assert result.exit_code == 0, result.output
    # lines are written as answers finish, in either order
    line, short = sorted(read_out(out), key=lambda x: "custom_id" not in x)
    assert line["custom_id"] == "q1" and line["error"] is None
    content = line["response"]["body"]["choices"][0]["message"]["content"]
    assert isinstance(json.loads(content)["prime"], bool)
    assert (short["id"], short["line"], short["error"]) == ("q2", 2, None)
    assert isinstance(short["value"]["prime"], bool)


# Warmup's compact line format as batch input ---------------------------------------------
LABEL_MODEL = '''
from typing import Literal

from pydantic import BaseModel, Field, field_validator


class Label(BaseModel):
    kind: Literal["a", "b", "c"]
    note: str = Field(max_length=12)

    @field_validator("kind")
    @classmethod
    def loud(cls, value: str) -> str:  # only the model does this: its answers are "A".."C"
        return value.upper()
'''
COMPACT_GOOD = [
    {"id": "c-inline", "prompt": "label 1", "schema": LABEL, "max_tokens": 40},
    {"id": "c-file", "messages": [{"role": "system", "content": "be brief"},
                                  {"role": "user", "content": "label 2"}],
     "schema": "label.json", "max_tokens": 40, "temperature": 0},
    {"id": "c-model", "prompt": "label 3", "schema": "batchpkg.models:Label",
     "max_tokens": 40},
    {"prompt": "label 4", "schema": LABEL, "max_tokens": 40},  # no id: line-N
]
COMPACT_BAD = {
    "c-field": ({"id": "c-field", "prompt": "x", "schema": LABEL, "colour": "red"},
                "unknown field(s): colour"),
    "c-noschema": ({"id": "c-noschema", "prompt": "x"}, 'missing "schema"'),
    "c-evil": ({"id": "c-evil", "prompt": "x", "schema": "evil.py:Label"},
               "module 'evil.py' is not allowed"),
    "c-other": ({"id": "c-other", "prompt": "x", "schema": "otherpkg.models:Label"},
                "--allow-module otherpkg"),
    "c-both": ({"id": "c-both", "prompt": "x", "messages": [], "schema": LABEL},
               'exactly one of "prompt" or "messages"'),
    "c-gpt": ({"id": "c-gpt", "prompt": "x", "schema": LABEL, "model": "gpt-9"},
              "not a configured model"),
}


def test_compact_lines_run_beside_openai_lines_and_resume(
        job: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    site = job["dir"] / "site"
    (site / "batchpkg").mkdir(parents=True)
    (site / "batchpkg" / "__init__.py").write_text("")
    (site / "batchpkg" / "models.py").write_text(LABEL_MODEL)
    monkeypatch.syspath_prepend(str(site))
    (job["dir"] / "label.json").write_text(json.dumps(LABEL))
    lines = [json.dumps(request(0))] + [json.dumps(x) for x in COMPACT_GOOD]
    lines += [json.dumps(bad) for bad, _ in COMPACT_BAD.values()]
    lines += [json.dumps({**COMPACT_GOOD[0], "prompt": "again"}),  # c-inline's id again
              "[1, 2]", json.dumps({"id": ["x"], "prompt": "x", "schema": LABEL})]
    src = job["dir"] / "in.jsonl"
    src.write_text("\n".join(lines) + "\n")
    out = job["dir"] / "out.jsonl"
    args = ["batch", str(src), "-o", str(out), "--config", str(job["config"]),
            "--allow-module", "batchpkg"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output  # the bad lines are failures
    written = read_out(out)
    assert len(written) == len(lines)
    by_id = {x.get("custom_id", x["id"]) if "response" in x else x["id"]: x for x in written}
    check_answer(by_id["req-0"])  # the OpenAI line: an OpenAI result line
    for cid in ("c-inline", "c-file", "c-model", "line-5"):
        answer = by_id[cid]
        assert set(answer) == {"id", "line", "value", "error", "backend", "model", "cached",
                               "repaired", "usage"}, answer
        assert answer["error"] is None and answer["backend"] == "local"
        assert answer["usage"]["completion_tokens"] > 0 and answer["cached"] is False
        if cid == "c-model":  # validated by the Pydantic model, by reference
            assert answer["value"]["kind"] in {"A", "B", "C"}
        else:
            jsonschema.validate(answer["value"], LABEL)
    assert by_id["line-5"]["line"] == 5
    for cid, (_, message) in COMPACT_BAD.items():
        error = by_id[cid]["error"]
        assert (by_id[cid]["value"], error["code"]) == (None, "invalid_request"), cid
        assert message in error["message"], (cid, error)
    dupes = [x for x in written if x["error"] and x["error"]["code"] == "duplicate_custom_id"]
    assert [(x["id"], x["line"]) for x in dupes] == [("c-inline", 12)]
    assert by_id["line-14"]["error"]["message"] == "id must be a string or an integer"
    not_object = next(x for x in written if "response" in x and x["custom_id"] is None)
    assert not_object["error"]["message"] == "a line must be a JSON object"

    again = CliRunner().invoke(app, args)  # everything is answered: nothing runs again
    assert f"{len(lines)} lines: {len(lines)} already done" in again.stdout
    assert read_out(out) == written


def test_the_line_format_can_be_named(job: dict[str, Path]) -> None:
    src = job["dir"] / "in.jsonl"
    src.write_text(json.dumps(request(0)) + "\n" + json.dumps(COMPACT_GOOD[0]) + "\n")
    lines = read_job(src, line_format="openai")
    assert lines[0].error is None and lines[0].format == "openai"
    assert 'missing "custom_id"' in str(lines[1].error)
    lines = read_job(src, line_format="compact")
    assert "an OpenAI batch line where a compact line was expected" in str(lines[0].error)
    assert lines[1].error is None and lines[1].format == "compact"
    with pytest.raises(ConfigError, match="unknown line format"):
        read_job(src, line_format="yaml")
