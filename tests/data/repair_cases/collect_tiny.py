"""Collect unconstrained outputs of the tiny random test model (structgen.tools.testing) for the
repair test data. Run once by hand: ``.venv/bin/python tests/data/repair_cases/collect_tiny.py``.

The tiny model is random, so its text is JSON-flavoured noise (its tokenizer was trained on
JSON): realistic "the model ignored the format" outputs that only a constrained re-ask fixes.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parents[2]))


def main() -> None:
    from structgen.config import Config
    from structgen.engine import Engine
    from structgen.tools.testing import build_tiny_model

    model_dir = build_tiny_model(Path(tempfile.mkdtemp()))
    engine = Engine(Config.from_dict({"local": {"model": str(model_dir)},
                                      "cache": {"backend": "none"},
                                      "metrics": {"enabled": False}}))
    backend = engine.backend("local")
    for seed in range(6):
        request = engine.build_request("Answer with an intent JSON object.",
                                       {"type": "object"},
                                       max_tokens=40, temperature=1.0, seed=seed)
        request.output = None  # constraints off
        gen = backend.generate(request)
        case = {"source": f"tiny random model (structgen.tools.testing), unconstrained, seed={seed}, "
                          "max_tokens=40", "schema": "schemas.intent:Intent",
                "text": gen.text, "finish_reason": gen.finish_reason, "expected": "?"}
        (HERE / f"tiny_{seed:02d}.json").write_text(json.dumps(case, indent=2) + "\n")
        print(seed, repr(gen.text[:100]), flush=True)
    engine.close()


if __name__ == "__main__":
    main()
