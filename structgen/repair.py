"""Validate and repair a backend's text into a valid value, or raise ValidationFailed.

(First version: validation plus json-repair syntax repair. Coercion and re-ask come with
the repair issue.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from structgen.backends import GenerationRequest, GenerationResult
from structgen.errors import Attempt, ValidationFailed
from structgen.validate import validate_data, validate_text

if TYPE_CHECKING:
    from structgen.engine import Engine


@dataclass
class Repaired:
    value: Any
    text: str
    repaired: bool = False
    stages: list[str] = field(default_factory=list)
    post_enforced: list[str] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)


async def finalize(gen: GenerationResult, request: GenerationRequest, engine: Engine) -> Repaired:
    output = request.output
    assert output is not None
    outcome = validate_text(gen.text, output)
    attempts = [Attempt("generate", gen.text, outcome.errors, gen.backend)]
    if outcome.ok:
        return Repaired(outcome.value, gen.text, attempts=attempts)
    if output.kind == "json" and engine.config.repair.max_repairs > 0:
        import json_repair

        data = json_repair.loads(gen.text)
        fixed = validate_data(data, output)
        attempts.append(Attempt("syntax", gen.text, fixed.errors, gen.backend))
        if fixed.ok:
            import json

            return Repaired(fixed.value, json.dumps(data), True, ["syntax"], attempts=attempts)
    raise ValidationFailed("output could not be made valid", gen.text, outcome.errors, attempts)
