"""The records of a request's tries, in one place: what validation and repair tried
(:class:`Attempt`, each with its :class:`ErrorDetail` list; ``ValidationFailed.attempts``)
and which backends the router tried (:class:`BackendAttempt`; ``StructuredResult.attempts``
and a routing error's ``trail``). Imports nothing of structgen: the errors and the results
that carry these records both import them from here."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ErrorDetail:
    """One validation error: where (JSON pointer into the instance) and what."""

    pointer: str
    message: str
    keyword: str | None = None

    def __str__(self) -> str:
        # RFC 6901: "" is the whole answer ("/" would be the member named ""): no pointer
        return f"{self.pointer}: {self.message}" if self.pointer else self.message


@dataclass
class Attempt:
    """One try at producing a valid object (a generation, a repair, a re-ask)."""

    stage: str
    text: str
    errors: list[ErrorDetail] = field(default_factory=list)
    backend: str | None = None


@dataclass
class BackendAttempt:
    """One backend the router considered for a request, in the order it went.

    ``skipped``: why it was passed over without a request (circuit open, cannot constrain
    the output kind, ...); ``error``: ``"<error type>: <message>"`` of a request that
    failed; ``latency_s``: how long the request took (a stream: to its first chunk).
    """

    backend: str
    ok: bool = False
    latency_s: float | None = None
    error: str | None = None
    skipped: str | None = None
    reasoning: bool = False  # reasoning was turned on for a reasoning model

    @property
    def why(self) -> str:
        """Why it did not answer, for an error message."""
        return self.skipped or self.error or ""
