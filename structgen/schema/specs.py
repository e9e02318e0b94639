"""Where an output spec comes from on the command line or in a warmup file:
``path/to/file.py:ClassName``, ``module:ClassName``, a ``.json`` schema file, or
``regex:PATTERN``, ``choice:a,b,c``, ``grammar:FILE``.

A ``module:ClassName`` is looked up in the current directory first, so a user's own
``./specs.py`` or ``./schemas/`` wins over an installed module of the same name (the
repository's agent schemas are installed as the top-level ``schemas`` package); when the
module still comes from elsewhere while the current directory has one of that name (it
was imported before), a warning says which file was used.

Importing a module runs its code: callers that read untrusted text (warmup files) check
the module against their allow-list before they call :func:`load_spec`.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from structgen.errors import SchemaError, did_you_mean
from structgen.types import Choice, Grammar, Regex

log = logging.getLogger(__name__)


def load_spec(spec: str) -> Any:
    """``path/to/file.py:ClassName``, ``module:ClassName``, a ``.json`` schema file, or
    ``regex:PATTERN`` / ``choice:a,b,c`` / ``grammar:FILE`` (a Lark or GBNF file)."""
    prefix, colon, rest = spec.partition(":")
    if colon and prefix in _PREFIXED:
        return _PREFIXED[prefix](rest)
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
            # a private module name: a spec file called json.py must not shadow json
            mod_name = f"_structgen_spec_{path.stem}"
            mod_spec = importlib.util.spec_from_file_location(mod_name, path)
            assert mod_spec and mod_spec.loader
            module = importlib.util.module_from_spec(mod_spec)
            sys.modules[mod_name] = module  # Pydantic resolves forward refs here
            mod_spec.loader.exec_module(module)
        else:
            module = _import_here_first(target)
    except SchemaError:
        raise
    except Exception as exc:
        raise SchemaError(f"cannot import {target}: {exc}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        names = [n for n in dir(module) if not n.startswith("_")]
        raise SchemaError(f"{target} has no attribute {attr!r}"
                          f"{did_you_mean(attr, names)}") from None


def _choice(text: str) -> Choice:
    choices = [c.strip() for c in text.split(",")]
    if not text.strip() or not all(choices):
        raise SchemaError(f"bad choice spec {text!r}: give the answers separated by commas, "
                          "e.g. choice:yes,no")
    return Choice(list(dict.fromkeys(choices)))


def _grammar(path: str) -> Grammar:
    try:
        return Grammar(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise SchemaError(f"cannot read grammar file {path}: {exc}") from None


_PREFIXED = {"regex": Regex, "choice": _choice, "grammar": _grammar}


def _import_here_first(name: str) -> ModuleType:
    """Import ``name`` with the current directory first on the path (a console script's
    path starts with its own folder, not the directory it runs in)."""
    here = os.getcwd()
    sys.path.insert(0, here)
    try:
        module = importlib.import_module(name)
    finally:
        sys.path.remove(here)
    top = name.partition(".")[0]
    origin = getattr(sys.modules.get(top), "__file__", None)
    mine = Path(here, top + ".py").is_file() or Path(here, top).is_dir()
    if mine and origin and not Path(origin).resolve().is_relative_to(Path(here).resolve()):
        log.warning("structgen: %s:... resolved to %s, not to ./%s in the current directory "
                    "(a module of that name was imported first); use a file path "
                    "(./%s.py:Class) to load yours", name, origin, top, top)
    return module
