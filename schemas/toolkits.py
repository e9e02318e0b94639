"""The tools the three agents act through, as Pydantic models (name = class name,
description = docstring), ready for ``generate_structured(..., tools=INTENT_TOOLS)``.

- the intent agent looks before it acts: it searches the code, reads a file, or asks the
  user when the request is unclear;
- the debugger reproduces and inspects: it runs the failing tests, reads the frame at fault,
  searches for a symbol, then applies a patch;
- the reflection agent decides what happens to an answer: accept it, ask for a revision,
  or run the tests that would prove it.

String fields are bounded so that even a random model under the grammar closes them.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

RepoPath = Annotated[str, StringConstraints(min_length=1, max_length=120)]
Short = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class SearchCode(BaseModel):
    """Search the repository for a text or symbol and list the matching lines."""

    model_config = ConfigDict(extra="forbid")
    query: Short = Field(description="The text or symbol to look for.")
    path: RepoPath | None = Field(default=None,
                                  description="A directory to search in (default: the repo).")
    max_results: int = Field(default=20, ge=1, le=100)


class ReadFile(BaseModel):
    """Read part of a file in the repository."""

    model_config = ConfigDict(extra="forbid")
    path: RepoPath = Field(description="The file, relative to the repository root.")
    start_line: int = Field(default=1, ge=1)
    end_line: int | None = Field(default=None, ge=1,
                                 description="The last line to read (default: to the end).")


class AskUser(BaseModel):
    """Ask the user one clarifying question before doing anything."""

    model_config = ConfigDict(extra="forbid")
    question: Short


class RunScope(StrEnum):
    file = "file"
    directory = "directory"
    all = "all"


class RunTests(BaseModel):
    """Run tests with pytest and report the failures."""

    model_config = ConfigDict(extra="forbid")
    target: RepoPath = Field(description="A test file, directory or node id (file::test).")
    scope: RunScope = RunScope.file
    max_failures: int = Field(default=5, ge=1, le=50)


class Hunk(BaseModel):
    """One replacement: the exact old text and the new text."""

    model_config = ConfigDict(extra="forbid")
    old: Annotated[str, StringConstraints(max_length=400)]
    new: Annotated[str, StringConstraints(max_length=400)]


class ApplyPatch(BaseModel):
    """Replace text in one file."""

    model_config = ConfigDict(extra="forbid")
    path: RepoPath
    hunks: list[Hunk] = Field(min_length=1, max_length=5)
    reason: Short


class AcceptAnswer(BaseModel):
    """Accept the agent's answer as it is."""

    model_config = ConfigDict(extra="forbid")
    summary: Short


class RequestRevision(BaseModel):
    """Send the answer back to the agent with what to change."""

    model_config = ConfigDict(extra="forbid")
    issues: list[Short] = Field(min_length=1, max_length=5)
    severity: int = Field(ge=1, le=5, description="1 cosmetic … 5 wrong.")


INTENT_TOOLS: list[type[BaseModel]] = [SearchCode, ReadFile, AskUser]
DEBUGGER_TOOLS: list[type[BaseModel]] = [RunTests, ReadFile, SearchCode, ApplyPatch]
REFLECTION_TOOLS: list[type[BaseModel]] = [AcceptAnswer, RequestRevision, RunTests]
