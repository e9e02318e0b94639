"""Run every benchmark in benchmarks/ and regenerate benchmarks/results/README.md.

    .venv/bin/python benchmarks/run_all.py            # full runs (what `make bench` does)
    .venv/bin/python benchmarks/run_all.py --quick --out /tmp/b   # a smoke run (< 1 min)
    .venv/bin/python benchmarks/run_all.py --only compile_mask,conformance,test_suite
    .venv/bin/python benchmarks/run_all.py --readme-only   # just rebuild the table

Convention every benchmark follows: besides its ``results/<name>.md`` (+ PNG), it writes
``results/<name>.json``::

    {"name": "<name>", "result": "<name>.md",
     "headline": {"<label>": <value>, ...},   # the few figures worth a table row
     "machine": "<CPU, cores, RAM, versions, date>"}

``--out DIR`` sends every result file there instead of ``benchmarks/results/`` (the
scripts read it from ``$STRUCTGEN_BENCH_RESULTS``). ``--quick`` is a smoke run of the
steps that need no model (compile/mask on 10 schemas, conformance on 5 MaskBench schemas
per file and one Test-Suite keyword), in well under a minute; ``structgen bench`` runs it
into a scratch folder unless asked to ``--write-results``.

The conformance runs (``structgen check`` on the MaskBench dev set, and on the official
JSON-Schema-Test-Suite, one split per keyword) are run from here too; their figures come
from ``results/conformance.json`` and ``results/test_suite.json`` (the CLI's ``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from _common import RESULTS_ENV, results_dir  # noqa: E402

RESULTS = results_dir()
# the full MaskBench dev splits where STRUCTGEN_MASKBENCH_DIR points (the results files
# were measured on them), else the repository's sample (tests/data/maskbench)
MASKBENCH = Path(os.environ.get("STRUCTGEN_MASKBENCH_DIR",
                               ROOT / "tests" / "data" / "maskbench"))
TEST_SUITE = ROOT / "tests" / "data" / "json-schema-test-suite" / "draft2020-12"
# step_profile.py is a profiler (it prints a decode step's parts), not a benchmark with results
SKIP = {"run_all.py", "__init__.py", "conftest.py", "step_profile.py"}
TIMEOUT_S = 3 * 3600
# --quick: the smoke run, steps that load no model (script stem → its arguments)
QUICK = {"compile_mask": ["--n", "10", "--timeout-s", "5", "--engines", "structgen,llguidance"]}
QUICK_TEST_SUITE_FILE = "type.json"


def scripts() -> list[Path]:
    return sorted(p for p in HERE.glob("*.py") if p.name not in SKIP and not p.name.startswith("_"))


def run(cmd: list[str], name: str) -> dict[str, Any]:
    print(f"== {name}: {' '.join(cmd)}", flush=True)
    t0 = time.time()
    try:
        rc = subprocess.call(cmd, cwd=ROOT, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        rc = -1
    status = {"name": name, "rc": rc, "seconds": round(time.time() - t0, 1)}
    print(f"== {name}: rc={rc} in {status['seconds']}s", flush=True)
    return status


def conformance_cmd(quick: bool) -> list[str]:
    def rel(path: Path) -> str:  # run from ROOT; the report quotes the command as given
        return os.path.relpath(path, ROOT)

    cmd = [sys.executable, "-m", "structgen.cli", "check", rel(MASKBENCH),
           "--jobs", "1" if quick else "2",
           "--report", rel(RESULTS / "conformance.md"),
           "--json", rel(RESULTS / "conformance.json")]
    return [*cmd, "--limit", "5"] if quick else cmd


def test_suite_cmd(quick: bool = False) -> list[str]:
    """The official Draft 2020-12 suite: one split per keyword file (per-keyword agreement);
    quick: one keyword's file."""
    where = TEST_SUITE / QUICK_TEST_SUITE_FILE if quick else TEST_SUITE
    return [sys.executable, "-m", "structgen.cli", "check", os.path.relpath(where, ROOT),
            "--jobs", "1" if quick else "2",
            "--report", os.path.relpath(RESULTS / "test_suite.md", ROOT),
            "--json", os.path.relpath(RESULTS / "test_suite.json", ROOT)]


def conformance_headline(name: str, label: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        return None
    total = json.loads(path.read_text())["total"]
    headline = {
        f"{label} schemas passing": f"{total['passing']}/{total['schemas']} "
                                    f"({total['passing'] / max(1, total['schemas']):.1%})",
        "false accepts": total["false_accepts"],
        "compile errors / timeouts": f"{total['compile_errors']} / {total['timeouts']}",
    }
    if name == "conformance":
        headline["reference: llguidance 0.7.10 (full set)"] = "78.8%"
    return {"name": name, "result": f"{name}.md", "headline": headline}


def write_readme(statuses: list[dict[str, Any]]) -> None:
    entries: list[dict[str, Any]] = []
    for path in sorted(RESULTS.glob("*.json")):
        if path.name in ("conformance.json", "test_suite.json"):
            continue
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict) and isinstance(data.get("headline"), dict):
            entries.append(data)
    for name, label in (("test_suite", "JSON-Schema-Test-Suite 2020-12"),
                        ("conformance", "MaskBench")):
        conf = conformance_headline(name, label)
        if conf is not None:
            entries.insert(0, conf)
    lines = ["# Benchmark results", "",
             "Regenerated by `benchmarks/run_all.py` (`make bench`). Each row links to the "
             "full result file (tables, plot, machine line).", "",
             "| benchmark | figure | value |", "|---|---|---|"]
    for e in entries:
        name = e.get("name", "?")
        link = f"[{name}]({e.get('result', name + '.md')})"
        for i, (label, value) in enumerate(e["headline"].items()):
            lines.append(f"| {link if i == 0 else ''} | {label} | {value} |")
    listed = {e.get("result") for e in entries}
    for md in sorted(RESULTS.glob("*.md")):
        if md.name != "README.md" and md.name not in listed:
            # a benchmark that wrote no <name>.json yet: link it all the same
            lines.append(f"| [{md.stem}]({md.name}) | (no headline JSON) | see file |")
    machines = sorted({e["machine"] for e in entries if e.get("machine")})
    if machines:
        lines += ["", "Machines:", *[f"- {m}" for m in machines]]
    failed = [s for s in statuses if s["rc"] != 0]
    if statuses:
        lines += ["", "Last run: " + ", ".join(
            f"{s['name']} {'ok' if s['rc'] == 0 else 'FAILED rc=' + str(s['rc'])} "
            f"({s['seconds']:.0f}s)" for s in statuses)]
    if failed:
        lines += ["", "**Some benchmarks failed; their rows may be stale.**"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> int:
    global RESULTS
    ap = argparse.ArgumentParser(description="run every benchmark, rebuild results/README.md")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: only the steps that load no model, small sizes")
    ap.add_argument("--out", type=Path, default=None,
                    help="write the result files here (default: benchmarks/results)")
    ap.add_argument("--only", default="", help="comma-separated names (script stems, "
                                               "'conformance', 'test_suite')")
    ap.add_argument("--readme-only", action="store_true")
    args = ap.parse_args()
    only = {x for x in args.only.split(",") if x}
    if args.out is not None:
        RESULTS = args.out.resolve()
        RESULTS.mkdir(parents=True, exist_ok=True)
        os.environ[RESULTS_ENV] = str(RESULTS)  # the scripts write there too
    statuses: list[dict[str, Any]] = []
    if not args.readme_only:
        for script in scripts():
            if only and script.stem not in only:
                continue
            if args.quick and script.stem not in QUICK:
                print(f"== {script.stem}: not in the quick run (it loads a model)", flush=True)
                continue
            cmd = [sys.executable, str(script)]
            if args.quick:
                cmd += QUICK[script.stem]
            statuses.append(run(cmd, script.stem))
        if not only or "conformance" in only:
            statuses.append(run(conformance_cmd(args.quick), "conformance"))
        if not only or "test_suite" in only:
            statuses.append(run(test_suite_cmd(args.quick), "test_suite"))
    write_readme(statuses)
    print((RESULTS / "README.md").read_text())
    return 1 if any(s["rc"] != 0 for s in statuses) else 0


if __name__ == "__main__":
    sys.exit(main())
