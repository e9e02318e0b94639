"""The ``structgen`` command line (typer). Subcommands stay thin: they call the engine."""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import typer

from structgen.errors import StructgenError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Structured output for LLMs with grammar-constrained decoding.")


def load_spec(spec: str) -> Any:
    """``path/to/file.py:ClassName``, ``module:ClassName`` or a ``.json`` schema file."""
    from structgen.errors import SchemaError

    if spec.endswith(".json") and ":" not in spec:
        path = Path(spec)
        if not path.is_file():
            raise SchemaError(f"schema file not found: {spec}")
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise SchemaError(f"{spec} is not valid JSON: {exc}") from None
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise SchemaError(f"bad schema spec {spec!r}: use file.py:Class, module:Class or x.json")
    try:
        if target.endswith(".py"):
            path = Path(target)
            if not path.is_file():
                raise SchemaError(f"file not found: {target}")
            mod_spec = importlib.util.spec_from_file_location(path.stem, path)
            assert mod_spec and mod_spec.loader
            module = importlib.util.module_from_spec(mod_spec)
            sys.modules[path.stem] = module
            mod_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except SchemaError:
        raise
    except Exception as exc:
        raise SchemaError(f"cannot import {target}: {exc}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise SchemaError(f"{target} has no attribute {attr!r}") from None


def _fail(exc: StructgenError) -> None:
    typer.secho(f"error: {type(exc).__name__}: {exc}", fg="red", err=True)
    raise typer.Exit(2)


@app.command()
def compile(
    schema: str = typer.Option(..., "--schema", "-s", help="file.py:Class, module:Class or x.json"),
    to: str = typer.Option("json-schema", "--to", help="json-schema | lark | ebnf | regex"),
) -> None:
    """Print the compiled form of an output spec."""
    from structgen.schema import compile_output

    try:
        compiled = compile_output(load_spec(schema))
        if to == "json-schema":
            typer.echo(json.dumps(compiled.to_json_schema(), indent=2, ensure_ascii=False))
        elif to == "lark":
            typer.echo(compiled.to_lark())
        elif to == "ebnf":
            typer.echo(compiled.to_ebnf())
        elif to == "regex":
            typer.echo(compiled.to_regex())
        else:
            raise typer.BadParameter("--to must be json-schema, lark, ebnf or regex")
    except StructgenError as exc:
        _fail(exc)


@app.command()
def generate(
    schema: str = typer.Option(..., "--schema", "-s"),
    prompt: str = typer.Option(..., "--prompt", "-p"),
    system: str | None = typer.Option(None, "--system", help="optional system message"),
    backend: str | None = typer.Option(None, "--backend", "-b"),
    model: str | None = typer.Option(None, "--model", "-m"),
    config: Path | None = typer.Option(None, "--config", "-c"),
    max_tokens: int = typer.Option(512, "--max-tokens"),
    temperature: float = typer.Option(0.0, "--temperature"),
    seed: int | None = typer.Option(None, "--seed"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="also print provenance"),
) -> None:
    """Generate one validated object and print it as JSON."""
    from structgen.engine import Engine
    from structgen.validate import dump_value

    try:
        engine = Engine.from_config(config)
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}]
        result = engine.run(messages, load_spec(schema), backend=backend, model=model,
                            max_tokens=max_tokens, temperature=temperature, seed=seed)
    except StructgenError as exc:
        _fail(exc)
        return
    typer.echo(json.dumps(dump_value(result.value), indent=2, ensure_ascii=False))
    if verbose:
        typer.secho(f"backend={result.backend} model={result.model} cached={result.cached} "
                    f"repaired={result.repaired} latency={result.latency_s:.2f}s "
                    f"usage={result.usage}", fg="cyan", err=True)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
