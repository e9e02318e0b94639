"""Grammar-constraint engines for the embedded backend: one file per engine, one interface
(:mod:`structgen.constrain.base`)."""

from structgen.constrain.base import (
    ConstraintOptions,
    GrammarConstraint,
    Matcher,
    TokenizerData,
    create_constraint,
)

__all__ = ["ConstraintOptions", "GrammarConstraint", "Matcher", "TokenizerData",
           "create_constraint"]
