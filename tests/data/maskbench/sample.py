"""Build the MaskBench dev sample the tests read (``tests/data/maskbench/*.jsonl.gz``).

    python tests/data/maskbench/sample.py /path/to/maskbench   # the full dev splits

Per split, in the upstream file order: every k-th record, ``PER_SPLIT`` of them (BFCL:
``BFCL_RECORDS``, so the tool-call tests find 175+ functions to build their tool sets).
JME is left out: its upstream (NousResearch/json-mode-eval) states no license (README.md).
Records are copied unchanged.
"""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PER_SPLIT = 50
BFCL_RECORDS = 120
LEFT_OUT = {"JME"}


def sample(lines: list[str], n: int) -> list[str]:
    return lines[::max(1, len(lines) // n)][:n]


def main(source: Path) -> None:
    for path in sorted(source.glob("*.jsonl.gz")):
        split = path.name.removesuffix(".jsonl.gz")
        if split in LEFT_OUT:
            continue
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = [line for line in f if line.strip()]
        picked = sample(lines, BFCL_RECORDS if split == "BFCL" else PER_SPLIT)
        # mtime=0: the same input gives byte-identical files
        with open(HERE / path.name, "wb") as raw, \
                gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as out:
            out.write("".join(picked).encode("utf-8"))
        print(f"{split}: {len(picked)} of {len(lines)}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
