"""Where an output spec comes from on the command line or in a warmup file:
``path/to/file.py:ClassName``, ``module:ClassName`` or a ``.json`` schema file.

Importing a module runs its code: callers that read untrusted text (warmup files) check
the module against their allow-list before they call :func:`load_spec`.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

from structgen.errors import SchemaError


def load_spec(spec: str) -> Any:
    """``path/to/file.py:ClassName``, ``module:ClassName`` or a ``.json`` schema file."""
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
            module = importlib.import_module(target)
    except SchemaError:
        raise
    except Exception as exc:
        raise SchemaError(f"cannot import {target}: {exc}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise SchemaError(f"{target} has no attribute {attr!r}") from None
