"""Schema compiler: output spec → CompiledOutput → JSON Schema / Lark / EBNF / regex."""

from structgen.schema.canonical import canonical_json, schema_hash
from structgen.schema.check import check_schema
from structgen.schema.compiled import CompiledOutput, compile_output

__all__ = ["CompiledOutput", "canonical_json", "check_schema", "compile_output", "schema_hash"]
