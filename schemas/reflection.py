"""The reflection agent's output: a critique of the agent's own last answer."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Severity(StrEnum):
    """How much an issue matters."""

    low = "low"
    medium = "medium"
    high = "high"
    critical = "critical"


class Issue(BaseModel):
    """One problem found in the output under review."""

    model_config = ConfigDict(extra="forbid")

    severity: Severity = Field(description="How much the issue matters.")
    description: str = Field(min_length=1, max_length=200, description="What is wrong.")
    location: str | None = Field(default=None, max_length=120,
                                 description="Where (file, section or field), if it has a place.")


class Critique(BaseModel):
    """A point of critique, refined by at most three sub-points (recursive)."""

    model_config = ConfigDict(extra="forbid")

    point: str = Field(min_length=1, max_length=160, description="The point, in one sentence.")
    sub_points: list[Critique] = Field(default_factory=list, max_length=3,
                                       description="Finer points that support this one.")


class Reflection(BaseModel):
    """Critique of an agent's own output: a verdict, the issues, and what to do next.

    ``verdict`` is ``pass`` (ship it), ``revise`` (fix the listed issues) or ``fail``
    (start over). ``critique`` is a small tree of reasoning (recursive model).
    """

    model_config = ConfigDict(extra="forbid")

    verdict: Literal["pass", "revise", "fail"] = Field(description="Overall judgement.")
    issues: list[Issue] = Field(default_factory=list, max_length=6,
                                description="Problems found, most severe first.")
    critique: list[Critique] = Field(default_factory=list, max_length=3,
                                     description="The reasoning behind the verdict, as a tree.")
    next_action: str = Field(min_length=1, max_length=200,
                             description="The single next step the agent should take.")
    score: int = Field(ge=0, le=10, description="Quality of the output, 0 (useless) to 10.")


EXAMPLES: list[Reflection] = [
    Reflection(verdict="pass", next_action="Return the answer to the user.", score=9),
    Reflection(
        verdict="revise",
        issues=[Issue(severity=Severity.high, description="The new flag is not documented.",
                      location="README.md"),
                Issue(severity=Severity.low, description="A docstring has a typo.")],
        critique=[Critique(point="The change works but is incomplete.",
                           sub_points=[Critique(point="Tests cover the flag."),
                                       Critique(point="Docs do not mention it.")])],
        next_action="Document the --verbose flag in the README.",
        score=6,
    ),
    Reflection(
        verdict="fail",
        issues=[Issue(severity=Severity.critical,
                      description="The patch deletes the config loader.",
                      location="structgen/config.py")],
        critique=[Critique(point="The answer misread the request.")],
        next_action="Re-read the request and start over from the intent.",
        score=1,
    ),
]
