"""The debugger agent's output: a diagnosis of a failing run and how to fix it."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

Step = Annotated[str, StringConstraints(min_length=1, max_length=160)]


class CodeLocation(BaseModel):
    """A place in the source tree."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1, max_length=120, description="File path, relative to the repo.")
    line: int = Field(ge=1, le=1_000_000, description="1-based line number.")


class StackFrame(BaseModel):
    """Evidence: one frame of a traceback."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["stack_frame"] = "stack_frame"
    location: CodeLocation
    function: str = Field(max_length=80, description="Name of the function in that frame.")


class LogLine(BaseModel):
    """Evidence: one line of a log."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["log_line"] = "log_line"
    level: Literal["debug", "info", "warning", "error", "critical"]
    text: str = Field(max_length=200, description="The log line, verbatim.")


class TestFailure(BaseModel):
    """Evidence: one failing test."""

    __test__ = False  # not a pytest test class, whatever its name says
    model_config = ConfigDict(extra="forbid")

    type: Literal["test_failure"] = "test_failure"
    test_id: str = Field(max_length=160, description="pytest node id of the failing test.")
    assertion: str = Field(max_length=200, description="The failing assertion or its message.")


Evidence = Annotated[StackFrame | LogLine | TestFailure, Field(discriminator="type")]


class Diagnosis(BaseModel):
    """Diagnosis of a failing run: what broke, why, where, and the steps to fix it.

    Example: a KeyError in config loading → ``error_type="KeyError"``, a root-cause
    hypothesis, the frames that show it, and 1-8 ordered fix steps.
    """

    model_config = ConfigDict(extra="forbid")

    error_type: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.]{0,59}$",
                            description="Exception class or error category, e.g. KeyError.")
    root_cause: str = Field(min_length=1, max_length=300,
                            description="The most likely root cause, in one or two sentences.")
    locations: list[CodeLocation] = Field(
        default_factory=list, max_length=5,
        description="Where the fault most likely is, most relevant first.")
    evidence: list[Evidence] = Field(
        default_factory=list, max_length=4,
        description="Traceback frames, log lines or failing tests that support the hypothesis.")
    fix_steps: list[Step] = Field(
        min_length=1, max_length=8,
        description="Ordered steps to fix the problem; each step is one short imperative.")
    confidence: float = Field(ge=0.0, le=1.0, description="Confidence in the root cause, 0..1.")


EXAMPLES: list[Diagnosis] = [
    Diagnosis(
        error_type="KeyError",
        root_cause="load_config reads the 'timeout' key that was renamed to 'timeout_s'.",
        locations=[CodeLocation(path="structgen/config.py", line=42)],
        evidence=[StackFrame(location=CodeLocation(path="structgen/config.py", line=42),
                             function="load_config")],
        fix_steps=["Read 'timeout_s' instead of 'timeout'.", "Add a test for the old key."],
        confidence=0.85,
    ),
    Diagnosis(
        error_type="AssertionError",
        root_cause="The cache key ignores the seed, so two seeded runs share one entry.",
        locations=[CodeLocation(path="structgen/cache.py", line=17),
                   CodeLocation(path="tests/test_cache.py", line=88)],
        evidence=[TestFailure(test_id="tests/test_cache.py::test_seed_in_key",
                              assertion="assert key_a != key_b"),
                  LogLine(level="warning", text="cache hit for seeded request")],
        fix_steps=["Include the seed in the cache key.", "Bump the cache version.",
                   "Re-run the cache tests."],
        confidence=0.7,
    ),
    Diagnosis(
        error_type="httpx.ConnectError",
        root_cause="The vLLM server was not started before the client connected.",
        evidence=[LogLine(level="error", text="connection refused on 127.0.0.1:8000")],
        fix_steps=["Start the server and wait for /health before sending requests."],
        confidence=0.6,
    ),
]
