"""A corrupt metrics state file never fails a request nor ``structgen stats``: it is set
aside (renamed, byte for byte), reported with a warning, and a new state is started."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

from structgen.backends import BackendBase, Capabilities, GenerationRequest, GenerationResult
from structgen.cli import app
from structgen.config import Config
from structgen.engine import Engine
from structgen.metrics import load_state

SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}

CORRUPT = {
    "not JSON": b"\x00\xffgarbage",
    "cut off": b'{"version": 1, "counts": {"requests": 3',
    "a list": b"[1, 2]",
    "count is a string": b'{"version": 1, "counts": {"requests": "x"}}',
    "counts is a list": b'{"version": 1, "counts": []}',
    "sample is a string": b'{"version": 1, "samples": {"latency_s": ["x"]}}',
    "peak is an object": b'{"version": 1, "inflight_peak": {}}',
    "another version": b'{"version": 99, "counts": {"requests": 5}}',
    "nested deeply": b'{"version": 1, "counts": ' + b"[" * 5000 + b"]" * 5000 + b"}",
}


class Local(BackendBase):
    name = "local"

    def capabilities(self) -> Capabilities:
        return Capabilities(output_kinds=frozenset({"json"}))

    async def agenerate(self, request: GenerationRequest) -> GenerationResult:
        return GenerationResult(text='{"ok": true}', backend="local", completion_tokens=3,
                                latency_s=0.1)

    async def health(self) -> bool:
        return True


def _set_aside(path: Path) -> list[Path]:
    return sorted(path.parent.glob(path.name + ".corrupt-*"))


@pytest.mark.parametrize("case", list(CORRUPT))
async def test_corrupt_state_never_fails_a_request(tmp_path: Path, case: str) -> None:
    state = tmp_path / "metrics.json"
    state.write_bytes(CORRUPT[case])
    engine = Engine(Config.from_dict({
        "llm_backend": {"provider": "local", "fallback": ["local"]},
        "cache": {"backend": "none"},
        "metrics": {"state_file": str(state)}}), backends={"local": Local()})
    with pytest.warns(UserWarning, match="set aside"):
        result = await engine.arun("q", SCHEMA)
        engine.metrics.flush()
    assert result.value == {"ok": True}
    # the new state holds this request; the old bytes are kept, untouched, next to it
    assert load_state(state)["counts"]["requests"] == 1
    [old] = _set_aside(state)
    assert old.read_bytes() == CORRUPT[case]
    await engine.aclose()


@pytest.mark.parametrize("case", list(CORRUPT))
def test_stats_reports_a_corrupt_state(tmp_path: Path, case: str) -> None:
    state = tmp_path / "metrics.json"
    state.write_bytes(CORRUPT[case])
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        result = CliRunner().invoke(app, ["stats", "--json", "--state-file", str(state)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["calls"] == 0
    moved = summary["set_aside"]
    assert moved["path"] == str(state) and moved["reason"]
    assert Path(moved["moved_to"]).read_bytes() == CORRUPT[case]
    assert any("set aside" in str(w.message) for w in seen)
    assert not state.exists()


def test_a_valid_state_is_not_set_aside(tmp_path: Path) -> None:
    state = tmp_path / "metrics.json"
    state.write_text(json.dumps({"version": 1, "counts": {"requests": 4},
                                 "samples": {"latency_s": [0.5]}, "inflight_peak": 2}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_state(state)
    assert loaded["counts"] == {"requests": 4} and loaded["inflight_peak"] == 2
    assert "set_aside" not in loaded and _set_aside(state) == []
