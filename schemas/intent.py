"""The intent agent's output: what the user wants done, and on which files."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

# Bounded so that even a random model under the grammar closes the string.
RepoPath = Annotated[str, StringConstraints(min_length=1, max_length=120)]


class IntentKind(StrEnum):
    """The closed set of things a coding agent can be asked to do."""

    create_file = "create_file"
    edit_code = "edit_code"
    explain = "explain"
    run_tests = "run_tests"
    debug = "debug"
    refactor = "refactor"
    other = "other"


class Intent(BaseModel):
    """The user's intent, as read from one request to a coding agent.

    Example: "add a --verbose flag to cli.py" →
    ``Intent(kind="edit_code", targets=["cli.py"], confidence=0.9, rationale="...")``.
    """

    model_config = ConfigDict(extra="forbid")

    kind: IntentKind = Field(description="What the user wants done, from a closed set.")
    targets: list[RepoPath] = Field(
        default_factory=list, max_length=5,
        description="Paths of the files or directories the request is about (at most 5).")
    confidence: float = Field(ge=0.0, le=1.0,
                              description="How sure the reading is, from 0 (guess) to 1 (certain).")
    rationale: str = Field(min_length=1, max_length=200,
                           description="One short sentence: why this kind was chosen.")
    clarifying_question: str | None = Field(
        default=None, max_length=160,
        description="A question to ask the user when the request is ambiguous, else null.")


EXAMPLES: list[Intent] = [
    Intent(kind=IntentKind.edit_code, targets=["structgen/cli.py"], confidence=0.92,
           rationale="The user asks to add a --verbose flag to an existing command."),
    Intent(kind=IntentKind.run_tests, targets=["tests/schema"], confidence=0.8,
           rationale="The user wants to know whether the schema tests still pass."),
    Intent(kind=IntentKind.explain, targets=[], confidence=0.55,
           rationale="The user asks how grammar-constrained decoding works.",
           clarifying_question="Do you mean llguidance or XGrammar?"),
    Intent(kind=IntentKind.create_file, targets=["docs/schemas.md"], confidence=1.0,
           rationale="An explicit request for a new documentation page."),
]
