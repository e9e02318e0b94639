"""Pydantic models the agents call structgen with: intent, debugger, reflection.

Each module exposes its model, a docstring and field descriptions a model can read, and
``EXAMPLES``: valid instances the tests round-trip through every compile target.
"""

from schemas.debugger import Diagnosis
from schemas.intent import Intent
from schemas.reflection import Reflection

__all__ = ["Diagnosis", "Intent", "Reflection"]
