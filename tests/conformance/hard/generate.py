"""Build the hard set: ``tests/conformance/hard/<category>.jsonl.gz`` (MaskBench format).

Two steps, because hypothesis-jsonschema 0.23.1 needs a hypothesis older than the one the
project pins (it calls ``many.more``, gone in hypothesis 6.170):

    python -m venv /tmp/genv && /tmp/genv/bin/pip install hypothesis==6.100.0 \\
        hypothesis-jsonschema==0.23.1 jsonschema==4.26.0
    /tmp/genv/bin/python tests/conformance/hard/generate.py draw /tmp/drawn.json
    .venv/bin/python tests/conformance/hard/generate.py build /tmp/drawn.json

``draw`` builds every variant of every family (families.py) and draws instances from it
with hypothesis-jsonschema (derandomized); ``build`` adds the hand-written instances,
key-shuffled copies and mutations, labels every instance with jsonschema under the
variant's own draft (structgen's ECMA-262 format checker), and writes the files. The
instances are kept in the files: a later run of ``structgen check`` never regenerates them.
"""

from __future__ import annotations

import copy
import gzip
import json
import random
import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from families import FAMILIES

HERE = Path(__file__).parent
DRAFT7 = "http://json-schema.org/draft-07/schema#"
DRAFT4 = "http://json-schema.org/draft-04/schema#"
DRAFT2020 = "https://json-schema.org/draft/2020-12/schema"
_UNASSIGNED = re.compile("[\U00040000-\U000DFFFF]")
VARIANTS = ("base", "draft7", "draft4", "closed", "reversed", "wrapped")


def _walk(node: Any, fn: Any) -> Any:
    """``fn`` applied bottom-up to every dict of ``node`` (a copy)."""
    if isinstance(node, list):
        return [_walk(v, fn) for v in node]
    if isinstance(node, dict):
        return fn({k: _walk(v, fn) for k, v in node.items()})
    return node


def _older(schema: dict[str, Any], draft4: bool) -> dict[str, Any]:
    def fix(n: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in n.items():
            if k == "$defs":
                k = "definitions"
            elif k == "prefixItems":
                k = "items"
            elif k == "$anchor":
                k, v = ("id" if draft4 else "$id"), "#" + v
            elif k == "$id" and draft4:
                k = "id"
            elif k == "$ref" and isinstance(v, str):
                v = v.replace("/$defs/", "/definitions/")
            elif k == "const" and draft4:
                k, v = "enum", [v]
            out[k] = v
        return out

    out = _walk(schema, fix)
    return {"$schema": DRAFT4 if draft4 else DRAFT7, **out}


def variant(schema: dict[str, Any], name: str, family: str) -> dict[str, Any] | None:
    schema = copy.deepcopy(schema)
    if name == "base":
        return {"$schema": DRAFT2020, **schema}
    if name in ("draft7", "draft4") and "$defs" in schema and "definitions" in schema:
        return None  # both spellings already: the older form would merge them
    if name == "draft7":
        return _older(schema, draft4=False)
    if name == "draft4":
        if "$id" in json.dumps(schema):
            return None  # draft-04 resolves "id" differently; one older form is enough
        return _older(schema, draft4=True)
    if name == "closed":
        if "properties" not in schema or any(k in schema for k in (
                "additionalProperties", "patternProperties", "allOf", "anyOf", "oneOf",
                "$ref")):
            return None
        return {"$schema": DRAFT2020, **schema, "additionalProperties": False}
    if name == "reversed":
        def rev(n: dict[str, Any]) -> dict[str, Any]:
            if isinstance(n.get("properties"), dict) and all(
                    isinstance(v, dict | bool) for v in n["properties"].values()):
                n["properties"] = dict(reversed(list(n["properties"].items())))
            return n
        return {"$schema": DRAFT2020, **_walk(schema, rev)}
    if name == "wrapped":
        if "$id" in json.dumps(schema):
            return None
        defs = schema.pop("$defs", {})
        definitions = schema.pop("definitions", None)

        def moved(n: dict[str, Any]) -> dict[str, Any]:
            r = n.get("$ref")
            if r == "#":
                n["$ref"] = "#/$defs/Body"
            elif isinstance(r, str) and r.startswith("#/properties"):
                n["$ref"] = "#/$defs/Body" + r[1:]
            return n

        body = _walk(schema, moved)
        defs = _walk(defs, moved)
        out: dict[str, Any] = {
            "$schema": DRAFT2020, "type": "object",
            "properties": {"kind": {"const": family}, "id": {"type": "string"},
                           "body": {"$ref": "#/$defs/Envelope"}},
            "required": ["kind", "body"],
            "$defs": {"Envelope": {"$ref": "#/$defs/Body"}, "Body": body, **defs}}
        if definitions is not None:
            out["definitions"] = _walk(definitions, moved)
        return out
    raise ValueError(name)


def wrap(name: str, family: str, data: Any) -> Any:
    return {"kind": family, "body": data} if name == "wrapped" else data


def all_variants() -> list[tuple[str, str, str, dict[str, Any], list[Any], list[Any]]]:
    out = []
    for category, family, schema, ok, bad in FAMILIES:
        for name in VARIANTS:
            v = variant(schema, name, family)
            if v is not None:
                out.append((category, f"{family}/{name}", name, v,
                            [wrap(name, family, d) for d in ok],
                            [wrap(name, family, d) for d in bad]))
    return out


def draw(out_path: str) -> None:
    import warnings

    from hypothesis import HealthCheck, given, settings
    from hypothesis_jsonschema import from_schema

    warnings.simplefilter("ignore")
    drawn: dict[str, list[Any]] = {}
    for _, sid, _, schema, _, _ in all_variants():
        found: list[Any] = []

        def collect(schema: dict[str, Any], found: list[Any]) -> None:
            @settings(max_examples=8, database=None, derandomize=True, deadline=None,
                      suppress_health_check=list(HealthCheck))
            @given(from_schema(schema))
            def draw_one(value: Any) -> None:
                found.append(value)

            draw_one()

        try:
            collect(schema, found)
        except Exception as exc:  # recursive refs, unsupported keywords: hand-written only
            print(f"{sid}: {type(exc).__name__}", file=sys.stderr)
        # keep distinct, small ones (hypothesis also draws huge numbers and strings), without
        # code points of the unassigned planes 4-13 (U+40000-U+DFFFF): llguidance's JSON
        # strings leave them out (docs/conformance.md), and no text a model writes has them
        unique = {json.dumps(v, sort_keys=True): v for v in found
                  if len(json.dumps(v)) < 2000 and not _UNASSIGNED.search(
                      json.dumps(v, ensure_ascii=False))}
        drawn[sid] = list(unique.values())[:5]
    Path(out_path).write_text(json.dumps(drawn))


def shuffled(data: Any, rng: random.Random) -> Any:
    if isinstance(data, dict):
        items = [(k, shuffled(v, rng)) for k, v in data.items()]
        rng.shuffle(items)
        return dict(items)
    if isinstance(data, list):
        return [shuffled(v, rng) for v in data]
    return data


def mutations(data: Any, schema: dict[str, Any], rng: random.Random) -> list[Any]:
    """Small edits of a valid value; the labeller decides which became invalid."""
    out: list[Any] = []
    target = data.get("body") if isinstance(data, dict) and "body" in data else data
    if isinstance(target, dict) and target:
        keys = list(target)
        for edit in range(3):
            t = copy.deepcopy(target)
            k = rng.choice(keys)
            if edit == 0:
                del t[k]
            elif edit == 1:
                t[k] = [{"x": 1}] if not isinstance(t[k], list) else "not-a-list"
            else:
                t["unexpected_key"] = {"nested": True}
            out.append({**data, "body": t} if target is not data else t)
    out.append(17)
    return out


def build(drawn_path: str) -> None:
    sys.path.insert(0, str(HERE.parents[2]))
    from structgen.schema.check import ECMA_FORMATS
    from structgen.schema.drafts import declared_draft
    from structgen.validate import _DRAFT_VALIDATORS, EcmaValidator

    drawn = json.loads(Path(drawn_path).read_text())
    rng = random.Random(16)
    rows: dict[str, list[dict[str, Any]]] = {}
    for category, sid, _, schema, ok, bad in all_variants():
        # jsonschema under the variant's draft, with ECMA-262 patterns as JSON Schema
        # specifies them (Python's \d also matches other scripts' digits)
        cls = _DRAFT_VALIDATORS.get(declared_draft(schema) or "", EcmaValidator)
        check = cls(schema, format_checker=ECMA_FORMATS)
        values = [*ok, *drawn.get(sid, [])]
        candidates = [*values, *(shuffled(v, rng) for v in values), *bad,
                      *(m for v in values for m in mutations(v, schema, rng))]
        tests, seen = [], set()
        for data in candidates:
            key = json.dumps(data)
            if key in seen:
                continue
            seen.add(key)
            tests.append({"data": data, "valid": check.is_valid(data)})
        if any(t["valid"] for t in tests) and not all(t["valid"] for t in tests):
            rows.setdefault(category, []).append({"id": sid, "schema": schema,
                                                  "tests": tests})
        else:
            print(f"{sid}: no valid or no invalid instance, left out", file=sys.stderr)
    for category, items in rows.items():
        with gzip.open(HERE / f"{category}.jsonl.gz", "wt", encoding="utf-8") as fh:
            for row in items:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    total = sum(len(v) for v in rows.values())
    print(f"{total} schemas, {sum(len(r['tests']) for v in rows.values() for r in v)} "
          f"instances: " + ", ".join(f"{k} {len(v)}" for k, v in sorted(rows.items())))


if __name__ == "__main__":
    {"draw": draw, "build": build}[sys.argv[1]](sys.argv[2])
