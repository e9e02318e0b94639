"""Build the large tool set the tests and benchmarks read (``tests/data/toolsets/maskbench_tools.jsonl.gz``).

    python tests/data/toolsets/build.py /path/to/maskbench   # the full MaskBench dev splits

``TOTAL`` (500) function schemas, one JSON object a line: every distinct Glaiveai2K function
(the function is the record's file name without its hash; the first record of each name,
95 of them) and BFCL functions for the rest (every k-th function in upstream order; a
record with several functions gives each of them), mixed in that proportion so that any
first N lines hold both. Each line::

    {"name": <OpenAI tool name>, "source": <MaskBench record id>,
     "parameters": <the function's arguments schema, unchanged>,
     "example": <a valid instance of it from the record's tests, or null>}

Names are made OpenAI tool names (``[a-zA-Z0-9_-]{1,64}``; BFCL's ``math.factorial``
becomes ``math_factorial``) and kept unique. Functions whose schema is over ``MAX_CHARS``
characters of JSON are skipped (the large-tool-set tests put 500 of them in one grammar,
not in a prompt; the prompt tests use their own small tools).
"""

from __future__ import annotations

import gzip
import json
import re
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "maskbench_tools.jsonl.gz"
TOTAL = 500
MAX_CHARS = 1200


def tool_name(raw: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_-]", "_", raw)[:60]


def bfcl(record: dict[str, Any]) -> list[tuple[str, dict[str, Any], Any]]:
    example = next((t["data"] for t in record.get("tests", []) if t.get("valid")), None)
    out = []
    for branch in record["schema"].get("anyOf", [record["schema"]]):
        for function, parameters in branch["properties"].items():
            args = example.get(function) if isinstance(example, dict) else None
            out.append((function, parameters, args))
    return out


def glaive(record: dict[str, Any]) -> list[tuple[str, dict[str, Any], Any]]:
    # "sample Glaiveai2K/analyze_health_data_4ad104b4.json" -> analyze_health_data
    stem = record["description"].rsplit("/", 1)[-1].removesuffix(".json")
    function = re.sub(r"_[0-9a-f]{8}$", "", stem)
    example = next((t["data"] for t in record.get("tests", []) if t.get("valid")), None)
    return [(function, record["schema"], example)]


def picked(path: Path, read: Any, n: int, names: set[str]) -> list[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    functions = [(r["id"], *f) for r in records for f in read(r)]
    unique = []  # the first function of each name, small enough
    for source, function, parameters, example in functions:
        name = tool_name(function)
        if name not in names and len(json.dumps(parameters)) <= MAX_CHARS:
            names.add(name)
            unique.append({"name": name, "source": source, "parameters": parameters,
                           "example": example})
    return unique[::max(1, len(unique) // n)][:n]


def main(source: Path) -> None:
    names: set[str] = set()
    glaives = picked(source / "Glaiveai2K.jsonl.gz", glaive, TOTAL, names)
    bfcls = picked(source / "BFCL.jsonl.gz", bfcl, TOTAL - len(glaives), names)
    every = len(bfcls) // len(glaives) + 1  # one Glaiveai2K function in every `every`
    tools, g, b = [], iter(glaives), iter(bfcls)
    for i in range(len(glaives) + len(bfcls)):
        tools.append(next(g, None) if i % every == every - 1 else None)
        if tools[-1] is None:
            tools[-1] = next(b, None) or next(g)
    text = "".join(json.dumps(t, ensure_ascii=False, sort_keys=True) + "\n" for t in tools)
    # mtime=0: the same input gives a byte-identical file
    with open(OUT, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as out:
        out.write(text.encode("utf-8"))
    print(f"{len(tools)} tools, {len(text)} characters of JSON")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
